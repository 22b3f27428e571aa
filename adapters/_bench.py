"""The HTTP benchmarks that need real servers and web frameworks: P5 and P7.

:mod:`fourmica_x402.bench` imports this module lazily, only when one of them runs, so the
core package never imports a web framework; the framework imports here happen inside the
functions too (the servers run them in their own processes).

- P7: server CPU per paid request over server CPU per free request, the FastAPI example
  (``examples/fastapi_seller.py``) under uvicorn, its embedded SQLite Core.
- P5: paid requests per second of our FastAPI gate (embedded Core; and ``HttpFacilitator``
  on ``fourmica-x402 serve --sandbox``) against the official ``4mica-x402`` FastAPI
  middleware on that same ``serve``, with the same client, concurrency and count. The
  official packages run in a scratch virtualenv of their own, the one the interop tests
  (tests/interop/test_official.py) build and cache: their import name ``fourmica_x402``
  is ours too.

Every server listens on 127.0.0.1 only and is stopped when its measurement ends; every
loop is bounded. Payments are signed before the clock starts: the client's signing is not
what these measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Skipped", "bench_cpu_per_request", "bench_vs_official", "p5_app"]

#: Requests in flight at once, for every load in this module (as P4).
CONCURRENCY = 16
#: Requests before each measurement: imports, caches and connections settle first.
WARMUP = 30
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fastapi_seller.py"
OFFICIAL_SELLER = ROOT / "tests" / "interop" / "scripts" / "official_seller.py"


class Skipped(Exception):
    """This machine cannot run the benchmark; ``str(exc)`` says why, in one line."""


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries the table or the JSON)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- servers and load on loopback --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerFailed(RuntimeError):
    """A server did not come up; the message ends with its log."""


@contextlib.contextmanager
def serving(
    name: str,
    args: list[str],
    ready_url: str,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, answering ``ready_url`` (any status below 500), stopped afterwards."""
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(ready_url, timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise ServerFailed(f"{name} did not start: {' | '.join(tail) or 'no output'}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def request(port: int, path: str, header: tuple[str, str] | None = None) -> bytes:
    """A raw HTTP/1.1 keep-alive GET, ready to send."""
    extra = f"{header[0]}: {header[1]}\r\n" if header else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server closes the connection) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value
        elif key == b"connection":
            close = value == b"close"
    body = b""
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            body += (await reader.readexactly(size + 2))[:-2]
    elif length:
        body = await reader.readexactly(length)
    return status, body, close


def load(
    port: int, requests: Sequence[bytes], concurrency: int = CONCURRENCY
) -> tuple[float, list[int], bytes]:
    """Send every request over ``concurrency`` keep-alive connections.

    Returns the seconds it took, every status, and the body of one answer that was not a
    200 (empty when all were).

    A small asyncio client, the same for every server measured: a few µs of its own per
    request, so the servers, not the client, set the pace.
    """

    async def run() -> tuple[float, list[int], bytes]:
        statuses = [0] * len(requests)
        refused = [b""]
        queue = iter(range(len(requests)))

        async def worker() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for i in queue:
                    writer.write(requests[i])
                    statuses[i], body, close = await asyncio.wait_for(_read_response(reader), 60)
                    if statuses[i] != 200:
                        refused[0] = body
                    if close:
                        writer.close()
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
            finally:
                writer.close()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
        return time.perf_counter() - start, statuses, refused[0]

    return asyncio.run(run())


def _load_all_ok(port: int, requests: Sequence[bytes], what: str) -> float:
    """``load``, every answer a 200; the seconds it took."""
    elapsed, statuses, refused = load(port, requests)
    bad = sorted({s for s in statuses if s != 200})
    if bad:
        raise RuntimeError(
            f"{what}: {sum(s != 200 for s in statuses)} of {len(requests)} requests answered "
            f"{bad}, not 200; one said: {refused[:300].decode(errors='replace')}"
        )
    return elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``, all its threads, dead ones included (Linux).

    The kernel's per-process CPU clock (ns resolution) when it can be read, else
    ``/proc/<pid>/stat`` (clock ticks).
    """
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9  # CPUCLOCK_SCHED of the process
    except (OSError, AttributeError, OverflowError):
        pass
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _quiet_cpu(pid: int, limit: float = 10.0) -> float:
    """The server's CPU time once it is idle: work after the responses (the certificates,
    the delivery scores) counts too. Idle = under 1 ms of CPU in 100 ms."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - last < 1e-3:
            return now
        last = now
    return last


