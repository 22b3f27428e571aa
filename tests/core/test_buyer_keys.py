"""Buyer keys (docs/buyer.md, "Keys"): raw hex, an environment variable or an encrypted keystore
file, and never the key (or the password) in a repr, an error or a log line."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fourmica_x402.client import BuyerFlow, BuyerKey, PaymentTransport, load_key
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.testing import TEST_KEYS, TestBuyer

KEY = TEST_KEYS[0]  # a throwaway test key
ADDRESS = TestBuyer.from_key(KEY).address
PASSWORD = "correct horse battery staple"
SECRET_SPELLINGS = (KEY, KEY[2:], KEY[2:].upper(), KEY.lower()[2:10])


def never_shows(*texts: str) -> None:
    for text in texts:
        for secret in (*SECRET_SPELLINGS, PASSWORD):
            assert secret not in text, text


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    account = pytest.importorskip("eth_account").Account
    # pbkdf2 with few rounds: the format a wallet writes, quick to decrypt in a test
    document = account.encrypt(KEY, PASSWORD, kdf="pbkdf2", iterations=1024)
    path = tmp_path / "buyer.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("spelling", [KEY, KEY[2:], f"  {KEY}\n", KEY.upper().replace("0X", "0x")])
def test_a_hex_key_in_any_usual_spelling(spelling: str) -> None:
    key = BuyerKey(spelling)
    assert key.address == ADDRESS
    assert load_key(spelling).address == ADDRESS
    assert BuyerKey(bytes.fromhex(KEY[2:])).address == BuyerKey(key).address == ADDRESS
    never_shows(repr(key), str(key), f"{key}", repr(BuyerFlow(key)))
    assert ADDRESS in repr(key)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (KEY[:-2], "32 bytes"),
        (KEY + "00", "32 bytes"),
        (KEY[:-1], "hex digits"),
        (KEY[:-1] + "g", "not a hex private key"),
        ("0x" + "00" * 32, "not a valid secp256k1"),
        ("0x" + "ff" * 32, "not a valid secp256k1"),  # above the curve order
        ("", "not a hex private key"),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(bad: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        BuyerKey(bad)
    assert says in info.value.message
    never_shows(str(info.value), repr(info.value))
    if len(bad) > 10:
        assert bad[2:12] not in str(info.value)


def test_a_one_byte_key_is_told_in_the_singular() -> None:
    with pytest.raises(ConfigurationError) as info:
        BuyerKey("0xab")
    assert info.value.message.endswith("this one is 1 byte")


def test_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_KEY", KEY)
    assert load_key(env="AGENT_KEY").address == ADDRESS
    monkeypatch.setenv("FOURMICA_X402_KEY", KEY)
    assert BuyerKey.from_env().address == ADDRESS
    for value in ("", "   "):
        monkeypatch.setenv("AGENT_KEY", value)
        with pytest.raises(ConfigurationError, match="AGENT_KEY holds no private key"):
            load_key(env="AGENT_KEY")
    monkeypatch.delenv("AGENT_KEY")
    with pytest.raises(ConfigurationError, match="AGENT_KEY holds no private key"):
        load_key(env="AGENT_KEY")
    monkeypatch.setenv("AGENT_KEY", KEY[:-2])
    with pytest.raises(ConfigurationError) as info:
        load_key(env="AGENT_KEY")
    assert "AGENT_KEY" in info.value.message
    never_shows(str(info.value))


def test_a_keystore_file(keystore: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_key(key_file=keystore, password=PASSWORD).address == ADDRESS
    assert load_key(key_file=str(keystore), password=PASSWORD.encode()).address == ADDRESS
    monkeypatch.setenv("KEYSTORE_PASSWORD", PASSWORD)
    key = load_key(key_file=keystore, password_env="KEYSTORE_PASSWORD")
    assert key.address == ADDRESS
    never_shows(repr(key), repr(PaymentTransport(key).flow))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("wrong password", "wrong password or damaged file"),
        ("not json", "is not a keystore file"),
        ("not a keystore", "is not a keystore file"),
        ("missing", "cannot read the keystore file"),
        ("no password", "needs its password"),
        ("unset variable", "NO_SUCH_VARIABLE is not set"),
    ],
)
def test_keystore_problems_are_clean_errors(keystore: Path, change: str, says: str) -> None:
    kwargs: dict[str, object] = {"key_file": keystore, "password": PASSWORD}
    if change == "wrong password":
        kwargs["password"] = PASSWORD + "!"
    elif change == "not json":
        keystore.write_text("{nope")
    elif change == "not a keystore":
        keystore.write_text(json.dumps({"address": ADDRESS}))
    elif change == "missing":
        kwargs["key_file"] = keystore.with_name("missing.json")
    elif change == "no password":
        del kwargs["password"]
    else:
        del kwargs["password"]
        kwargs["password_env"] = "NO_SUCH_VARIABLE"
    with pytest.raises(ConfigurationError) as info:
        load_key(**kwargs)  # type: ignore[arg-type]
    assert says in info.value.message, info.value.message
    never_shows(str(info.value), repr(info.value))
    # No chained error (a library's, which might quote its input) travels with it.
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize(
    "params",
    [
        {"c": 2**31 - 1},  # minutes of rounds
        {"dklen": 1 << 20},  # 32768 blocks of 1024 rounds each
        {"kdf": "scrypt", "n": 1024, "r": 8, "p": 10**6},  # a million passes
        {"kdf": "scrypt", "n": 1000, "r": 8, "p": 1},  # not a power of two
        {"kdf": "scrypt", "n": 2**30, "r": 8, "p": 1},  # 128 GiB
        {"c": True},
        {"KDFParams": {"c": 2**31 - 1}},  # eth-account reads field names in any case
    ],
    ids=["rounds", "dklen", "scrypt-p", "scrypt-n", "scrypt-memory", "not-a-count", "spelling"],
)
def test_a_keystore_asking_too_costly_a_derivation_is_refused_at_once(
    keystore: Path, params: dict[str, Any]
) -> None:
    """A damaged or hostile keystore's key derivation settings were used as they were: pbkdf2
    with 2**31 rounds hung ``from_keystore`` (and the CLI) for many minutes, a huge dklen or
    scrypt n·r·p took as long or GiBs. Settings over the limits of docs/buyer.md ("Keys") are
    refused before anything is derived; the settings wallets write are well inside them."""
    from fourmica_x402.client.keys import _kdf_over_limits

    document = json.loads(keystore.read_text())
    crypto = document["crypto"]
    if "KDFParams" in params:
        crypto["KDFParams"] = {**crypto.pop("kdfparams"), **params["KDFParams"]}
    elif params.get("kdf") == "scrypt":
        salt = crypto["kdfparams"]["salt"]
        crypto["kdf"], crypto["kdfparams"] = "scrypt", {"dklen": 32, "salt": salt}
        crypto["kdfparams"].update({k: v for k, v in params.items() if k != "kdf"})
    else:
        crypto["kdfparams"].update(params)
    keystore.write_text(json.dumps(document))
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="damaged or unsupported file"):
        load_key(key_file=keystore, password=PASSWORD)
    assert time.monotonic() - started < 5
    wallets = [  # geth, eth-account and wallets' own settings; the largest allowed
        ("scrypt", {"n": 2**18, "r": 8, "p": 1, "dklen": 32}),
        ("scrypt", {"n": 2**12, "r": 8, "p": 6, "dklen": 32}),
        ("scrypt", {"n": 2**20, "r": 8, "p": 1, "dklen": 32}),
        ("pbkdf2", {"c": 262_144, "dklen": 32, "prf": "hmac-sha256"}),
        ("pbkdf2", {"c": 10_000_000, "dklen": 32, "prf": "hmac-sha256"}),
    ]
    for kdf, settings in wallets:
        assert _kdf_over_limits({"crypto": {"kdf": kdf, "kdfparams": settings}}) is None
        v4 = {"crypto": {"kdf": {"function": kdf, "params": settings}}}
        assert _kdf_over_limits(v4) is None


def test_a_keystore_without_eth_account_names_the_extra(keystore: Path) -> None:
    code = (
        "import sys; sys.modules['eth_account'] = None\n"
        "from fourmica_x402.client import load_key\n"
        "from fourmica_x402.errors import ConfigurationError\n"
        "try:\n"
        f"    load_key(key_file={str(keystore)!r}, password='x')\n"
        "except ConfigurationError as exc:\n"
        "    print(exc.message)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'fourmica-x402[keystore]'" in out.stdout, out.stdout + out.stderr


def test_exactly_one_source(keystore: Path) -> None:
    for kwargs in (
        {},
        {"key": KEY, "env": "X"},
        {"key": KEY, "key_file": keystore},
        {"key": KEY, "password": PASSWORD},
        {"env": "X", "password_env": "Y"},
    ):
        with pytest.raises(ConfigurationError) as info:
            load_key(**kwargs)  # type: ignore[arg-type]
        never_shows(str(info.value))


def test_a_key_does_not_travel_by_pickle_or_show_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    key = BuyerKey(KEY)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("fourmica_x402").debug("loaded %r for %s", key, key)
        transport = PaymentTransport(key)
    never_shows(caplog.text, repr(transport), repr(vars(transport.flow)))
    assert ADDRESS in caplog.text
