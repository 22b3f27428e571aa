"""Evidence bundles and dispute states on a real Core and real SQLite files
(docs/operations.md, "Evidence and disputes"): what a bundle holds, that any changed byte
fails its verification, tampering named by the check it fails, the command line's refusals,
and disputes through the CLI and on the dashboard. The adapters' round trips are in
tests/conformance/test_evidence.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fourmica_x402.cli import main
from fourmica_x402.core import Core, Operator
from fourmica_x402.evidence import request_hash
from fourmica_x402.evidence.bundle import build_bundle
from fourmica_x402.evidence.canonical import seal
from fourmica_x402.evidence.verify import EvidenceInvalid, verify_bundle
from fourmica_x402.guarantee import Scheme, guarantee_id, sign_claims
from fourmica_x402.networks import default_asset
from fourmica_x402.records import Records
from fourmica_x402.server.dashboard import render_dashboard
from fourmica_x402.testing import NETWORK, TestBuyer

USDC = default_asset(NETWORK).address
BODY = b'{"answer": 42}'


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def refused(result: Result, code: int, *needles: str) -> str:
    """A clean refusal: exit ``code``, no traceback, one ``Error: …`` line, the last one."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything, everything
    assert result.exit_code == code, (result.exit_code, everything)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@dataclass
class Shop:
    core: Core
    records: Records
    path: Path
    seller: str

    @property
    def db(self) -> str:
        return f"sqlite:///{self.path}"

    def sell(
        self,
        buyer: TestBuyer,
        amount: int,
        *,
        hashed: bool = True,
        records: Any = None,
        scheme: Scheme = "eip712",
    ):
        """A paid GET /report as the gate records it: accepted, recorded, delivered."""
        book = records or self.records
        signed, expected = buyer.pay(self.core, self.seller, amount)
        if scheme != signed.scheme:  # a G-v1 buyer may personal-sign (EIP-191) instead
            signed = sign_claims(signed.claims, buyer.key, self.core.domain(84532), scheme)
        accepted = self.core.accept(signed, expected)
        record_id = book.begin(
            route="GET /report",
            method="GET",
            path="/report",
            header_version=2,
            header_hash=hashlib.sha256(signed.signature).hexdigest(),
            pay_to=self.seller,
            amount=amount,
            asset=USDC,
            network=NETWORK,
            settle_mode="before",
            settle_result={"success": True},
            status="settled",
            request_id=hex(accepted.req_id),
            tab_id=hex(accepted.tab_id),
            guarantee_id=accepted.guarantee_id,
            payer=buyer.address,
            request_hash=request_hash("GET", "/report", "q=1", b"") if hashed else None,
        )
        book.finish(
            record_id,
            status="delivered",
            http_status=200,
            response_hash=hashlib.sha256(BODY).hexdigest(),
            outcome="delivered",
        )
        return accepted.guarantee_id


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    path = tmp_path / "shop.db"
    core = Core(f"sqlite:///{path}")
    made = Shop(core, Records(core.store), path, TestBuyer.new().address)
    yield made
    core.close()


@pytest.fixture
def buyer(shop: Shop) -> TestBuyer:
    who = TestBuyer.new()
    shop.core.deposit(who.address, 5_000_000, network=NETWORK)
    return who


@pytest.fixture
def bundle(shop: Shop, buyer: TestBuyer) -> bytes:
    return build_bundle(shop.core, shop.records, shop.sell(buyer, 10_000))


def content_of(data: bytes) -> dict[str, Any]:
    return dict(json.loads(data)["content"])


def failure(data: bytes, key: Any = None) -> str:
    with pytest.raises(EvidenceInvalid) as info:
        verify_bundle(data, key)
    return str(info.value)


# -- what a bundle holds ----------------------------------------------------------------------


