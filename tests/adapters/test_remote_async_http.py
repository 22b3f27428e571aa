"""``HttpFacilitator``'s async calls on their own connection pool (asyncio streams under
httpcore), against real loopback sockets: keep-alive, a server that closes idle connections,
several event loops, retries, timeouts and refused connections."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fourmica_x402.errors import Unavailable
from fourmica_x402.facilitator import HttpFacilitator

SELLER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
KINDS = {"kinds": [{"scheme": "4mica-credit", "network": "eip155:84532"}]}

Answer = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, str], bytes] | None]]


class Server:
    """A tiny HTTP/1.1 server on 127.0.0.1: ``answer(request)`` gives (status, headers, body),
    or None to say nothing; ``close_after`` closes each connection after that many answers."""

    def __init__(self, answer: Answer, close_after: int | None = None) -> None:
        self.answer, self.close_after = answer, close_after
        self.requests: list[dict[str, Any]] = []
        self.connections = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")
                headers = {}
                for field in fields:
                    if field:
                        key, _, value = field.partition(":")
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method, target, _ = line.split(" ")
                request = {"method": method, "path": target, "headers": headers, "body": body}
                self.requests.append(request)
                answer = await self.answer(request)
                if answer is None:
                    await asyncio.sleep(30)  # says nothing; the client times out first
                    return
                status, extra, content = answer
                out = [f"HTTP/1.1 {status} X", f"content-length: {len(content)}"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + content)
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    return  # closes without a "connection: close" header
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return  # the client left, or the test's loop is ending
        finally:
            writer.close()


async def _kinds(request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return 200, {"content-type": "application/json"}, json.dumps(KINDS).encode()


def _busy_first(retry_after: str | None) -> Answer:
    """Answers 503 once (with ``retry_after``, if any), then the kinds."""
    busy = iter([(503, {} if retry_after is None else {"retry-after": retry_after}, b"{}")])

    async def answer(request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        return next(busy, None) or await _kinds(request)

    return answer


def test_keep_alive_and_what_each_call_sends() -> None:
    async def run() -> None:
        server = Server(_kinds)
        async with server as url:
            facilitator = HttpFacilitator(url, headers={"Authorization": "Bearer t0ken"})
            for _ in range(3):
                assert await facilitator.asupported() == KINDS["kinds"]
            await facilitator.avoid("0x01", by=SELLER)
            await facilitator.aclose()
        assert server.connections == 1  # one kept-alive connection for four calls
        get, *_, post = server.requests
        assert (get["method"], get["path"], get["body"]) == ("GET", "/supported", b"")
        assert get["headers"]["authorization"] == "Bearer t0ken"
        assert get["headers"]["user-agent"].startswith("fourmica-x402/")
        assert (post["method"], post["path"]) == ("POST", "/guarantees/0x01/void")
        assert post["headers"]["content-type"] == "application/json"
        assert json.loads(post["body"]) == {"by": SELLER}

    asyncio.run(run())


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    """The server closes each connection after one answer, without saying so: the pool must
    see the end of file on the idle connection and open a new one, not fail the next call."""

    async def run() -> None:
        server = Server(_kinds, close_after=1)
        async with server as url:
            facilitator = HttpFacilitator(url, retries=0)
            for _ in range(3):
                assert await facilitator.asupported() == KINDS["kinds"]
                await asyncio.sleep(0.05)  # the server's close reaches the client
            await facilitator.aclose()
        assert server.connections == 3

    asyncio.run(run())


def test_calls_from_another_event_loop_get_their_own_connections() -> None:
    server = Server(_kinds)
    facilitator: HttpFacilitator | None = None

    async def call() -> list[dict[str, Any]]:
        assert facilitator is not None
        return await facilitator.asupported()

    async def run() -> None:
        nonlocal facilitator
        async with server as url:
            facilitator = HttpFacilitator(url)
            assert await call() == KINDS["kinds"]
            # A second loop in another thread, as a test client or a portal would run one.
            result = await asyncio.to_thread(asyncio.run, call())
            assert result == KINDS["kinds"]
            assert await call() == KINDS["kinds"]
            await facilitator.aclose()

    asyncio.run(run())
    assert server.connections == 3  # a pool per loop: the first loop's again after the second


@pytest.mark.parametrize("retry_after", ["0", "\u00b2"], ids=["digits", "garbled"])
def test_a_busy_answer_is_retried_after_its_retry_after(retry_after: str) -> None:
    """A garbled Retry-After ("²" passes str.isdigit) falls back to the backoff."""

    async def run() -> None:
        server = Server(_busy_first(retry_after))
        async with server as url:
            facilitator = HttpFacilitator(url, backoff=0.0)
            assert await facilitator.asupported() == KINDS["kinds"]
            assert len(server.requests) == 2
            server.requests.clear()
            server.answer = _busy_first(None)
            with pytest.raises(Unavailable) as caught:  # state-changing: sent once
                await facilitator.avoid("0x01", by=SELLER)
            assert caught.value.maybe_applied  # a 5xx may follow a commit
            assert len(server.requests) == 1
            await facilitator.aclose()

    asyncio.run(run())


def test_a_refused_connection_was_never_applied() -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens on that port now
        facilitator = HttpFacilitator(f"http://127.0.0.1:{port}", retries=0)
        with pytest.raises(Unavailable) as caught:
            await facilitator.avoid("0x01", by=SELLER)
        assert caught.value.maybe_applied is False
        await facilitator.aclose()

    asyncio.run(run())


def test_a_silent_server_times_out_and_may_have_applied_the_call() -> None:
    async def silent(request: dict[str, Any]) -> None:
        return None

    async def run() -> None:
        async with Server(silent) as url:
            facilitator = HttpFacilitator(url, timeout=0.2, retries=0)
            with pytest.raises(Unavailable) as caught:
                await facilitator.avoid("0x01", by=SELLER)
            assert caught.value.maybe_applied is True
            await facilitator.aclose()

    asyncio.run(run())


def test_an_answer_that_is_not_json_is_unavailable() -> None:
    async def html(request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        return 200, {"content-type": "text/html"}, b"<html>gateway</html>"

    async def run() -> None:
        async with Server(html) as url:
            facilitator = HttpFacilitator(url, retries=0)
            with pytest.raises(Unavailable, match="without JSON"):
                await facilitator.asupported()
            await facilitator.aclose()

    asyncio.run(run())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for a throwaway cert")
def test_https_with_a_certificate_the_environment_trusts(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS on the same streams: the handshake, the call, keep-alive; and an untrusted
    certificate refused as a connection that never carried the call."""
    import ssl
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    make = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    make += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
    make += ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    subprocess.run(make, check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def run() -> None:
        server = Server(_kinds)
        listening = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=context)
        url = f"https://localhost:{listening.sockets[0].getsockname()[1]}"
        try:
            untrusted = HttpFacilitator(url, retries=0)
            with pytest.raises(Unavailable) as caught:
                await untrusted.asupported()
            assert caught.value.maybe_applied is False
            await untrusted.aclose()
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            facilitator = HttpFacilitator(url)
            for _ in range(2):
                assert await facilitator.asupported() == KINDS["kinds"]
            await facilitator.aclose()
        finally:
            listening.close()
        assert server.connections == 1  # one kept-alive connection (the refused one never got here)

    asyncio.run(run())


