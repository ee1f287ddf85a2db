"""A minimal HTTP/1.1 client over asyncio streams, for the fuzzer: keep-alive
connections, any bytes as target and body, no checks of its own.

httpx spends about a millisecond of CPU per request, which on two shared cores made
the client, not the edge, the bottleneck; this sends a request in one write and parses
only what a reply needs (status, Content-Length or chunked, Connection: close).
"""

import asyncio
from collections.abc import Sequence

from pulse.errors import PulseError

CHUNK = 65_536


class HttpClientError(PulseError):
    """The connection failed or the reply was not HTTP."""


class _ClosedError(HttpClientError):
    """The server had closed the connection before the request (an idle one)."""


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawHttpClient:
    """Requests to one `host:port`, over idle connections kept for reuse."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._idle: list[Connection] = []

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        chunked: bool = False,
    ) -> tuple[int, bytes]:
        """The reply's status and body. A reply sent before the whole body was written
        (a 413 that stops reading) still counts; a lost connection raises. An idle
        connection the server closed meanwhile is replaced, the request sent again."""
        if self._idle:
            try:
                return await self._send(self._idle.pop(), method, target, headers, body, chunked)
            except _ClosedError:
                pass
        conn = await self._connect()
        return await self._send(conn, method, target, headers, body, chunked)

    async def _send(  # noqa: PLR0917
        self,
        conn: Connection,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        chunked: bool,
    ) -> tuple[int, bytes]:
        reader, writer = conn
        head = [f"{method} {target} HTTP/1.1", f"host: {self._host}:{self._port}"]
        head += [f"{name}: {value}" for name, value in headers]
        if chunked:
            head.append("transfer-encoding: chunked")
            chunks = (body[at : at + CHUNK] for at in range(0, len(body), CHUNK))
            payload = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        else:
            head.append(f"content-length: {len(body)}")
            payload = body
        keep = True
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            try:
                await writer.drain()
            except ConnectionError:
                keep = False  # the server stopped reading: its reply may be there
            status, reply, close = await _read_reply(reader, method == "HEAD")
        except _ClosedError:
            writer.close()
            raise
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            raise HttpClientError(f"{type(exc).__name__}: {exc}") from exc
        if keep and not close:
            self._idle.append(conn)
        else:
            writer.close()
        return status, reply

    async def _connect(self) -> Connection:
        try:
            return await asyncio.open_connection(self._host, self._port)
        except OSError as exc:
            raise HttpClientError(f"connect: {exc}") from exc

    async def aclose(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_reply(reader: asyncio.StreamReader, head_only: bool) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closes the connection)."""
    status_line = await reader.readline()
    if not status_line:
        raise _ClosedError("the server closed the connection")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP reply: {status_line[:100]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = close = False
    while (line := await reader.readline()) not in {b"\r\n", b"\n", b""}:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if head_only or status in {204, 304}:
        return status, b"", close
    if chunked:
        body = bytearray()
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size + 2)
            del body[-2:]
        while (await reader.readline()) not in {b"\r\n", b"\n", b""}:
            pass  # trailers
        return status, bytes(body), close
    if length is None:
        return status, await reader.read(), True  # until the server closes
    return status, await reader.readexactly(length), close
