"""The async side of ``HttpFacilitator``: httpcore's connection pool on asyncio's own streams.

A seller on a remote facilitator makes one ``/settle`` call per paid request, on the event loop
that serves the request, so this call's CPU is the seller's. Measured on loopback with 16
requests in flight (docs/architecture.md, "A remote facilitator"), httpx's ``AsyncClient``
spends about 1.2 ms of CPU a call. Most of it is layering around httpcore, plus anyio's
socket attributes, which httpcore rebuilds (with a ``getpeername`` system call) for every
idle pooled connection on every request. httpcore's pool driven directly, over the asyncio
streams below, spends about 0.45 ms for the same call. httpcore keeps the HTTP/1.1 work
(h11, keep-alive, the pool and its limits); this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import select
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpcore
import httpx

__all__ = ["AsyncioBackend", "JsonPool"]

#: What httpcore raises when a call fails on the network or in HTTP itself.
ERRORS: tuple[type[Exception], ...] = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)
#: Of those, the ones that prove the request never reached the server.
NOT_SENT: tuple[type[Exception], ...] = (
    httpcore.ConnectError,
    httpcore.ConnectTimeout,
    httpcore.PoolTimeout,
)


def _readable(sock: socket.socket | None) -> bool:
    """Whether the socket has something to read right now (or is gone)."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("read timed out") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("write timed out") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from None

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpcore.ConnectError(str(exc)) from None
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of idle pooled connections only: the loop has already read what came (an
            # end of file, or bytes nobody asked for, which would pass for the next answer).
            reader = self._reader
            stray = bool(getattr(reader, "_buffer", b""))  # where CPython's reader keeps them
            return (
                reader.at_eof()
                or stray
                or reader.exception() is not None
                or _readable(self._socket)
            )
        if info == "socket":
            return self._socket
        return self._writer.get_extra_info(
            {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
        )

    @property
    def _socket(self) -> socket.socket | None:
        sock: socket.socket | None = self._writer.get_extra_info("socket")
        return sock


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio streams (the loop's own transports)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        sock = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {path} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        return _Stream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class JsonPool:
    """Keep-alive JSON calls to one server, on an event loop: ``(status, headers, body)``."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        from .. import __version__

        url = httpx.URL(base_url)  # as httpx reads it: IDNA, IPv6 brackets, userinfo
        self._origin = (url.raw_scheme, url.raw_host, url.port)
        self._prefix = url.raw_path.rstrip(b"/")
        named = {"host": url.netloc.decode("ascii"), "user-agent": f"fourmica-x402/{__version__}"}
        if url.username or url.password:  # credentials in the URL: basic auth, as httpx sends
            pair = f"{url.username}:{url.password}".encode()
            named["authorization"] = "Basic " + base64.b64encode(pair).decode()
        named.update((k.lower(), v) for k, v in headers.items())
        self._headers = [(k.encode(), v.encode()) for k, v in named.items()]
        self._timeouts = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)}
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        read: Callable[[AsyncIterator[bytes]], Awaitable[bytes]],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``read(chunks)``: the answer's body from its chunks (it may refuse a long one)."""
        headers = [*self._headers, (b"accept", b"application/json")]
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        scheme, host, port = self._origin
        target = self._prefix + quote(path, safe="/:@!$&'()*+,;=%").encode("ascii")
        url = httpcore.URL(scheme=scheme, host=host, port=port, target=target)
        async with self._pool.stream(
            method, url, headers=headers, content=body, extensions=self._timeouts
        ) as response:
            content = await read(response.aiter_stream())
        return response.status, response.headers, content

    async def aclose(self) -> None:
        await self._pool.aclose()
