"""The string maker: uniform over the charset."""

from __future__ import annotations

import string

import pytest


@pytest.mark.parametrize(
    "charset", [string.digits, string.punctuation, "ab", "x", string.ascii_letters + string.digits]
)
def test_string_maker_is_uniform_over_the_charset(charset: str) -> None:
    import random
    from collections import Counter

    from quart_app.strings import StringMaker

    maker = StringMaker(charset, random.Random(1234))
    strings = maker.make(2000, 50)
    assert len(strings) == 2000 and all(len(s) == 50 for s in strings)
    counts = Counter("".join(strings))
    assert set(counts) == set(charset)
    expected = 100_000 / len(charset)
    # Chi-squared against uniform, far below what a biased table would give.
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in charset)
    assert chi2 < 3 * len(charset) + 30