def test_a_proxy_the_environment_names_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY/HTTPS_PROXY (and NO_PROXY) are honoured, as httpx's client honours them:
    the call goes to the proxy, which sees the facilitator's absolute URL."""

    async def run() -> None:
        proxy = Server(_kinds)
        async with proxy as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            facilitator = HttpFacilitator("http://facilitator.invalid:4021", retries=0)
            assert await facilitator.asupported() == KINDS["kinds"]
            await facilitator.aclose()
            monkeypatch.setenv("NO_PROXY", "facilitator.invalid")
            direct = HttpFacilitator("http://facilitator.invalid:4021", retries=0)
            with pytest.raises(Unavailable):  # not through the proxy: the name does not resolve
                await direct.asupported()
            await direct.aclose()
        [request] = proxy.requests
        assert request["path"] == "http://facilitator.invalid:4021/supported"

    asyncio.run(run())


def test_many_calls_in_flight_are_not_held_to_a_small_pool() -> None:
    """httpcore's default pool is 10 connections; each paid request waits on its /settle."""
    in_flight = peak = 0

    async def slow(request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.3)
        in_flight -= 1
        return await _kinds(request)

    async def run() -> None:
        async with Server(slow) as url:
            facilitator = HttpFacilitator(url)
            await asyncio.gather(*(facilitator.asupported() for _ in range(30)))
            await facilitator.aclose()

    asyncio.run(run())
    assert peak == 30


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_credentials_in_the_url_and_an_ipv6_host_are_sent_as_httpx_sends_them() -> None:
    server = Server(_kinds)

    async def run() -> None:
        listening = await asyncio.start_server(server._serve, "::1", 0)
        port = listening.sockets[0].getsockname()[1]
        try:
            facilitator = HttpFacilitator(f"http://seller:s3cret@[::1]:{port}/fac")
            assert await facilitator.asupported() == KINDS["kinds"]
            await facilitator.aclose()
        finally:
            listening.close()

    asyncio.run(run())
    [request] = server.requests
    assert request["path"] == "/fac/supported"
    assert request["headers"]["host"] == f"[::1]:{request['headers']['host'].rsplit(':', 1)[1]}"
    assert request["headers"]["authorization"] == "Basic c2VsbGVyOnMzY3JldA=="  # seller:s3cret