def _needs_servers() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise Skipped(
            'needs FastAPI and uvicorn: pip install "fourmica-x402[fastapi,server]"'
        ) from None


def _cpu_clock_problem() -> str | None:
    try:
        cpu_seconds(os.getpid())
    except (OSError, ValueError, IndexError) as exc:
        return f"cannot read a process's CPU time on this system ({sys.platform}): {exc}"
    return None


def _payments(core: Any, buyer: Any, challenge: Any, count: int) -> list[tuple[str, str]]:
    """``count`` payments for the offer in ``challenge`` (a 402 response), signed now."""
    from fourmica_x402.bench import _headers

    header = challenge.headers.get("payment-required")
    if challenge.status_code != 402 or not header:
        raise RuntimeError(
            f"expected a 402 challenge, got {challenge.status_code}: {challenge.text[:300]}"
        )
    return _headers(core, buyer, header, count)


# -- P7: CPU per paid request over CPU per free request ---------------------------------------


def bench_cpu_per_request(quick: bool) -> Any:
    """P7: the example FastAPI seller's CPU µs per paid request / per free request."""
    import httpx

    from fourmica_x402.bench import Result
    from fourmica_x402.core import Core
    from fourmica_x402.testing import NETWORK, TestBuyer

    problem = _cpu_clock_problem()
    if problem:
        raise Skipped(problem)
    if not EXAMPLE.exists():
        raise Skipped(f"needs the source tree: {EXAMPLE} not found")
    _needs_servers()
    count = 300 if quick else 3_000
    with tempfile.TemporaryDirectory(prefix="fourmica-bench-p7-") as tmp:
        db = f"sqlite:///{tmp}/p7.db"
        core = Core(db)
        buyer, seller = TestBuyer.new(), TestBuyer.new().address
        core.deposit(buyer.address, 10**15, network=NETWORK)
        port = free_port()
        args = [sys.executable, "-m", "uvicorn", "fastapi_seller:app", "--app-dir"]
        args += [str(EXAMPLE.parent), "--host", "127.0.0.1", "--port", str(port)]
        args += ["--log-level", "warning", "--no-access-log"]
        env = {**os.environ, "FOURMICA_X402_DB": db, "PAY_TO": seller}
        base = f"http://127.0.0.1:{port}"
        progress(f"P7: the FastAPI example under uvicorn, {count} free then {count} paid requests")
        try:
            with serving(
                "the FastAPI example", args, f"{base}/free", Path(tmp) / "seller.log", env
            ) as proc:
                challenge = httpx.get(f"{base}/premium", timeout=30)
                headers = _payments(core, buyer, challenge, count + WARMUP)
                free = [request(port, "/free")] * count
                paid = [request(port, "/premium", h) for h in headers]
                _load_all_ok(port, free[:WARMUP] + paid[:WARMUP], "P7 warm-up")
                start = _quiet_cpu(proc.pid)
                _load_all_ok(port, free, "P7 free")
                middle = _quiet_cpu(proc.pid)
                _load_all_ok(port, paid[WARMUP:], "P7 paid")
                end = _quiet_cpu(proc.pid)
            assert core.audit() == []
        finally:
            core.close()
    free_us = (middle - start) / count * 1e6
    paid_us = (end - middle) / count * 1e6
    ratio = paid_us / free_us
    return Result(
        id="P7",
        title="server CPU per paid request / per free request, FastAPI example, uvicorn",
        unit="µs CPU",
        ours=paid_us,
        baseline=free_us,
        baseline_name="GET /free on the same server",
        target="≤ 1.5",
        met=ratio <= 1.5,
        notes={
            "requests": count,
            "concurrency": CONCURRENCY,
            "paid_minus_free_us": paid_us - free_us,
        },
    )


