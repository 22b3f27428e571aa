"""The service's Sign-In with Ethereum (``/auth/*``), which the official TypeScript SDK makes
before its first Core API call: nonce, verify, refresh, logout, and what each refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coincurve
import pytest
from starlette.testclient import TestClient

from fourmica_x402._eth import keccak
from fourmica_x402.core import Core
from fourmica_x402.guarantee import address_of
from fourmica_x402.service import create_app

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # test key
OTHER = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"  # test key
ADDRESS = address_of(KEY)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    c = Core(str(tmp_path / "signin.db"))
    yield c
    c.close()


@pytest.fixture
def client(core: Core) -> Iterator[TestClient]:
    with TestClient(create_app(core, sandbox=True, tick_interval=None)) as c:
        yield c


def personal_sign(message: str, key: str) -> str:
    data = message.encode()
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)
    raw = coincurve.PrivateKey(bytes.fromhex(key[2:])).sign_recoverable(digest, hasher=None)
    return "0x" + (raw[:64] + bytes((raw[64] + 27,))).hex()


def siwe_message(address: str, nonce: str, siwe: dict[str, Any], **changes: Any) -> str:
    """The message as the TypeScript SDK 1.2.17 builds it from the template (``changes``: the
    template's fields, ``version``, ``notBefore`` and ``repeat``, a line more at the end)."""
    t = {"version": "1", **siwe, **changes}
    issued = "" if t["issuedAt"] is None else f"\nIssued At: {t['issuedAt']}"
    later = f"\nNot Before: {t['notBefore']}" if "notBefore" in t else ""
    later += f"\n{t['repeat']}" if "repeat" in t else ""
    return (
        f"{t['domain']} wants you to sign in with your Ethereum account:\n{address}\n\n"
        f"{t['statement']}\n\nURI: {t['uri']}\nVersion: {t['version']}\n"
        f"Chain ID: {t['chainId']}\nNonce: {nonce}{issued}\n"
        f"Expiration Time: {t['expiration']}{later}"
    )


def sign_in(client: TestClient, key: str = KEY, root: str = "", **changes: Any) -> Any:
    address = address_of(key)
    got = client.post(f"{root}/auth/nonce", json={"address": address})
    assert got.status_code == 200, got.text
    body = got.json()
    message = siwe_message(address, body["nonce"], body["siwe"], **changes)
    return client.post(
        f"{root}/auth/verify",
        json={"address": address, "message": message, "signature": personal_sign(message, key)},
    )


def test_a_signed_in_buyer_gets_tokens_that_refresh_and_log_out(client: TestClient) -> None:
    nonce = client.post("/auth/nonce", json={"address": ADDRESS}).json()
    assert set(nonce["siwe"]) == {"domain", "uri", "chainId", "statement", "expiration", "issuedAt"}
    assert nonce["siwe"]["chainId"] == 84532 and nonce["siwe"]["uri"] == "http://testserver"
    got = sign_in(client)
    assert got.status_code == 200, got.text
    tokens = got.json()
    assert set(tokens) == {"access_token", "refresh_token", "expires_in"}
    assert tokens["expires_in"] > 0
    renewed = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert renewed.status_code == 200
    assert renewed.json()["refresh_token"] != tokens["refresh_token"]
    # rotated: the old refresh token is spent
    again = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401 and again.json()["error"] == "unauthorized"
    out = client.post("/auth/logout", json={"refresh_token": renewed.json()["refresh_token"]})
    assert out.json() == {"revoked": True}
    after = client.post("/auth/refresh", json={"refresh_token": renewed.json()["refresh_token"]})
    assert after.status_code == 401


def test_each_chains_core_api_signs_in_for_its_chain(client: TestClient) -> None:
    """A seller on the service names ``/chains/<id>`` as an offer's ``rpcUrl``: the SDK signs in
    under it, for that chain."""
    nonce = client.post("/chains/11155111/auth/nonce", json={"address": ADDRESS}).json()
    assert nonce["siwe"]["chainId"] == 11155111
    assert nonce["siwe"]["uri"] == "http://testserver/chains/11155111"
    assert sign_in(client, root="/chains/11155111").status_code == 200
    assert sign_in(client, root="/chains/11155111", chainId=84532).status_code == 401
    unknown = client.post("/chains/999999999/auth/nonce", json={"address": ADDRESS})
    assert unknown.status_code == 404


def test_a_nonce_signs_in_once(client: TestClient) -> None:
    body = client.post("/auth/nonce", json={"address": ADDRESS}).json()
    message = siwe_message(ADDRESS, body["nonce"], body["siwe"])
    call = {"address": ADDRESS, "message": message, "signature": personal_sign(message, KEY)}
    assert client.post("/auth/verify", json=call).status_code == 200
    replayed = client.post("/auth/verify", json=call)
    assert replayed.status_code == 401 and replayed.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "changes",
    [{"chainId": 1}, {"expiration": "2020-01-01T00:00:00Z"}],
    ids=["another_chain", "expired"],
)
def test_a_message_for_another_chain_or_expired_is_refused(
    client: TestClient, changes: dict[str, Any]
) -> None:
    got = sign_in(client, **changes)
    assert got.status_code == 401 and got.json()["error"] == "unauthorized"