def test_a_bundle_holds_the_guarantee_certificate_record_and_history(
    shop: Shop, buyer: TestBuyer
) -> None:
    gid = shop.sell(buyer, 10_000)
    assert shop.core.guarantee(gid).certificate is None  # lazy: made for the bundle
    data = build_bundle(shop.core, shop.records, gid)
    content = content_of(data)
    assert shop.core.guarantee(gid).certificate is not None
    assert content["guarantee"]["version"] == "G-v1"
    assert content["guarantee"]["claims"]["user_address"] == buyer.address
    assert content["eip712_domain"] == {"name": "4mica", "version": "1", "chainId": 84532}
    assert content["core"]["public_key"] == "0x" + shop.core.operator.public_key.hex()
    record = content["record"]
    assert (record["route"], record["status"], record["amount"], record["asset"]) == (
        "GET /report",
        "delivered",
        10_000,
        USDC,
    )
    assert record["request_hash"] == request_hash("GET", "/report", "q=1", b"")
    assert record["response_hash"] == hashlib.sha256(BODY).hexdigest()
    assert record["created_at"] <= record["delivered_at"]
    history = content["history"]
    assert (history["settled"], history["delivered"], history["refunded"]) == (True, True, False)
    assert history["cycle"]["status"] == "open" and history["scored"] is None
    verified = verify_bundle(data)
    assert verified.guarantee_id == gid and verified.amount == 10_000
    assert "request hash recorded" in verified.summary()

    # Netted: the closed cycle, the payer's position there and the obligation it is part of.
    cycle = shop.core.close_cycle(network=NETWORK)
    netted = content_of(build_bundle(shop.core, shop.records, gid))["history"]
    assert netted["guarantee_state"] == "netted"
    assert netted["cycle"]["cycle_id"] == cycle.cycle_id and netted["cycle"]["status"] == "closed"
    assert netted["cycle"]["payer_position"]["role"] == "debtor"
    assert netted["cycle"]["payer_position"]["net"] == -10_000
    assert netted["cycle"]["obligation"] == {
        "payer": buyer.address,
        "payee": shop.seller,
        "amount": 10_000,
        "guarantee_count": 1,
    }


def test_an_older_record_has_no_request_hash_and_still_verifies(
    shop: Shop, buyer: TestBuyer
) -> None:
    data = build_bundle(shop.core, shop.records, shop.sell(buyer, 7, hashed=False))
    assert content_of(data)["record"]["request_hash"] is None
    assert "request hash absent" in verify_bundle(data).summary()


def test_the_request_hash_encoding() -> None:
    digest = request_hash("get", "/a", "b=1", b"")
    assert digest == request_hash("GET", "/a", "b=1", b"")
    body = hashlib.sha256(b"").hexdigest().encode()  # the body is encoded by its SHA-256
    expected = hashlib.sha256(
        b"fx-request-v1" + b"3:GET," + b"2:/a," + b"3:b=1," + b"64:" + body + b","
    )
    assert digest == expected.hexdigest()
    unknown = hashlib.sha256(b"fx-request-v1" + b"3:GET," + b"2:/a," + b"3:b=1," + b"-")
    assert request_hash("GET", "/a", "b=1", None) == unknown.hexdigest()
    # unambiguous: moving a byte between parts, or an unknown body, changes it
    assert request_hash("GET", "/ab", "=1", b"") != digest
    assert request_hash("GET", "/a", "b=1", None) != digest
    assert request_hash("GET", "/a", "b=1", b"x") != digest


# -- any changed byte fails -------------------------------------------------------------------


def test_every_single_changed_byte_fails(bundle: bytes) -> None:
    verify_bundle(bundle)
    for i in range(len(bundle)):
        for flip in (0x01, 0x80):
            changed = bundle[:i] + bytes([bundle[i] ^ flip]) + bundle[i + 1 :]
            with pytest.raises(EvidenceInvalid):
                verify_bundle(changed)
    for changed in (bundle + b" ", bundle[:-1], b" " + bundle, bundle.replace(b",", b", ", 1)):
        with pytest.raises(EvidenceInvalid):
            verify_bundle(changed)


