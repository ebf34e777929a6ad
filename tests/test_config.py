"""Configuration: the secret key, validation at start-up, the environment."""

from __future__ import annotations

from pathlib import Path

import pytest


async def test_secret_key_is_generated_once_and_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from quart_app import create_app

    instance = tmp_path / "inst"
    first = create_app({"INSTANCE_PATH": str(instance)})
    second = create_app({"INSTANCE_PATH": str(instance)})
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert len(first.config["SECRET_KEY"]) >= 32
    assert (instance / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MAX_AMOUNT", 0, "MAX_AMOUNT"),
        ("SSE_HEARTBEAT_S", -1, "SSE_HEARTBEAT_S"),
        ("SSE_RETRY_MS", "soon", "SSE_RETRY_MS"),
        ("BROKER_URL", "localhost", "BROKER_URL"),
        ("TICKER_BUFFER", 5, "TICKER_BUFFER"),
        ("SECRET_KEY", "too-short", "SECRET_KEY must be a string of at least 16"),
        ("JOB_FSYNC", "always", "JOB_FSYNC must be batch or end"),
    ],
)
def test_bad_configuration_stops_the_app_with_a_clear_message(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    from quart_app import create_app

    with pytest.raises(ValueError, match=message):
        create_app({"INSTANCE_PATH": str(tmp_path), key: value})


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("False", False), ("0", False), ("1", True)]
)
def test_boolean_settings_from_the_environment(tmp_path, monkeypatch, raw, expected) -> None:  # type: ignore[no-untyped-def]
    from quart_app import create_app

    monkeypatch.setenv("QUART_SESSION_COOKIE_SECURE", raw)
    app = create_app({"INSTANCE_PATH": str(tmp_path)})
    assert app.config["SESSION_COOKIE_SECURE"] is expected


def test_environment_overrides(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from quart_app import create_app

    monkeypatch.setenv("QUART_MAX_JOBS", "7")
    monkeypatch.setenv("QUART_CORS_ORIGINS", "https://a.example, https://b.example")
    app = create_app({"INSTANCE_PATH": str(tmp_path)})
    assert app.config["MAX_JOBS"] == 7
    assert app.config["CORS_ORIGINS"] == ("https://a.example", "https://b.example")
