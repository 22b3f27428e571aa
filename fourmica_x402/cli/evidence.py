"""Evidence and disputes (docs/operations.md, "Evidence and disputes"): ``evidence`` writes the
bundle of one paid request, ``verify-evidence`` checks one offline, ``dispute open|resolve|
history`` keeps a record's dispute states.

``--db`` is the Core's database; ``--records`` the seller's records (default: the Core's,
where an embedded seller keeps them). A refused input or an unknown guarantee is one
``Error: …`` line and exit 2; a bundle that fails verification is exit 1, naming the check.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import FourmicaError
from ._args import check_db, db_error, db_option, open_core, safe_url

__all__ = ["dispute", "evidence", "verify_evidence"]

_GID = re.compile(r"0x[0-9a-fA-F]{64}\Z")


class Refused(click.ClickException):
    """An input the command cannot work with: exit 2, like a bad argument."""

    exit_code = 2


records_option = click.option(
    "--records",
    default=None,
    metavar="URL",
    help="The seller's records database (default: the Core's, where an embedded seller "
    "keeps them; a seller on a remote facilitator keeps its own).",
)


def _guarantee_id(value: str) -> str:
    if not _GID.match(value):
        raise Refused(f"{value!r:.80} is not a guarantee id (0x and 64 hex digits)")
    return value.lower()


def _open(db: str, records_url: str | None) -> tuple[Any, Any]:
    """The Core in ``db`` and the records in ``records_url`` (default: ``db``); exit 2 when
    either cannot be opened."""
    from ..records import Records

    try:
        core = open_core(db)
    except click.ClickException as exc:
        raise Refused(exc.format_message()) from None
    if records_url is None or records_url == db:
        try:
            return core, Records(core.store)
        except FourmicaError as exc:  # its records' schema is newer than this release's
            raise Refused(db_error(exc, db).format_message()) from None
    try:
        check_db(records_url)
    except click.BadParameter as exc:
        raise Refused(exc.format_message().replace("'--db'", "'--records'")) from None
    path = records_url[10:] if records_url.startswith("sqlite:///") else ":memory:"
    if path != ":memory:" and not os.path.exists(path):
        where = os.path.abspath(path)
        raise Refused(
            f"no records database at {where} (--records {records_url}): point "
            "--records at the records database the seller's PaymentConfig(records=...) names"
        )
    try:
        return core, Records(records_url)
    except FourmicaError as exc:
        raise Refused(db_error(exc, records_url).format_message()) from None


def _checked(core: Any, records: Any, gid: str, db: str) -> None:
    """Refuse a guarantee the Core or the records do not know (exit 2)."""
    from ..errors import CoreError

    try:
        g = core.guarantee(gid)
    except CoreError as exc:
        if exc.reason == "unknown_guarantee":
            raise Refused(f"no guarantee {gid} in the Core at {safe_url(db)}") from None
        raise
    if records.for_guarantee(gid, hex(g.tab_id), hex(g.req_id)) is None:
        raise Refused(
            f"no payment record of {gid} in the records database (a seller on a remote "
            "facilitator keeps its records apart: give that database with --records)"
        )


@click.command()
@db_option
@records_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the bundle to this file (default: standard output).",
)
@click.argument("guarantee_id")
def evidence(db: str, records: str | None, out: Path | None, guarantee_id: str) -> None:
    """Write the evidence bundle of the paid request of GUARANTEE_ID (one JSON document).

    It holds the buyer's signed guarantee, the Core's certificate (made now if there is
    none yet), the seller's record and its history, and the dispute history; check it with
    `fourmica-x402 verify-evidence FILE`.
    """
    from ..evidence.bundle import EvidenceError, build_bundle

    gid = _guarantee_id(guarantee_id)
    core, book = _open(db, records)
    try:
        _checked(core, book, gid, db)
        data = build_bundle(core, book, gid)
    except EvidenceError as exc:
        raise Refused(exc.message) from None
    except FourmicaError as exc:
        if exc.reason == "guarantee_not_payable":  # voided or cancelled: nothing was charged
            raise Refused(f"{exc.message} (nothing was charged: no evidence to export)") from None
        raise db_error(exc, db) from None
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)  # the exact bytes: verification compares every one
        sys.stdout.buffer.flush()
        return
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise Refused(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out} ({len(data)} bytes)", err=True)


@click.command("verify-evidence")
@click.option(
    "--public-key",
    default=None,
    metavar="KEY",
    help="The Core's BLS public key you trust: 48 bytes of hex, or the JSON list of 48 numbers "
    "GET /core/public-params gives as public_key. The certificate must verify against it too.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def verify_evidence(public_key: str | None, file: Path) -> None:
    """Check an evidence bundle offline: exit 0 when every check passes, else exit 1 naming
    the first that failed."""
    from .._json import loads
    from ..client.certificates import public_key_bytes
    from ..evidence.verify import EvidenceInvalid, verify_bundle

    trusted = None
    if public_key is not None:
        try:
            given = public_key.strip()
            trusted = public_key_bytes(loads(given) if given.startswith("[") else given)
        except (ValueError, TypeError):
            raise click.BadParameter(
                "not a BLS public key: 48 bytes of hex, or the JSON list of 48 numbers "
                "/core/public-params gives as public_key",
                param_hint="'--public-key'",
            ) from None
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise Refused(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        verified = verify_bundle(data, trusted)
    except EvidenceInvalid as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(verified.summary())


@click.group()
def dispute() -> None:
    """Dispute states of a paid request: open one, resolve it, show its history."""


def _change(db: str, records: str | None, guarantee_id: str, note: str, state: str) -> None:
    from ..evidence.disputes import DisputeError, Disputes

    gid = _guarantee_id(guarantee_id)
    core, book = _open(db, records)
    try:
        _checked(core, book, gid, db)
        book_disputes = Disputes(book)
        entry = (
            book_disputes.open(gid, note) if state == "opened" else book_disputes.resolve(gid, note)
        )
    except DisputeError as exc:
        raise Refused(exc.message) from None
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    click.echo(json.dumps({"guarantee_id": gid, **entry.to_dict()}, indent=2))


_note = click.option("--note", required=True, help="What happened (kept in the history).")


@dispute.command("open")
@db_option
@records_option
@_note
@click.argument("guarantee_id")
def dispute_open(db: str, records: str | None, note: str, guarantee_id: str) -> None:
    """Open a dispute on the paid request of GUARANTEE_ID."""
    _change(db, records, guarantee_id, note, "opened")


@dispute.command("resolve")
@db_option
@records_option
@_note
@click.argument("guarantee_id")
def dispute_resolve(db: str, records: str | None, note: str, guarantee_id: str) -> None:
    """Resolve the open dispute of GUARANTEE_ID (refused when none is open)."""
    _change(db, records, guarantee_id, note, "resolved")


@dispute.command("history")
@db_option
@records_option
@click.argument("guarantee_id")
def dispute_history(db: str, records: str | None, guarantee_id: str) -> None:
    """Print the dispute history of GUARANTEE_ID as JSON, oldest first."""
    from ..evidence.disputes import Disputes

    gid = _guarantee_id(guarantee_id)
    core, book = _open(db, records)
    try:
        _checked(core, book, gid, db)
        entries = Disputes(book).history(gid)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    state = entries[-1].state if entries else None
    history = [e.to_dict() for e in entries]
    click.echo(json.dumps({"guarantee_id": gid, "state": state, "history": history}, indent=2))