def test_a_signature_by_another_key_or_for_another_address_is_refused(client: TestClient) -> None:
    body = client.post("/auth/nonce", json={"address": ADDRESS}).json()
    message = siwe_message(ADDRESS, body["nonce"], body["siwe"])
    forged = {"address": ADDRESS, "message": message, "signature": personal_sign(message, OTHER)}
    assert client.post("/auth/verify", json=forged).status_code == 401
    # the other key signing in with a nonce handed out to ADDRESS
    other = address_of(OTHER)
    theirs = siwe_message(other, body["nonce"], body["siwe"])
    call = {"address": other, "message": theirs, "signature": personal_sign(theirs, OTHER)}
    assert client.post("/auth/verify", json=call).status_code == 401


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/nonce", {"address": "0x1234"}),
        ("/auth/nonce", ["not", "an", "object"]),
        ("/auth/verify", {"address": ADDRESS, "message": "hello", "signature": "0x00"}),
        ("/auth/verify", {"address": ADDRESS}),
        ("/auth/refresh", {"refresh_token": 7}),
    ],
)
def test_an_unreadable_request_is_a_400(client: TestClient, path: str, body: Any) -> None:
    got = client.post(path, json=body)
    assert got.status_code == 400 and got.json()["error"] == "invalid_request", got.text


def test_a_sign_in_token_unlocks_nothing_a_key_guards(core: Core) -> None:
    with TestClient(create_app(core, sandbox=True, api_key="s3cret", tick_interval=None)) as c:
        token = sign_in(c).json()["access_token"]
        deposit = {"address": ADDRESS, "amount": 1000}
        got = c.post("/sandbox/deposit", json=deposit, headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 401


def test_a_nonce_signs_in_for_the_chain_it_was_handed_out_for(client: TestClient) -> None:
    """``/chains/<id>/auth/*`` signs in for that chain: neither its nonce nor its refresh token
    serves another chain's sign-in."""
    body = client.post("/chains/11155111/auth/nonce", json={"address": ADDRESS}).json()
    here = client.post("/auth/nonce", json={"address": ADDRESS}).json()["siwe"]
    message = siwe_message(ADDRESS, body["nonce"], here)  # chain 84532, this root's URI
    call = {"address": ADDRESS, "message": message, "signature": personal_sign(message, KEY)}
    got = client.post("/auth/verify", json=call)
    assert got.status_code == 401 and got.json()["error"] == "unauthorized"
    refresh = sign_in(client, root="/chains/11155111").json()["refresh_token"]
    got = client.post("/auth/refresh", json={"refresh_token": refresh})
    assert got.status_code == 401
    again = client.post("/chains/11155111/auth/refresh", json={"refresh_token": refresh})
    assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    "changes",
    [
        {"domain": "evil.example"},
        {"uri": "https://evil.example"},
        {"issuedAt": "2999-01-01T00:00:00Z"},
        {"notBefore": "2999-01-01T00:00:00Z"},
        {"version": "2"},
    ],
    ids=["another_domain", "another_uri", "issued_in_the_future", "not_valid_yet", "version"],
)
def test_a_message_for_another_site_or_not_valid_now_is_refused(
    client: TestClient, changes: dict[str, Any]
) -> None:
    """What the message says is checked as 4Mica's Core checks it: a signature a buyer gave
    another site (its domain, its URI) does not sign in here, nor one not valid yet."""
    got = sign_in(client, **changes)
    assert got.status_code == 401 and got.json()["error"] == "unauthorized", got.text


@pytest.mark.parametrize(
    "changes",
    [
        {"expiration": "2999-01-01T00:00:00"},
        {"issuedAt": "2020-01-01"},
        {"issuedAt": None},
        {"repeat": "Chain ID: 1"},
    ],
    ids=["expiration_without_zone", "issued_at_without_time", "no_issued_at", "field_twice"],
)
def test_a_message_with_a_time_without_zone_or_a_field_twice_is_a_400(
    client: TestClient, changes: dict[str, Any]
) -> None:
    """A time without its zone would be read in the server's local time; a field named twice
    would be read one way by the wallet showing it and another here: refused, never guessed."""
    got = sign_in(client, **changes)
    assert got.status_code == 400 and got.json()["error"] == "invalid_request", got.text
