"""Private channels (SPEC §10): tokens that grant them, and every hostile token a
client can send, each with a clear status and nothing else changed."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app import create_app
from quart_app.config import ConfigError
from quart_app.tokens import MAX_TOKEN_BYTES, TokenVerifier, verifier_of

from .conftest import FAST
from .helpers import state
from .streaming import read_stream

SECRET = "jwt-secret-for-tests-only-0123456789-abcdef"
PUBLISH_TOKEN = "publish-token-for-private-tests-0123456789"


def token(
    claims: dict[str, Any] | None = None, *, key: Any = SECRET, algorithm: str = "HS256"
) -> str:
    body = {"sub": "user-42", "channels": {"subscribe": ["private-user-42", "presence-*"]}}
    body.update(claims or {})
    return jwt.encode(body, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Quart]:
    app = create_app(
        {
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SECRET_KEY": "test-" + "k" * 40,
            **FAST,
            "JWT_KEY": SECRET,
            "JWT_LEEWAY_S": 0,
            "PUBLISH_TOKEN": PUBLISH_TOKEN,
            "CORS_ORIGINS": "https://friend.example",
        }
    )
    async with app.test_app():
        yield app


async def first_frames(client: Client, path: str, **kwargs: Any) -> Any:
    """The stream's status and what it sent until its first frame."""
    return await read_stream(client, path, until=lambda p: bool(p.retries), **kwargs)


async def test_public_channels_need_no_token(client: Client) -> None:
    assert (await first_frames(client, "/channels/news/events")).status == 200


@pytest.mark.parametrize("channel", ["private-user-42", "presence-room-1"])
async def test_a_granted_private_channel_streams(client: Client, channel: str) -> None:
    result = await first_frames(client, f"/channels/{channel}/events", headers=bearer(token()))
    assert result.status == 200
    assert result.headers["Content-Type"] == "text/event-stream; charset=utf-8"


async def test_no_token_is_401_with_a_challenge(client: Client) -> None:
    response = await client.get("/channels/private-user-42/events")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "token" in (await response.get_json())["error"]


async def test_refusals_reveal_nothing_and_create_nothing(app: Quart, client: Client) -> None:
    """The same answer for a channel that exists and one that does not."""
    await client.post("/channels/private-exists", json={"data": 1}, headers=bearer(PUBLISH_TOKEN))
    before = await state(app).broker.last_seq("channel:private-nothing")
    other = token({"channels": {"subscribe": ["private-other"]}})
    for headers, status in [({}, 401), (bearer("x.y.z"), 401), (bearer(other), 403)]:
        answers = []
        for channel in ("private-exists", "private-nothing"):
            response = await client.get(f"/channels/{channel}/events", headers=headers)
            answers.append((response.status_code, await response.get_data()))
        assert answers[0] == answers[1] and answers[0][0] == status
    assert await state(app).broker.last_seq("channel:private-nothing") == before


async def test_a_token_for_another_channel_is_403(client: Client) -> None:
    response = await client.get(
        "/channels/private-user-7/events", headers=bearer(token())
    )  # grants private-user-42 only
    assert response.status_code == 403


async def test_a_grant_of_star_alone_grants_nothing(client: Client) -> None:
    star = token({"channels": {"subscribe": ["*"]}})
    response = await client.get("/channels/private-user-42/events", headers=bearer(star))
    assert response.status_code == 403
    assert (await first_frames(client, "/channels/news/events", headers=bearer(star))).status == 200


async def test_a_prefix_grant_grants_what_it_prefixes(client: Client) -> None:
    prefix = token({"channels": {"subscribe": ["private-team-7-*"]}})
    ok = await first_frames(client, "/channels/private-team-7-a/events", headers=bearer(prefix))
    assert ok.status == 200
    refused = await client.get("/channels/private-team-70/events", headers=bearer(prefix))
    assert refused.status_code == 403


@pytest.mark.parametrize("name", ["token", "access_token", "jwt", "sse_token"])
async def test_a_token_in_the_url_is_400(client: Client, name: str) -> None:
    response = await client.get(f"/channels/private-user-42/events?{name}={token()}")
    assert response.status_code == 400
    assert (await response.get_json())["field"] == name


