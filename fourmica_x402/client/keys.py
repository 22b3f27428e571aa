"""The buyer's signing key: raw hex, an environment variable, or an encrypted keystore file.

A :class:`BuyerKey` never shows its secret: ``repr``/``str`` name the address only, and
every error says what is wrong (the variable, the file, the shape) without echoing the key or
the password (docs/buyer.md, "Keys").

    key = load_key(key_file="buyer.json", password_env="BUYER_PASSWORD")
    key = load_key(env="FOURMICA_X402_KEY")
    transport = PaymentTransport(key)

Keystore files are the Web3 Secret Storage JSON that ``geth``, ``eth-account`` and most wallets
write; decrypting one needs ``eth-account`` (``pip install 'fourmica-x402[keystore]'``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import coincurve

from ..errors import ConfigurationError
from ..guarantee import address_of

__all__ = ["BuyerKey", "load_key"]

#: The environment variable ``fourmica-x402 pay`` reads a key from by default.
DEFAULT_ENV = "FOURMICA_X402_KEY"
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_KEYSTORE = 1 << 20  # a keystore file is a few hundred bytes; refuse to read a huge one


class BuyerKey:
    """A secp256k1 private key that never shows itself (only its address)."""

    __slots__ = ("_private", "address")

    def __init__(self, key: str | bytes | coincurve.PrivateKey | BuyerKey) -> None:
        private: coincurve.PrivateKey
        if isinstance(key, BuyerKey):
            private = key.private_key
        elif isinstance(key, coincurve.PrivateKey):
            private = key
        else:
            raw = _hex_bytes(key) if isinstance(key, str) else bytes(key)
            if len(raw) != 32:
                raise ConfigurationError(
                    f"a private key is 32 bytes (64 hex digits); this one is {len(raw)} bytes"
                )
            try:
                private = coincurve.PrivateKey(raw)
            except ValueError:
                raise ConfigurationError("not a valid secp256k1 private key") from None
        self._private = private
        self.address = address_of(private)

    @property
    def private_key(self) -> coincurve.PrivateKey:
        """The key to sign with (keep it out of logs: it prints as an object, not as hex)."""
        return self._private

    @classmethod
    def from_env(cls, name: str = DEFAULT_ENV) -> BuyerKey:
        """The hex key held in environment variable ``name``."""
        value = os.environ.get(name)
        if value is None or not value.strip():
            raise ConfigurationError(f"environment variable {name} holds no private key")
        try:
            return cls(value)
        except ConfigurationError as exc:
            raise ConfigurationError(f"environment variable {name}: {exc.message}") from None

    @classmethod
    def from_keystore(
        cls,
        path: str | os.PathLike[str],
        password: str | bytes | None = None,
        *,
        password_env: str | None = None,
    ) -> BuyerKey:
        """Decrypt a keystore JSON file with ``password`` (or the one in ``password_env``)."""
        if password is None:
            if password_env is None:
                raise ConfigurationError("a keystore file needs its password")
            password = os.environ.get(password_env)
            if password is None:
                raise ConfigurationError(f"environment variable {password_env} is not set")
        where = Path(path)
        try:
            with where.open("rb") as fh:
                text = fh.read(_MAX_KEYSTORE + 1)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the keystore file {str(where)!r}: {exc.strerror or exc}"
            ) from None
        try:
            if len(text) > _MAX_KEYSTORE:
                raise ValueError("too large")
            document: Any = json.loads(text)
            if not isinstance(document, dict) or not isinstance(
                document.get("crypto", document.get("Crypto")), dict
            ):
                raise ValueError("no crypto section")
        except (ValueError, RecursionError):
            raise ConfigurationError(
                f"{str(where)!r} is not a keystore file (Web3 Secret Storage JSON)"
            ) from None
        try:
            from eth_account import Account
        except ImportError:
            raise ConfigurationError(
                "reading a keystore file needs eth-account: pip install 'fourmica-x402[keystore]'"
            ) from None
        try:
            secret = bytes(Account.decrypt(document, _text(password)))
        except Exception:  # eth-account raises ValueError, KeyError or TypeError by field
            raise ConfigurationError(
                f"cannot decrypt the keystore file {str(where)!r}: wrong password or damaged file"
            ) from None
        return cls(secret)

    def __repr__(self) -> str:
        return f"BuyerKey(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # a secret does not travel by pickle by accident
        raise TypeError("a BuyerKey cannot be pickled; load it in each process")


def load_key(
    key: str | bytes | coincurve.PrivateKey | BuyerKey | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    password: str | bytes | None = None,
    password_env: str | None = None,
    env: str | None = None,
) -> BuyerKey:
    """Exactly one source: ``key`` (hex, bytes or a key object), ``key_file`` (a keystore,
    with ``password`` or ``password_env``) or ``env`` (the name of a variable holding hex)."""
    given = [name for name, v in (("key", key), ("key_file", key_file), ("env", env)) if v]
    if len(given) != 1:
        raise ConfigurationError(
            "give exactly one of key, key_file or env"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if (password is not None or password_env is not None) and key_file is None:
        raise ConfigurationError("a password goes with a keystore file (key_file)")
    if key_file is not None:
        return BuyerKey.from_keystore(key_file, password, password_env=password_env)
    if env is not None:
        return BuyerKey.from_env(env)
    assert key is not None
    return BuyerKey(key)


def _hex_bytes(text: str) -> bytes:
    body = text.strip()
    if body[:2] in ("0x", "0X"):
        body = body[2:]
    if not body or any(c not in _HEX for c in body):
        raise ConfigurationError("not a hex private key (64 hex digits, optionally after 0x)")
    if len(body) % 2:
        raise ConfigurationError(
            f"a private key is 32 bytes (64 hex digits); this one has {len(body)} hex digits"
        )
    return bytes.fromhex(body)


def _text(password: str | bytes) -> str:
    """eth-account takes the password as text (it encodes it as UTF-8 itself)."""
    return password.decode("utf-8") if isinstance(password, bytes) else password
