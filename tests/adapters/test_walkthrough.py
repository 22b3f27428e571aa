"""The newcomer's five minutes (README.md, "Five minutes: sell and buy on one machine"):
``examples/walkthrough.sh`` runs as written, the README shows its commands, and the CLI
commands it uses (``key new``, ``key address``, ``deposit`` into the seller's database,
``pay``'s receipt and hint) behave as the README says. Real subprocesses, real SQLite files,
real sockets, no mocks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from click.testing import CliRunner, Result

from fourmica_x402 import PaymentConfig
from fourmica_x402.cli import main
from fourmica_x402.core import Core
from fourmica_x402.guarantee import address_of
from fourmica_x402.testing import NETWORK, TEST_KEYS, TestBuyer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "walkthrough.sh"
README = ROOT / "README.md"
SECTION = "## Five minutes: sell and buy on one machine"
KEY = TEST_KEYS[0]  # a throwaway test key
CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in ("FOURMICA_X402_DB", "FOURMICA_X402_KEY", "FOURMICA_X402", "PYTHON", "PORT")
}
EXPORT = re.compile(r"export FOURMICA_X402_KEY=(0x[0-9a-f]{64})  # TEST key, sandbox only")


def cli(*args: str) -> Result:
    return CliRunner(env={**CLEAN_ENV, "COLUMNS": "200"}).invoke(main, list(args))


def _program() -> str:
    """This environment's ``fourmica-x402`` console script (the one the README's .venv has)."""
    return str(Path(sysconfig.get_path("scripts")) / "fourmica-x402")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_error(result: Result, code: int) -> str:
    """A clean refusal: exit ``code``, no traceback, one ``Error:`` line, last (returned)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


# -- the README and the script say the same thing -----------------------------------------------


def _script_steps() -> list[str]:
    """The steps of the script: the one line of each ``step <<'EOF'`` … ``EOF``."""
    lines = SCRIPT.read_text().splitlines()
    steps = []
    for i, line in enumerate(lines):
        if line.strip() == "step <<'EOF'":
            assert lines[i + 2] == "EOF", f"a step is one line: {lines[i + 1 : i + 3]}"
            steps.append(lines[i + 1])
    return steps


def _readme_commands() -> list[str]:
    """The lines of the first code block of the README's walkthrough section."""
    text = README.read_text()
    assert text.count(SECTION) == 1, SECTION
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```[a-z]*\n(.*?)^```$", section, re.S | re.M)
    assert block is not None, "the walkthrough section has no code block"
    return block.group(1).splitlines()


def test_the_readme_shows_the_scripts_commands() -> None:
    steps = _script_steps()
    assert len(steps) == 6  # where, then the five steps
    assert _readme_commands() == steps
    section = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    assert "`bash examples/walkthrough.sh` runs them all" in section
    # The README names the .venv programs; the script runs $FOURMICA_X402 and $PYTHON for
    # them, which default to those very programs.
    text = SCRIPT.read_text()
    assert "FOURMICA_X402=${FOURMICA_X402:-.venv/bin/fourmica-x402}\n" in text
    assert "PYTHON=${PYTHON:-.venv/bin/python}\n" in text
    for step in steps:
        for program in re.findall(r"[\w./-]*bin/[\w.-]+", step):
            assert program in (".venv/bin/fourmica-x402", ".venv/bin/python"), step
    assert "127.0.0.1" in text and "0.0.0.0" not in text and "localhost" not in text


# -- the script, run as written --------------------------------------------------------------


