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
#: The key derivation a keystore may ask for (docs/buyer.md, "Keys"): wallets write scrypt
#: n=2**18, r=8, p=1 or pbkdf2 c=262144 with dklen 32; a file asking for more (hours of
#: rounds, GiBs of memory) is refused as damaged before anything is derived.
MAX_PBKDF2_ROUNDS = 10_000_000
MAX_SCRYPT_BYTES = 1 << 30  # 128·n·r·p: scrypt n=2**20, r=8, p=1 at most
MAX_DKLEN = 64


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
                    f"a private key is 32 bytes (64 hex digits); this one is {len(raw)} "
                    + ("byte" if len(raw) == 1 else "bytes")
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
        limit = _kdf_over_limits(document)
        if limit is not None:
            raise ConfigurationError(
                f"cannot decrypt the keystore file {str(where)!r}: damaged or unsupported file "
                f"({limit})"
            )
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


def _field(document: object, name: str) -> Any:
    """``document[name]`` as eth-account reads it: keys compared in lower case, the last wins."""
    found = None
    if isinstance(document, dict):
        for key, value in document.items():
            if isinstance(key, str) and key.lower() == name:
                found = value
    return found


def _kdf_over_limits(document: dict[str, Any]) -> str | None:
    """Which limit on the key derivation the keystore's settings break, if one (a setting
    that is not a whole number breaks it too). Another kdf, or no settings at all, is left to
    eth-account, which refuses it at once."""
    crypto = _field(document, "crypto")
    kdf = _field(crypto, "kdf")
    if isinstance(kdf, dict):  # version 4: {"function", "params"}
        kdf, params = _field(kdf, "function"), _field(kdf, "params")
    else:
        params = _field(crypto, "kdfparams")
    if kdf not in ("pbkdf2", "scrypt") or not isinstance(params, dict):
        return None

    def count(name: str) -> int:
        value = _field(params, name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    if not 0 < count("dklen") <= MAX_DKLEN:
        return f"dklen must be 1 to {MAX_DKLEN}"
    if kdf == "pbkdf2":
        if not 0 < count("c") <= MAX_PBKDF2_ROUNDS:
            return f"pbkdf2 rounds c must be 1 to {MAX_PBKDF2_ROUNDS:,}"
        return None
    n, r, p = count("n"), count("r"), count("p")
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > MAX_SCRYPT_BYTES:
        return "scrypt needs n a power of two, r and p at least 1, and 128·n·r·p at most 1 GiB"
    return None


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