def test_changed_bytes_through_the_command_line(bundle: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle)
    assert cli("verify-evidence", str(path)).exit_code == 0
    step = max(1, len(bundle) // 12)
    for i in [*range(0, len(bundle), step), len(bundle) - 1]:
        path.write_bytes(bundle[:i] + bytes([bundle[i] ^ 0x01]) + bundle[i + 1 :])
        refused(cli("verify-evidence", str(path)), 1)


# -- tampering, named by the check it fails -------------------------------------------------------


def resealed(data: bytes, change: Any) -> bytes:
    """The bundle with ``change(content)`` applied and sealed again (a careful forger)."""
    content = content_of(data)
    change(content)
    return seal(content)


def test_a_changed_amount(bundle: bytes) -> None:
    def record(c: dict[str, Any]) -> None:
        c["record"]["amount"] += 1

    def claims(c: dict[str, Any]) -> None:
        c["guarantee"]["claims"]["amount"] = hex(int(c["guarantee"]["claims"]["amount"], 16) + 1)
        c["record"]["amount"] += 1

    assert failure(resealed(bundle, record)) == "record amount does not match the claims"
    assert failure(resealed(bundle, claims)) == "buyer signature does not match userAddress"
    naive = bundle.replace(b'"amount":10000', b'"amount":10001')
    assert naive != bundle
    assert failure(naive) == "bundle digest does not match its content"


def test_a_swapped_signature(shop: Shop, buyer: TestBuyer, bundle: bytes) -> None:
    other = content_of(build_bundle(shop.core, shop.records, shop.sell(buyer, 10_000)))

    def swap(c: dict[str, Any]) -> None:
        c["guarantee"]["signature"] = other["guarantee"]["signature"]

    assert failure(resealed(bundle, swap)) == "buyer signature does not match userAddress"


def test_a_wrong_public_key(bundle: bytes, tmp_path: Path) -> None:
    stranger = "0x" + Operator.generate()[0].public_key.hex()
    assert failure(bundle, stranger) == (
        "Core certificate does not verify against the given public key"
    )
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle)
    refused(cli("verify-evidence", str(path), "--public-key", stranger), 1, "given public key")
    refused(cli("verify-evidence", str(path), "--public-key", "0x1234"), 2, "48 bytes")

    def replace_key(c: dict[str, Any]) -> None:
        c["core"]["public_key"] = stranger

    assert failure(resealed(bundle, replace_key)) == (
        "Core certificate does not verify against the Core public key"
    )


def test_a_changed_response_hash(bundle: bytes) -> None:
    old = content_of(bundle)["record"]["response_hash"]
    new = hashlib.sha256(b"another response").hexdigest()
    assert failure(bundle.replace(old.encode(), new.encode())) == (
        "bundle digest does not match its content"
    )

    def garble(c: dict[str, Any]) -> None:
        c["record"]["response_hash"] = "not a digest"

    assert failure(resealed(bundle, garble)) == "record response_hash is not a SHA-256 hex digest"


def test_a_certificate_for_other_claims(shop: Shop, buyer: TestBuyer, bundle: bytes) -> None:
    other = content_of(build_bundle(shop.core, shop.records, shop.sell(buyer, 10_000)))

    def swap(c: dict[str, Any]) -> None:
        c["certificate"] = other["certificate"]

    assert failure(resealed(bundle, swap)) == "certificate message does not match the claims"