def test_bytes_nobody_asked_for_on_an_idle_connection_are_never_taken_for_an_answer() -> None:
    """A server that writes a stray response on an idle kept-alive connection: the next call
    must go out on a new connection and get its own answer, not the stray one."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await reader.readuntil(b"\r\n\r\n")
            answer = json.dumps(KINDS).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(answer) + answer)
            await writer.drain()
            await asyncio.sleep(0.02)  # the answer was read; the connection is idle in the pool
            stray = b'{"kinds": [{"scheme": "stray"}]}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(stray) + stray)
            await writer.drain()
            await asyncio.sleep(5)  # and keeps the connection open
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def run() -> None:
        listening = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        try:
            facilitator = HttpFacilitator(url, retries=0)
            for _ in range(2):
                assert await facilitator.asupported() == KINDS["kinds"]
                await asyncio.sleep(0.3)  # the stray bytes arrive while the connection idles
            await facilitator.aclose()
        finally:
            listening.close()

    asyncio.run(run())
    assert len(connections) == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", None),
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", float("nan")),
        ("timeout", float("inf")),
        ("timeout", "10"),
        ("timeout", True),
        ("retries", -1),
        ("retries", 1.5),
        ("retries", None),
        ("backoff", -0.1),
        ("backoff", float("nan")),
        ("backoff", None),
    ],
)
def test_a_timeout_retries_or_backoff_that_is_no_number_is_refused_when_made(
    option: str, value: Any
) -> None:
    """``timeout=None`` (httpx's "no timeout") was taken, then every sync call raised
    TypeError: a Flask seller's tab endpoint answered 500, each payment 503. ``retries=-1``
    made no attempt and reached an "unreachable" AssertionError (docs/operations.md)."""
    with pytest.raises(ValueError, match=f"^{option} must be a"):
        HttpFacilitator("http://127.0.0.1:9", **{option: value})
    HttpFacilitator("http://127.0.0.1:9", timeout=1, retries=0, backoff=0).close()