# -- P5: our gate vs the official middleware, paid req/s --------------------------------------

#: The official packages and what the official seller needs, exactly as the interop tests pin
#: them (tests/interop/test_official.py), so both use one cached virtualenv.
PINS = ("x402==2.20.0", "4mica-x402==1.2.3", "sdk-4mica==1.2.10")
DEPS = ("requests>=2.32", "fastapi>=0.115", "uvicorn>=0.29", "eth-account>=0.13")
VENV_ENV = "FOURMICA_INTEROP_VENV"
PIP_TIMEOUT = 600
_CHECK = (
    "import importlib.metadata as m, fastapi, requests, uvicorn, x402, fourmica_sdk;"
    "from fourmica_x402.client_scheme import FourMicaEvmScheme;"
    "from fourmica_x402.http import fastapi_payment_middleware_from_config;"
    "print(m.version('x402'), m.version('4mica-x402'), m.version('sdk-4mica'))"
)


def _python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def official_env() -> dict[str, str]:
    """The environment of every official process: no 4MICA_* overrides, nothing of ours."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if not k.startswith("4MICA_") and k not in drop}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1,localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def _check_venv(python: Path) -> str | None:
    """None when the virtualenv has the pinned official packages; else what is wrong."""
    if not python.exists():
        return f"{python} does not exist"
    try:
        out = subprocess.run(
            [str(python), "-I", "-c", _CHECK],
            capture_output=True,
            text=True,
            timeout=120,
            env=official_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run: {exc}"
    want = " ".join(pin.split("==")[1] for pin in PINS)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return f"{python} lacks the official packages: {lines[-1] if lines else out.returncode}"
    if out.stdout.strip() != want:
        return f"{python} has x402/4mica-x402/sdk-4mica {out.stdout.strip()}, want {want}"
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fourmica-x402-interop"


def _build_venv(target: Path) -> None:
    """python -m venv + pip install of the pins; raises CalledProcessError/TimeoutExpired."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "venv", str(target)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    env = {k: v for k, v in official_env().items() if k not in ("NO_PROXY", "no_proxy")}
    for key in ("NO_PROXY", "no_proxy"):  # keep the user's proxy settings for PyPI
        if key in os.environ:
            env[key] = os.environ[key]
    subprocess.run(
        [
            str(_python_in(target)),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--timeout",
            "60",
            *PINS,
            *DEPS,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        env=env,
    )


def official_python(*, build: bool = True) -> Path:
    """The Python of a virtualenv with the pinned official packages, built once if needed.

    ``$FOURMICA_INTEROP_VENV`` when set, else the interop tests' cache under
    ``~/.cache/fourmica-x402-interop/`` (built there from PyPI unless ``build`` is false).
    Raises :class:`Skipped` when there is none.
    """
    given = os.environ.get(VENV_ENV)
    if given:
        python = _python_in(Path(given))
        problem = _check_venv(python)
        if problem:
            raise Skipped(f"{VENV_ENV}={given}: {problem}")
        return python
    key = hashlib.sha256(
        "\n".join([*PINS, *DEPS, f"py{sys.version_info[0]}.{sys.version_info[1]}"]).encode()
    ).hexdigest()[:16]
    root = _cache_root()
    venv = root / key
    python, done = _python_in(venv), venv / ".fourmica-interop-complete"
    if not build:
        if done.exists() and _check_venv(python) is None:
            return python
        raise Skipped(f"the official packages are not installed in {venv}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{key}.lock", "w")  # noqa: SIM115 — held for the whole build
    except OSError as exc:
        raise Skipped(f"cannot use the official packages' cache {root}: {exc}") from None
    with lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (the interop tests too)
        except ImportError:
            pass
        if done.exists() and _check_venv(python) is None:
            return python
        progress(f"P5: installing {' '.join(PINS)} into {venv} (once; may take minutes)")
        try:
            _build_venv(venv)
        except subprocess.TimeoutExpired:
            shutil.rmtree(venv, ignore_errors=True)
            raise Skipped(
                f"pip install of the official packages took over {PIP_TIMEOUT} s; "
                f"set {VENV_ENV} to a ready virtualenv"
            ) from None
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            lines = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
            detail = [line for line in lines if line.startswith("ERROR")] or lines
            raise Skipped(
                "could not install the official packages (PyPI reachable?): "
                f"{' | '.join(detail[-2:])[:300]}; or set {VENV_ENV}"
            ) from None
        problem = _check_venv(python)
        if problem:
            raise Skipped(f"the official packages' virtualenv is broken: {problem}")
        done.write_text("\n".join([*PINS, *DEPS]) + "\n")
        return python


def p5_app() -> Any:
    """Factory of our P5 seller: FastAPI, ``GET /premium`` ($0.01 via ``Paid``), ``GET /health``.

    The same two routes and handler as the official seller (tests/interop/scripts/
    official_seller.py). Env: PAY_TO, and FOURMICA_BENCH_DB (the embedded Core) or
    FOURMICA_BENCH_FACILITATOR (a ``serve`` URL) with FOURMICA_BENCH_RECORDS.
    """
    from fastapi import FastAPI

    from fourmica_x402.config import PaymentConfig
    from fourmica_x402.gate import Payment

    from .fastapi import FourmicaX402, Paid

    common: dict[str, Any] = {"pay_to": os.environ["PAY_TO"], "network": "eip155:84532"}
    if os.environ.get("FOURMICA_BENCH_FACILITATOR"):
        from fourmica_x402.facilitator import HttpFacilitator

        config = PaymentConfig(
            facilitator=HttpFacilitator(os.environ["FOURMICA_BENCH_FACILITATOR"], timeout=30.0),
            records=os.environ["FOURMICA_BENCH_RECORDS"],
            **common,
        )
    else:
        config = PaymentConfig(core=os.environ["FOURMICA_BENCH_DB"], **common)
    app = FastAPI()
    FourmicaX402(app, config)

    @app.get("/premium")
    def premium(payment: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
        return {"premium": "the good stuff"}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _paid_rate(
    name: str,
    port: int,
    args: list[str],
    env: dict[str, str],
    core: Any,
    buyer: Any,
    count: int,
    tmp: Path,
    others: Sequence[int] = (),
) -> float:
    """Paid req/s of the seller ``args`` start on ``port``: its 402 read, ``count`` payments
    signed on ``core`` (the Core that seller's tabs live in), then sent.

    Every 200 must have left a guarantee in ``core``: each seller really settled each payment.
    The clock starts once this seller and the processes ``others`` are idle (the facilitator
    may still be certifying the previous seller's guarantees).
    """
    import httpx

    base = f"http://127.0.0.1:{port}"
    progress(f"P5: {name}, {count} paid requests")
    before = _guarantee_count(core, buyer.address)
    with serving(name, args, f"{base}/health", tmp / f"seller-{port}.log", env) as proc:
        challenge = httpx.get(f"{base}/premium", timeout=30)
        headers = _payments(core, buyer, challenge, count + WARMUP)
        paid = [request(port, "/premium", h) for h in headers]
        _load_all_ok(port, paid[:WARMUP], f"P5 {name} warm-up")
        for pid in (proc.pid, *others):
            _quiet_cpu(pid)
        rate = count / _load_all_ok(port, paid[WARMUP:], f"P5 {name}")
    settled = _guarantee_count(core, buyer.address) - before
    if settled != count + WARMUP:
        raise RuntimeError(f"P5 {name}: {count + WARMUP} payments answered 200, {settled} settled")
    return rate


def _guarantee_count(core: Any, address: str) -> int:
    return len(core.guarantees(address=address, limit=1_000_000))


def bench_vs_official(quick: bool) -> list[Any]:
    """P5: paid req/s of our FastAPI gate, embedded and remote, vs the official middleware."""
    from fourmica_x402.bench import Result
    from fourmica_x402.core import Core
    from fourmica_x402.testing import NETWORK, TestBuyer

    if not OFFICIAL_SELLER.exists():
        raise Skipped(f"needs the source tree: {OFFICIAL_SELLER} not found")
    _needs_servers()
    python = official_python()
    count = 200 if quick else 2_000
    with tempfile.TemporaryDirectory(prefix="fourmica-bench-p5-") as name:
        tmp = Path(name)
        buyer, pay_to = TestBuyer.new(), TestBuyer.new().address
        served, embedded = f"sqlite:///{tmp}/serve.db", f"sqlite:///{tmp}/embedded.db"
        serve_core, own_core = Core(served), Core(embedded)
        try:
            for core in (serve_core, own_core):
                core.deposit(buyer.address, 10**15, network=NETWORK)
            f_port = free_port()
            facilitator = f"http://127.0.0.1:{f_port}"
            serve = [sys.executable, "-m", "fourmica_x402", "serve", "--db", served]
            serve += ["--port", str(f_port), "--sandbox"]
            progress(f"P5: fourmica-x402 serve --sandbox on {facilitator}")
            with serving(
                "fourmica-x402 serve", serve, f"{facilitator}/health", tmp / "serve.log"
            ) as server:
                port = free_port()
                official = [str(python), "-I", str(OFFICIAL_SELLER), str(port), facilitator, pay_to]
                try:
                    theirs = _paid_rate(
                        "the official seller",
                        port,
                        official,
                        official_env(),
                        serve_core,
                        buyer,
                        count,
                        tmp,
                        [server.pid],
                    )
                except ServerFailed as exc:
                    raise Skipped(str(exc)[:400]) from None
                app = "fourmica_x402.adapters._bench:p5_app"
                ours_args = [sys.executable, "-m", "uvicorn", app, "--factory"]
                ours_args += ["--host", "127.0.0.1", "--log-level", "warning", "--port"]
                env = {**os.environ, "PAY_TO": pay_to}
                port = free_port()
                local = _paid_rate(
                    "our gate (embedded Core)",
                    port,
                    [*ours_args, str(port)],
                    {**env, "FOURMICA_BENCH_DB": embedded},
                    own_core,
                    buyer,
                    count,
                    tmp,
                    [server.pid],
                )
                port = free_port()
                remote_env = {
                    **env,
                    "FOURMICA_BENCH_FACILITATOR": facilitator,
                    "FOURMICA_BENCH_RECORDS": f"sqlite:///{tmp}/records.db",
                }
                remote = _paid_rate(
                    "our gate (HttpFacilitator)",
                    port,
                    [*ours_args, str(port)],
                    remote_env,
                    serve_core,
                    buyer,
                    count,
                    tmp,
                    [server.pid],
                )
            assert own_core.audit() == [] and serve_core.audit() == []
        finally:
            serve_core.close()
            own_core.close()
    notes = {"requests": count, "concurrency": CONCURRENCY, "official": " ".join(PINS[:2])}
    shared = "the official 4mica-x402 FastAPI middleware on the same serve"
    return [
        Result(
            id="P5-embedded",
            title="paid req/s, our FastAPI gate on its embedded Core",
            unit="req/s",
            ours=local,
            baseline=theirs,
            baseline_name=shared,
            target="≥ 6×",
            met=local >= 6 * theirs,
            notes=notes,
        ),
        Result(
            id="P5-remote",
            title="paid req/s, our FastAPI gate, HttpFacilitator → serve",
            unit="req/s",
            ours=remote,
            baseline=theirs,
            baseline_name=shared,
            target="≥ 1.5×",
            met=remote >= 1.5 * theirs,
            notes=notes,
        ),
    ]