@pytest.mark.parametrize("scheme", ["eip191", "eip712"])
def test_a_payment_moved_to_another_network(shop: Shop, buyer: TestBuyer, scheme: Scheme) -> None:
    """A testnet payment relabelled as one on Base mainnet, its ids made again for that chain.
    An EIP-191 signature does not name the chain, so only the certificate's guarantee domain
    (the chain and the Core's contract) tells: it verified, even against the trusted key."""
    data = build_bundle(shop.core, shop.records, shop.sell(buyer, 10_000, scheme=scheme))
    assert content_of(data)["guarantee"]["scheme"] == scheme
    assert content_of(data)["core"]["contract_address"] == shop.core.config.contract_address
    verify_bundle(data, shop.core.operator.public_key)

    def mainnet(c: dict[str, Any]) -> None:
        claims = c["guarantee"]["claims"]
        gid = "0x" + guarantee_id(8453, int(claims["tab_id"], 16), int(claims["req_id"], 16)).hex()
        c["network"] = c["record"]["network"] = "eip155:8453"
        c["guarantee_id"] = c["record"]["guarantee_id"] = gid
        c["eip712_domain"]["chainId"] = 8453

    if scheme == "eip712":  # the buyer signed the chain
        expected = "buyer signature does not match userAddress"
    else:
        expected = "guarantee domain is not the one of the network's chain and the Core contract"
    assert failure(resealed(data, mainnet), shop.core.operator.public_key) == expected

    def other_contract(c: dict[str, Any]) -> None:
        c["core"]["contract_address"] = buyer.address

    assert failure(resealed(data, other_contract)) == (
        "guarantee domain is not the one of the network's chain and the Core contract"
    )

    def older(c: dict[str, Any]) -> None:  # a bundle made before it named the contract
        del c["core"]["contract_address"]

    if scheme == "eip712":  # the buyer's signature binds the chain: it still verifies
        assert verify_bundle(resealed(data, older)).network == NETWORK
    else:
        assert failure(resealed(data, older)) == (
            "the Core contract is missing: an EIP-191 signature does not name the chain, so "
            "the network cannot be checked"
        )


@pytest.mark.parametrize("total", [2**256, 2**300, -1, "10000", True])
def test_a_tab_total_no_certificate_can_carry(bundle: bytes, total: Any) -> None:
    """A total past 2**256 - 1 made the verifier raise a bare ValueError (a traceback)."""

    def change(c: dict[str, Any]) -> None:
        c["guarantee"]["total_amount"] = total

    expected = "certificate message does not match the claims (tab total)"
    assert failure(resealed(bundle, change)) == expected


@pytest.mark.parametrize("domain", ["0x" + "ff" * 40, "0x" + "ff" * 16, "0x"])
def test_a_guarantee_domain_that_is_not_one_word(bundle: bytes, domain: str) -> None:
    """Any other length made the certificate message's words raise a TypeError (a traceback)."""

    def change(c: dict[str, Any]) -> None:
        c["core"]["guarantee_domain"] = domain

    assert failure(resealed(bundle, change)) == "guarantee domain is not 32 bytes of hex"


@pytest.mark.parametrize("state", [[], {}, ["opened"], {"opened": 1}])
def test_a_dispute_state_that_is_not_text(bundle: bytes, state: Any, tmp_path: Path) -> None:
    """A list or an object as a dispute's state made the verifier raise a TypeError (a
    traceback from verify-evidence) instead of naming the check it fails."""

    def change(c: dict[str, Any]) -> None:
        c["disputes"] = [{"state": state, "note": "x", "at": 1}]

    forged = resealed(bundle, change)
    assert failure(forged) == "dispute history is not a valid sequence of states"
    path = tmp_path / "bundle.json"
    path.write_bytes(forged)
    refused(cli("verify-evidence", str(path)), 1, "dispute history")


