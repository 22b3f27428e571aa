"""The hand-written Ethereum primitives agree with eth-abi and eth-utils."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from fourmica_x402._eth import Dyn, abi_encode_dynamic, address_word, parse_address, uint_word

addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())


@given(addresses)
def test_checksum_matches_eth_utils(address: str) -> None:
    assert parse_address(address) == to_checksum_address(address)
    assert parse_address(address.upper().replace("0X", "0x")) == to_checksum_address(address)


def test_bad_checksum_and_junk_are_refused() -> None:
    good = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    with pytest.raises(ValueError):
        parse_address(good.replace("C", "c", 1))
    for junk in ("", "0x", "0x123", good[2:], good + "00", "0x" + "g" * 40, None, 5):
        with pytest.raises(ValueError):
            parse_address(junk)


def test_a_key_given_as_an_address_is_never_echoed() -> None:
    """A private key pasted where an address goes was printed back, 57 of its 64 digits."""
    key = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"  # TEST key
    for value in ("0x" + key, key, bytes.fromhex(key), bytearray.fromhex(key)):
        with pytest.raises(ValueError) as refused:
            parse_address(value)
        assert key[4:16] not in str(refused.value), str(refused.value)
    with pytest.raises(ValueError, match="'0x12'"):  # a short value is shown whole
        parse_address("0x12")


@given(st.integers(0, (1 << 256) - 1), addresses, st.binary(max_size=100), st.text(max_size=40))
def test_dynamic_encoding_matches_eth_abi(n: int, address: str, blob: bytes, text: str) -> None:
    ours = abi_encode_dynamic(uint_word(n), Dyn(blob), address_word(address), Dyn(text))
    assert ours == encode(["uint256", "bytes", "address", "string"], [n, blob, address, text])


def test_uint_range() -> None:
    with pytest.raises(ValueError):
        uint_word(-1)
    with pytest.raises(ValueError):
        uint_word(1 << 256)
    with pytest.raises(TypeError):
        abi_encode_dynamic(b"short")