def _unsigned(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _rsa_keys() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


HOSTILE = {
    "alg none": lambda: _unsigned({"sub": "user-42", "channels": {"subscribe": ["private-*"]}}),
    "wrong key": lambda: token(key="another-secret-of-enough-length-0123456789"),
    "RS256 against an HS256 secret": lambda: token(key=_rsa_keys()[0], algorithm="RS256"),
    "expired": lambda: token({"exp": int(time.time()) - 10}),
    "not yet valid": lambda: token({"nbf": int(time.time()) + 3600}),
    "exp not a number": lambda: token({"exp": "tomorrow"}),
    "no sub": lambda: jwt.encode({"channels": {"subscribe": ["private-user-42"]}}, SECRET),
    "sub not a string": lambda: token({"sub": 42}),
    "channels not an object": lambda: token({"channels": ["private-user-42"]}),
    "a grant that is no name": lambda: token({"channels": {"subscribe": ["private user"]}}),
    "info of 2 KB": lambda: token({"info": {"bio": "x" * 2048}}),
    "info of 1 MB": lambda: token({"info": {"bio": "x" * 1_000_000}}),
    "a token of 8 KB and more": lambda: token({"pad": "x" * MAX_TOKEN_BYTES}),
    "info with a lone surrogate": lambda: token({"info": {"name": "\udc80"}}),
    "sub with a lone surrogate": lambda: token({"sub": "user-\ud800"}),
    "garbage": lambda: "not-a-jwt",
    "three dots of nothing": lambda: "..",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_tokens_are_401(app: Quart, client: Client, case: str) -> None:
    response = await client.get("/channels/private-user-42/events", headers=bearer(HOSTILE[case]()))
    assert response.status_code == 401, await response.get_data()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.get_json()
    assert body["error"].startswith("the token")
    # Nothing else changed: the server goes on granting good tokens.
    assert (
        await first_frames(client, "/channels/private-user-42/events", headers=bearer(token()))
    ).status == 200


@pytest.mark.parametrize("years", [10, 10**12])
async def test_a_far_future_expiry_is_a_valid_token(client: Client, years: int) -> None:
    """Signed by the backend that mints tokens: honoured (the stream still ends at
    SSE_MAX_AGE_S, so clients rebalance)."""
    far = token({"exp": int(time.time()) + years * 365 * 86400})
    assert (
        await first_frames(client, "/channels/private-user-42/events", headers=bearer(far))
    ).status == 200


def test_algorithm_confusion_with_the_public_key_as_a_secret_is_refused() -> None:
    """RS256 configured: an HS256 token signed with the public key's PEM as the secret."""
    private, public = _rsa_keys()
    verifier = TokenVerifier(public, ["RS256"])
    assert verifier.verify(token(key=private, algorithm="RS256")).sub == "user-42"
    forged = jwt.api_jws.PyJWS().encode(
        json.dumps({"sub": "user-42", "channels": {"subscribe": ["private-*"]}}).encode(),
        "x" * 40,
        algorithm="HS256",
    )
    # Sign for real with the PEM as an HMAC secret (PyJWT refuses to, so by hand).
    import hashlib
    import hmac

    head, payload, _ = forged.split(".")
    signature = hmac.new(public.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    with pytest.raises(Exception) as refused:
        verifier.verify(forged)
    assert getattr(refused.value, "status", None) == 401


def test_es256_and_eddsa_public_keys_work() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = TokenVerifier(public.decode(), ["ES256"], audience="app", issuer="auth")
    good = token({"aud": "app", "iss": "auth"}, key=private, algorithm="ES256")
    assert verifier.verify(good).may_subscribe("presence-lobby")
    for claims in ({"aud": "other", "iss": "auth"}, {"aud": "app", "iss": "other"}, {}):
        with pytest.raises(Exception) as refused:
            verifier.verify(token(claims, key=private, algorithm="ES256"))
        assert getattr(refused.value, "status", None) == 401


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"JWT_KEY": SECRET, "JWT_ALGORITHMS": "none"}, "never accepted"),
        ({"JWT_KEY": SECRET, "JWT_ALGORITHMS": "HS256,none"}, "never accepted"),
        ({"JWT_KEY": "short-secret"}, "at least 32 characters"),
        ({"JWT_KEY": SECRET, "JWT_ALGORITHMS": "HS256,RS256"}, "mixes"),
        ({"JWT_KEY": SECRET, "JWT_ALGORITHMS": "RS256"}, "not a PEM public key"),
        ({"JWT_KEY": _rsa_keys()[1], "JWT_ALGORITHMS": "HS256"}, "is a PEM key"),
        ({"JWT_KEY": SECRET, "JWT_ALGORITHMS": "XS999"}, "not one of"),
        ({"JWT_KEY": SECRET, "JWT_LEEWAY_S": 60}, "from 0 to 5"),
    ],
)
def test_bad_jwt_settings_stop_the_app(
    tmp_path: Path, settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        verifier_of(settings)
    assert problem in str(refused.value)
    with pytest.raises(ConfigError):
        create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k" * 20, **settings})


def test_without_a_key_private_channels_are_off() -> None:
    assert verifier_of({}) is None


async def test_private_channels_are_403_when_no_key_is_set(tmp_path: Path) -> None:
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k" * 20, **FAST})
    async with app.test_app():
        response = await app.test_client().get(
            "/channels/private-user-42/events", headers=bearer(token())
        )
    assert response.status_code == 403
    assert "QUART_JWT_KEY" in (await response.get_json())["error"]


# -- the cookie ----------------------------------------------------------------------


async def test_the_cookie_carries_a_token(client: Client) -> None:
    headers = {"Cookie": f"sse_token={token()}"}
    result = await first_frames(client, "/channels/private-user-42/events", headers=headers)
    assert result.status == 200


async def test_the_cookie_from_another_site_is_refused(client: Client) -> None:
    cookie = {"Cookie": f"sse_token={token()}", "Sec-Fetch-Site": "cross-site"}
    evil = await client.get(
        "/channels/private-user-42/events", headers={**cookie, "Origin": "https://evil.example"}
    )
    assert evil.status_code == 403
    no_origin = await client.get("/channels/private-user-42/events", headers=cookie)
    assert no_origin.status_code == 403
    friend = await first_frames(
        client,
        "/channels/private-user-42/events",
        headers={**cookie, "Origin": "https://friend.example"},
    )
    assert friend.status == 200  # CORS_ORIGINS names it


# -- expiry ---------------------------------------------------------------------------


async def test_a_stream_ends_with_expired_when_its_token_does(client: Client) -> None:
    short = token({"exp": int(time.time()) + 2})
    result = await read_stream(
        client, "/channels/private-user-42/events", headers=bearer(short), timeout=10
    )
    assert result.status == 200 and result.ended
    last = result.parsed.events[-1]
    assert last.type == "expired" and last.last_event_id == ""
    assert "expired" in json.loads(last.data)["message"]
    again = await client.get("/channels/private-user-42/events", headers=bearer(short))
    assert again.status_code == 401


async def test_closes_by_token_expiry_are_counted(app: Quart, client: Client) -> None:
    short = token({"exp": int(time.time()) + 1})
    await read_stream(client, "/channels/private-user-42/events", headers=bearer(short), timeout=10)
    assert state(app).hub.closes["token_expired"] == 1


# -- publishing -------------------------------------------------------------------------


async def test_a_token_that_grants_publishing_publishes(client: Client) -> None:
    publisher = token({"channels": {"publish": ["private-user-*"]}})
    ok = await client.post("/channels/private-user-42", json={"data": 1}, headers=bearer(publisher))
    assert ok.status_code == 202
    refused = await client.post(
        "/channels/private-room", json={"data": 1}, headers=bearer(publisher)
    )
    assert refused.status_code == 403
    subscriber_only = await client.post(
        "/channels/private-user-42", json={"data": 1}, headers=bearer(token())
    )
    assert subscriber_only.status_code == 403


async def test_the_publish_token_still_publishes_anywhere(client: Client) -> None:
    for channel in ("news", "private-user-42", "presence-room"):
        response = await client.post(
            f"/channels/{channel}", json={"data": 1}, headers=bearer(PUBLISH_TOKEN)
        )
        assert response.status_code == 202


async def test_an_expired_publishing_token_is_401(client: Client) -> None:
    old = token({"channels": {"publish": ["news"]}, "exp": int(time.time()) - 30})
    response = await client.post("/channels/news", json={"data": 1}, headers=bearer(old))
    assert response.status_code == 401