def test_malformed_files_are_one_clean_line(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    for text in (b"{not json", b"\xff\xfe", b"[]", b'{"format": "other"}', b""):
        path.write_bytes(text)
        refused(cli("verify-evidence", str(path)), 1, "not an evidence bundle")
    refused(cli("verify-evidence", str(tmp_path / "absent.json")), 2)


def test_a_file_that_is_not_text_is_named_so(tmp_path: Path) -> None:
    """A binary file was "malformed JSON (UnicodeDecodeError)": the exception's name, no reason."""
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    refused(cli("verify-evidence", str(path)), 1, "not an evidence bundle: not an ASCII JSON file")


# -- the evidence command ---------------------------------------------------------------------


def test_evidence_to_a_file_or_standard_output(
    shop: Shop, buyer: TestBuyer, tmp_path: Path
) -> None:
    gid = shop.sell(buyer, 10_000)
    out = tmp_path / "bundle.json"
    assert cli("evidence", gid, "--db", shop.db, "--out", str(out)).exit_code == 0
    printed = cli("evidence", gid, "--db", shop.db)
    assert printed.exit_code == 0
    assert content_of(printed.stdout_bytes)["record"] == content_of(out.read_bytes())["record"]
    verify_bundle(printed.stdout_bytes)
    ok = cli("verify-evidence", str(out))
    assert ok.exit_code == 0 and ok.output.startswith(f"verified: G-v1 guarantee {gid} ")


def test_evidence_refusals(shop: Shop, buyer: TestBuyer, tmp_path: Path) -> None:
    gid = shop.sell(buyer, 10_000)
    refused(cli("evidence", "0x" + "ab" * 32, "--db", shop.db), 2, "no guarantee")
    refused(cli("evidence", "12345", "--db", shop.db), 2, "not a guarantee id")
    refused(cli("evidence", gid, "--db", "nonsense"), 2, "not a database URL")
    refused(cli("evidence", gid, "--db", f"sqlite:///{tmp_path / 'absent.db'}"), 2, "no Core")
    empty = f"sqlite:///{tmp_path / 'other-records.db'}"
    Records(empty).store.close()
    refused(cli("evidence", gid, "--db", shop.db, "--records", empty), 2, "no payment record")
    refused(cli("evidence", gid, "--db", shop.db, "--records", "mysql://x"), 2, "--records")
    absent = f"sqlite:///{tmp_path / 'absent-records.db'}"  # not "no Core database … --db"
    refused(cli("evidence", gid, "--db", shop.db, "--records", absent), 2, "no records database")


def test_a_refunded_payment_has_no_bundle_and_says_so(shop: Shop, buyer: TestBuyer) -> None:
    """A voided guarantee has no certificate: ``evidence`` answered exit 1 (an outage's code)
    with the Core's message. It is a refusal (exit 2) saying nothing was charged."""
    gid = shop.sell(buyer, 10_000)
    shop.core.void(gid, by=shop.seller)
    refused(cli("evidence", gid, "--db", shop.db), 2, "nothing was charged")


def test_records_kept_apart_from_the_core(shop: Shop, buyer: TestBuyer, tmp_path: Path) -> None:
    """A seller on a remote facilitator: its records are in their own database."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    apart = Records(url)
    gid = shop.sell(buyer, 10_000, records=apart)
    out = tmp_path / "bundle.json"
    refused(cli("evidence", gid, "--db", shop.db), 2, "no payment record")
    assert cli("evidence", gid, "--db", shop.db, "--records", url, "--out", str(out)).exit_code == 0
    assert (
        cli("dispute", "open", gid, "--note", "late", "--db", shop.db, "--records", url).exit_code
        == 0
    )
    verified = verify_bundle(out.read_bytes())
    assert verified.dispute is None
    apart.store.close()


# -- disputes -----------------------------------------------------------------------------------


def test_disputes_through_the_command_line(shop: Shop, buyer: TestBuyer, tmp_path: Path) -> None:
    gid = shop.sell(buyer, 10_000)
    db = ("--db", shop.db)
    refused(cli("dispute", "resolve", gid, "--note", "nothing to resolve", *db), 2, "not open")
    opened = cli("dispute", "open", gid, "--note", "empty response body", *db)
    assert opened.exit_code == 0, opened.output
    assert json.loads(opened.stdout)["state"] == "opened"
    refused(cli("dispute", "open", gid, "--note", "again", *db), 2, "already open")
    refused(cli("dispute", "open", gid, "--note", "  ", *db), 2, "note")
    # A byte that is not UTF-8 (a lone surrogate on the command line) or a NUL: a traceback
    # from the database driver, before.
    refused(cli("dispute", "open", gid, "--note", "caf\udce9", *db), 2, "not valid UTF-8")
    refused(cli("dispute", "open", gid, "--note", "a\x00b", *db), 2, "NUL")
    refused(cli("dispute", "open", "0x" + "cd" * 32, "--note", "x", *db), 2, "no guarantee")

    # The dashboard shows it, and the bundle carries it.
    assert '<span class="st st-opened">opened</span>' in render_dashboard(shop.core)
    data = build_bundle(shop.core, shop.records, gid)
    assert [e["state"] for e in content_of(data)["disputes"]] == ["opened"]
    assert verify_bundle(data).dispute == "opened"

    resolved = cli("dispute", "resolve", gid, "--note", "resent; buyer agrees", *db)
    assert resolved.exit_code == 0, resolved.output
    refused(cli("dispute", "resolve", gid, "--note", "twice", *db), 2, "not open")
    history = json.loads(cli("dispute", "history", gid, *db).stdout)
    assert history["state"] == "resolved"
    assert [(e["state"], e["note"]) for e in history["history"]] == [
        ("opened", "empty response body"),
        ("resolved", "resent; buyer agrees"),
    ]
    assert history["history"][0]["at"] <= history["history"][1]["at"]
    assert '<span class="st st-resolved">resolved</span>' in render_dashboard(shop.core)
    out = tmp_path / "bundle.json"
    assert cli("evidence", gid, *db, "--out", str(out)).exit_code == 0
    assert "dispute resolved" in cli("verify-evidence", str(out)).output

    def rewrite(c: dict[str, Any]) -> None:  # a history that never was: resolved, never opened
        c["disputes"] = c["disputes"][1:]

    assert failure(resealed(out.read_bytes(), rewrite)) == (
        "dispute history is not a valid sequence of states"
    )


def test_a_dispute_opened_with_the_id_in_capitals_is_the_same_dispute(
    shop: Shop, buyer: TestBuyer
) -> None:
    """The Python API took a guarantee id as given: one in capitals (pasted from a buyer's
    mail) opened a second dispute beside the open one, which no bundle, history or dashboard
    showed. Any case names the same guarantee; text that is no guarantee id is refused."""
    from fourmica_x402.evidence.disputes import DisputeError, Disputes

    gid = shop.sell(buyer, 10_000)
    disputes = Disputes(shop.records)
    disputes.open(gid, "empty response body")
    with pytest.raises(DisputeError) as info:
        disputes.open(gid.upper().replace("0X", "0x"), "again, in capitals")
    assert info.value.reason == "invalid_dispute_transition"
    disputes.resolve(gid.upper().replace("0X", "0x"), "resent")
    assert [e.state for e in disputes.history(gid)] == ["opened", "resolved"]
    assert disputes.state(gid.upper().replace("0X", "0x")) == "resolved"
    assert verify_bundle(build_bundle(shop.core, shop.records, gid)).dispute == "resolved"
    for bad in ("", "0x12", "not an id", gid + "00"):
        with pytest.raises(DisputeError) as info:
            disputes.open(bad, "x")
        assert info.value.reason == "unknown_guarantee"


def test_the_public_key_as_the_public_parameters_list_it(
    shop: Shop, bundle: bytes, tmp_path: Path
) -> None:
    """GET /core/public-params gives ``public_key`` as a JSON list of 48 numbers; pasted as
    such, the key was refused as bad hex."""
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle)
    listed = json.dumps(list(shop.core.operator.public_key))
    ok = cli("verify-evidence", str(path), "--public-key", listed)
    assert ok.exit_code == 0, ok.output
    stranger = json.dumps(list(Operator.generate()[0].public_key))
    refused(cli("verify-evidence", str(path), "--public-key", stranger), 1, "given public key")
    for bad in ("[1, 2", "[1, 2, 3]", '["a"]', "[" + "300," * 47 + "300]", "zz"):
        refused(
            cli("verify-evidence", str(path), "--public-key", bad),
            2,
            "--public-key",
            "not a BLS public key: 48 bytes of hex",  # the form it takes, not fromhex()'s words
        )
