"""Generative fuzzing of the CLI (click's runner): every command that works on a database, a
file or a URL, with arguments drawn from edge values (amounts, addresses, durations, URLs,
files, database URLs). Oracle: a clean exit (0, or 1/2 with a message), never an exception
escaping click, never a traceback, never the private key given echoed back, and the Core's
``audit()`` clean after every run. Seeded; ``-m slow`` runs longer.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from fourmica_x402.cli import main
from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TEST_KEYS, TestBuyer

SEED = int(os.environ.get("FOURMICA_FUZZ_SEED", "402"))
KEY = TEST_KEYS[0]
ADDRESS = TestBuyer.from_key(KEY).address
AMOUNTS = [
    "1",
    "$1",
    "0",
    "-1",
    "$-1",
    "1e308",
    "NaN",
    "inf",
    "$0.0000001",
    str(2**256),
    "1" * 90,
    "$",
    "",
    "é",
    "0x10",
    "1.5",
    "$1,000",
    " 1 ",
    "1\x00",
]
ADDRESSES = [
    ADDRESS,
    ADDRESS.lower(),
    ADDRESS[2:],
    ADDRESS[:-1],
    "0x" + "0" * 40,
    "",
    "0xZZ",
    ADDRESS.upper(),
    "ˉ" * 42,
]
DURATIONS = ["1s", "0", "-1", "1e308", "NaN", "10x", "99999999999999d", "", "1h30m", "inf"]
URLS = [
    "http://127.0.0.1:9/x",
    "ftp://x/y",
    "http://[::1",
    "://",
    "http://%zz/",
    "x",
    "http://127.0.0.1:99999/",
    "http://user:pw@127.0.0.1:9/",
]
IDS = ["0x01", "0x" + "f" * 64, "0x" + "f" * 65, "nothex", "", "-1", "0X0A", str(2**70)]
INTS = ["0", "-1", "1", str(2**63), str(2**64), "x", "1.5"]
STRINGS = ["", "x", "é\x00", "a" * 5000, "--help", "GET /a=$1", "GET /a", "/a=$0", "$1"]


def _files(tmp: Path) -> list[str]:
    tmp.mkdir()
    (tmp / "empty").write_bytes(b"")
    (tmp / "binary").write_bytes(bytes(range(256)))
    (tmp / "json").write_text('{"a": [1, {"b": NaN}], "a": null}')
    (tmp / "deep").write_text("[" * 5000 + "]" * 5000)
    (tmp / "keyfile").write_text(KEY)
    return [str(tmp / n) for n in ("empty", "binary", "json", "deep", "keyfile", "missing")] + [
        str(tmp)
    ]


def _commands(rng: random.Random, db: str, files: list[str]) -> list[list[str]]:
    def c(*pool: str) -> str:  # the first value (a good one) half of the time
        return pool[0] if rng.random() < 0.5 else rng.choice(pool)

    dbs = [db] * 6 + [
        "sqlite:///:memory:",
        "mysql://x/y",
        files[-1],
        "/no/such/dir/x.db",
        files[1],
        "postgresql://nobody@127.0.0.1:1/x",
    ]
    d = ["--db", rng.choice(dbs)]
    return [
        ["deposit", *d, c(*ADDRESSES), c(*AMOUNTS)] + (["--create"] if rng.random() < 0.5 else []),
        ["deposit", *d, "--network", c(NETWORK, "eip155:1", "x", ""), ADDRESS, c(*AMOUNTS)],
        ["deposit", *d, "--asset", c(*ADDRESSES), ADDRESS, "1", "--create"],
        ["withdraw", *d, c(*ADDRESSES), c(*AMOUNTS)],
        ["withdraw", *d, "--finalize", c(*INTS)],
        ["withdraw", *d, "--cancel", c(*INTS)],
        ["withdraw", *d, ADDRESS, "1", "--withdrawal-grace", c(*DURATIONS)],
        ["cycle", "close", *d, "--cycle-window", c(*DURATIONS), "--finality", c(*DURATIONS)],
        ["cycle", "run", *d, "--once", "--interval", c(*DURATIONS)],
        ["positions", *d] + (["--json"] if rng.random() < 0.5 else []),
        ["factor", *d, c("0.5", *AMOUNTS, "2")],
        ["offers", c(*URLS), "--timeout", c("0.2", "0", "-1", "NaN", "x")],
        [
            "pay",
            c(*URLS),
            "--key",
            c(KEY, KEY[2:], "0x1234", ""),
            "--timeout",
            "0.2",
            "--max-price",
            c(*AMOUNTS),
        ],
        ["pay", "http://127.0.0.1:9/", "--key-file", c(*files), "--timeout", "0.2"],
        [
            "pay",
            "http://127.0.0.1:9/",
            "--key",
            KEY,
            "--method",
            c("GET", "", "G T", "\x00"),
            "--data",
            c(*STRINGS),
            "--receipts",
            c(*files),
            "--timeout",
            "0.2",
        ],
        ["key", "address", "--key", c(KEY, KEY.upper(), KEY[:-1], "", "0x" + "0" * 64)],
        ["key", "address", "--key-file", c(*files)],
        ["evidence", *d, c(*IDS), "--out", c(str(files[-1]) + "/out.json", *files)],
        ["verify-evidence", c(*files), "--public-key", c("", "0x", "0x" + "ab" * 48, "zz")],
        ["dispute", c("open", "resolve"), *d, c(*IDS), "--note", c(*STRINGS)],
        ["dispute", "history", *d, c(*IDS)],
        ["reprice", *d, c(*STRINGS)],
        ["reprice", *d, "--reset", c(*STRINGS)],
    ]


def _run(tmp_path: Path, rounds: int) -> None:
    rng = random.Random(f"{SEED}:cli")
    Core(str(tmp_path / "cli.db")).close()
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    files = _files(tmp_path / "files")
    env = {"FOURMICA_X402_DB": "", "FOURMICA_X402_KEY": "", "COLUMNS": "120"}
    for _ in range(rounds):
        args = rng.choice(_commands(rng, db, files))
        args = [a.replace("\x00", "") if rng.random() < 0.5 else a for a in args]
        try:
            result = CliRunner(env=env).invoke(main, args)
        except ValueError:  # click's runner cannot pass a NUL in an argument: no process can
            continue
        what = (args, result.exit_code, result.output[-600:])
        assert result.exit_code in (0, 1, 2), what
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            *what,
            repr(result.exception),
        )
        assert "Traceback" not in result.output, what
        assert KEY[2:].lower() not in result.output.lower(), ("the key was echoed", what)
    core = Core(str(tmp_path / "cli.db"))
    try:
        assert core.audit() == []
    finally:
        core.close()


def test_fuzzed_cli_arguments_fail_cleanly(tmp_path: Path) -> None:
    _run(tmp_path, rounds=60)


@pytest.mark.slow
def test_fuzzed_cli_arguments_at_length(tmp_path: Path) -> None:
    _run(tmp_path, rounds=800)
