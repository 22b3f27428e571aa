"""What P4, P5 and P7 share: the source checkout, servers started and stopped on loopback, a small
keep-alive load generator, a process's CPU clock, payments for a 402 challenge.

Every server listens on 127.0.0.1 only and is stopped when its measurement ends; every loop
is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CONCURRENCY",
    "EXAMPLE",
    "OFFICIAL_SELLER",
    "ROOT",
    "WARMUP",
    "ServerFailed",
    "Skipped",
    "cpu_seconds",
    "free_port",
    "load",
    "load_all_ok",
    "needs_servers",
    "payments",
    "progress",
    "quiet_cpu",
    "request",
    "serving",
]

CONCURRENCY = 16
#: Requests before each measurement: imports, caches and connections settle first.
WARMUP = 30
#: The source checkout (examples/, tests/interop/scripts/): the parent of adapters/ in a work
#: tree, or FOURMICA_X402_SOURCE when the package is installed elsewhere (tox, a wheel).
ROOT = Path(os.environ.get("FOURMICA_X402_SOURCE") or Path(__file__).resolve().parents[2])
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


def load_all_ok(port: int, requests: Sequence[bytes], what: str) -> float:
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


def quiet_cpu(pid: int, limit: float = 10.0) -> float:
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


def needs_servers() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise Skipped(
            'needs FastAPI and uvicorn: pip install "fourmica-x402[fastapi,server]"'
        ) from None


def payments(core: Any, buyer: Any, challenge: Any, count: int) -> list[tuple[str, str]]:
    """``count`` payments for the offer in ``challenge`` (a 402 response), signed now."""
    from fourmica_x402.bench.in_process import payment_headers

    header = challenge.headers.get("payment-required")
    if challenge.status_code != 402 or not header:
        raise RuntimeError(
            f"expected a 402 challenge, got {challenge.status_code}: {challenge.text[:300]}"
        )
    return payment_headers(core, buyer, header, count)