def _outputs(stdout: str) -> dict[str, str]:
    """What each echoed step (``$ command``) printed on standard output, by command, without
    the seller's access log (uvicorn's ``INFO:`` lines share the terminal)."""
    ours = "".join(line for line in stdout.splitlines(True) if not line.startswith("INFO:"))
    parts = re.split(r"^\$ (.*)$", ours, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.slow
def _scratch(tmp_path: Path, environment_missing: Callable[[str], NoReturn]) -> str:
    """The repository's layout in ``tmp_path``, so the default database (in the working
    directory) lands there; the bash that runs the walkthrough."""
    bash = shutil.which("bash")
    if bash is None:
        environment_missing("the walkthrough is a bash script and there is no bash")
    (tmp_path / "examples").mkdir()
    for name in ("walkthrough.sh", "starlette_seller.py"):
        shutil.copy(ROOT / "examples" / name, tmp_path / "examples" / name)
    return bash


def _walkthrough(
    bash: str, tmp_path: Path, port: int, timeout: float, **env: str
) -> subprocess.CompletedProcess[str]:
    """``examples/walkthrough.sh`` run in ``tmp_path`` with the seller on ``port``."""
    environ = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    environ |= {"PORT": str(port), "FOURMICA_X402": _program(), "PYTHON": sys.executable, **env}
    return subprocess.run(
        [bash, "examples/walkthrough.sh"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_walkthrough_runs_as_written(
    tmp_path: Path, environment_missing: Callable[[str], NoReturn]
) -> None:
    bash = _scratch(tmp_path, environment_missing)
    port = _free_port()
    # COLUMNS: positions prints one block per position, easy to read here
    done = _walkthrough(bash, tmp_path, port, timeout=180, COLUMNS="60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    outputs = _outputs(done.stdout)
    assert list(outputs) == _readme_commands()  # each step echoed as the README writes it

    # key new: labelled as a test key on the terminal, the key itself only eval'd
    label = re.search(r"^# address: (0x[0-9a-fA-F]{40})$", done.stderr, re.M)
    assert label is not None and "throwaway TEST key" in done.stderr, done.stderr
    buyer = label.group(1)
    steps = list(outputs.values())
    assert steps[2].strip() == ""  # eval ran the export line; nothing else was printed
    assert "FOURMICA_X402_KEY=" not in done.stdout + done.stderr

    deposited = json.loads(steps[3])
    assert deposited["address"] == buyer and deposited["collateral"] == 1_000_000

    paid = json.loads(steps[4])
    assert paid["status"] == 200, paid
    assert paid["receipt"]["outcome"] == "paid" and paid["receipt"]["payer"] == buyer
    assert paid["body"]["payer"] == buyer  # the seller saw the same payer

    shown = steps[5]
    assert "positions (sqlite:///fourmica_x402.db)" in shown
    block = shown.split(buyer, 1)[1]
    assert re.search(r"^  collateral +\$1\.00$", block, re.M), shown
    assert re.search(r"^  locked +\$0\.01$", block, re.M), shown

    # The deposit went into the seller's database, the default one in its working directory.
    core = Core(f"sqlite:///{tmp_path / 'fourmica_x402.db'}")
    try:
        (position,) = [p for p in core.positions() if p.address == buyer]
        assert (position.collateral, position.locked) == (1_000_000, 10_000)
    finally:
        core.close()
    with socket.socket() as probe:  # and the seller was stopped
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_walkthrough_refuses_a_taken_port(
    tmp_path: Path, environment_missing: Callable[[str], NoReturn]
) -> None:
    """Another server on PORT answered for the seller (which failed to bind): the deposit
    went into a database nobody served, and pay failed with insufficient_collateral."""
    bash = _scratch(tmp_path, environment_missing)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _walkthrough(bash, tmp_path, taken.getsockname()[1], timeout=60)
    assert done.returncode == 1 and "is taken" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "fourmica_x402.db").exists()  # nothing was deposited anywhere


# -- key new, key address ------------------------------------------------------------------


def test_key_new_prints_a_labelled_test_key_a_shell_can_eval(tmp_path: Path) -> None:
    made = cli("key", "new")
    assert made.exit_code == 0, made.output
    (line,) = made.stdout.splitlines()
    match = EXPORT.fullmatch(line)
    assert match is not None, line
    address = address_of(match.group(1))
    assert made.stderr.splitlines() == [
        "# a throwaway TEST key for sandbox use: never send real funds to its address",
        f"# address: {address}",
    ]
    again = EXPORT.fullmatch(cli("key", "new").stdout.strip())
    assert again is not None and again.group(1) != match.group(1)  # fresh every time

    as_json = json.loads(cli("key", "new", "--json").stdout)
    assert set(as_json) == {"private_key", "address", "note"} and "TEST" in as_json["note"]
    assert address_of(as_json["private_key"]) == as_json["address"]

    # What the README does with it, in a real shell: eval, then `key address`.
    program = _program()
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    shell = subprocess.run(
        ["bash", "-c", f'eval "$("{program}" key new)"; "{program}" key address'],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert shell.returncode == 0, shell.stderr
    label = re.search(r"^# address: (0x[0-9a-fA-F]{40})$", shell.stderr, re.M)
    assert label is not None and shell.stdout == f"{label.group(1)}\n"


def test_key_address_never_prints_the_key() -> None:
    address = TestBuyer.from_key(KEY).address
    shown = cli("key", "address", "--key", KEY)
    assert shown.exit_code == 0 and shown.output == f"{address}\n", shown.output
    from_env = CliRunner(env={**CLEAN_ENV, "FOURMICA_X402_KEY": KEY}).invoke(
        main, ["key", "address"]
    )
    assert from_env.exit_code == 0 and from_env.output == f"{address}\n"
    assert "'--key'" in _one_error(cli("key", "address"), 2)
    line = _one_error(cli("key", "address", "--key", "0x" + "0" * 64), 2)
    assert "not a valid secp256k1 private key" in line and "0" * 64 not in line


# -- the buyer's Core is the seller's ------------------------------------------------------


ADDRESS = "0x" + "11" * 20
CORE_COMMANDS = {
    "deposit": ["deposit", ADDRESS, "$1"],
    "withdraw": ["withdraw", ADDRESS, "$1"],
    "positions": ["positions"],
    "cycle close": ["cycle", "close"],
    "cycle run": ["cycle", "run", "--once"],
}


@pytest.mark.parametrize("name", sorted(CORE_COMMANDS))
def test_core_commands_refuse_a_database_that_is_not_there(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "elsewhere" / "fourmica_x402.db"
    missing.parent.mkdir()
    line = _one_error(cli(*CORE_COMMANDS[name], "--db", f"sqlite:///{missing}"), 1)
    assert f"no Core database at {missing} (--db sqlite:///{missing})" in line, line
    assert "the seller's database" in line and "FOURMICA_X402_DB" in line
    assert ("--create" in line) == (name == "deposit"), line
    assert list(missing.parent.iterdir()) == []  # no second, empty Core was made


def test_the_default_database_is_looked_for_in_this_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the newcomer did: ran deposit from another directory than the seller's.
    monkeypatch.chdir(tmp_path)
    line = _one_error(cli("deposit", ADDRESS, "$1"), 1)
    expected = tmp_path / "fourmica_x402.db"
    assert f"no Core database at {expected} " in line, line
    assert "(--db sqlite:///fourmica_x402.db, relative to this directory)" in line, line
    assert not expected.exists()


def test_deposit_create_makes_the_database(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'new.db'}"
    made = cli("deposit", "--create", "--db", db, ADDRESS, "$2")
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["collateral"] == 2_000_000
    rows = json.loads(cli("positions", "--db", db, "--json").output)
    assert [(r["address"], r["collateral"]) for r in rows] == [(ADDRESS, 2_000_000)]
    again = cli("deposit", "--create", "--db", db, ADDRESS, "$1")  # an existing one is kept
    assert json.loads(again.output)["collateral"] == 3_000_000


@contextlib.contextmanager
def _seller(db: str) -> Iterator[str]:
    """A WSGI seller (the repository's WSGI middleware) on loopback, priced at $0.01."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"premium": true}']

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    config = PaymentConfig(pay_to="0x" + "22" * 20, routes={"GET /premium": "$0.01"}, core=db)
    server = make_server("127.0.0.1", 0, PaymentMiddleware(app, config=config), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/premium"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_pay_without_collateral_names_the_payer_and_the_deposit(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'seller.db'}"
    payer = TestBuyer.from_key(KEY).address
    with _seller(db) as url:
        refused = cli("pay", url, "--key", KEY, "--max-price", "$0.05")
        assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
        out = json.loads(refused.stdout)
        assert out["paid"] is False and out["error"] == "insufficient_collateral", out
        assert out["payer"] == payer and out["receipt"]["payer"] == payer
        hint = out["hint"]
        assert f"fourmica-x402 deposit --db <the seller's database URL> {payer} '$0.01'" in hint
        assert "FOURMICA_X402_DB" in hint, hint

        # Following the hint: deposit into the seller's database, and the same call pays.
        assert cli("deposit", "--db", db, payer, "$0.01").exit_code == 0
        paid = cli("pay", url, "--key", KEY, "--max-price", "$0.05")
        assert paid.exit_code == 0, paid.output
        receipt = json.loads(paid.stdout)["receipt"]
        assert receipt["outcome"] == "paid" and receipt["payer"] == payer
        assert list(receipt)[:4] == ["outcome", "url", "seller", "payer"]
    core = Core(db)
    try:
        (position,) = core.positions()
        assert (position.address, position.network) == (payer, NETWORK)
        assert (position.collateral, position.locked) == (10_000, 10_000)
    finally:
        core.close()
