"""uvicorn's httptools protocol with the two bounds it lacks: the request head's size and time.

httptools (llhttp) puts no limit on the request line or the header fields, and uvicorn
keeps them in memory until the head ends, so one endless header grows the edge without
bound. Nor does uvicorn time out a connection that never finishes its head (it times
out only the idle gap between requests). This protocol answers

- 431 once a request head exceeds `max_head_bytes` (request line and header fields),
- 408 once a head has not ended `head_timeout_s` after the connection opened or the
  head began,

and closes the connection. Everything else is uvicorn's.

Sizes: `on_headers_complete` checks the exact size of every head that ends. A head
still arriving is measured by whole chunks read while it is open, so at most
`max_head_bytes` plus one chunk (asyncio reads up to 256 KiB) is held before the 431.
"""

import asyncio
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import metrics

# After a refusal, how long and how much the edge keeps reading (and dropping) before it
# closes, so that the client reads the answer rather than a connection reset.
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` bounded by the class attributes; see `bounded_protocol`."""

    max_head_bytes: ClassVar[int] = 64 * 1024
    head_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the first request's head is awaited from the start
        self._head_began_in_chunk = False
        self._head_bytes = 0  # bytes of the open head read in earlier chunks
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingered = 0  # bytes dropped since the refusal

    # The connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._discard(len(data))
            return
        self._head_began_in_chunk = False
        super().data_received(data)
        if self._refused or not self._in_head or self.transport.is_closing():
            return
        if self._head_began_in_chunk:
            return  # part of this chunk may be the previous request's: not counted
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, "too_large", self._too_large_message())

    # Parser callbacks: nothing more is handled once a request is refused.

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_head = True
        self._head_began_in_chunk = True
        self._head_bytes = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._disarm_head_timer()
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size > self.max_head_bytes:
            self._refuse(431, "too_large", self._too_large_message())
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    # The bounds

    def _too_large_message(self) -> str:
        return f"request line and headers exceed the limit of {self.max_head_bytes} bytes"

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused and not self.transport.is_closing():
            message = f"request head not received within {self.head_timeout_s:g} s"
            self._refuse(408, "timeout", message)

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer `status` with the gateway's JSON error body and close the connection.

        Closing a socket with unread bytes makes the kernel reset the connection, and a
        client still writing may lose the answer: so the edge first shuts its side for
        writing and reads on, dropping what comes, for up to `LINGER_S` or
        `LINGER_BYTES`, as web servers do.
        """
        self._refused = True
        self._disarm_head_timer()
        metrics.HTTP_REFUSED_HEADS.labels(reason).inc()
        body = orjson.dumps({"error": message})
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, phrase, len(body), body)
        )
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)

    def _discard(self, size: int) -> None:
        self._lingered += size
        if self._lingered > LINGER_BYTES:
            self.transport.close()


def bounded_protocol(max_head_bytes: int, head_timeout_s: float) -> type[HttpToolsProtocol]:
    """A `BoundedHttpToolsProtocol` class with these bounds, for uvicorn's `http` option."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )
