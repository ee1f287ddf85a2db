"""The gateway's request-head bounds (size 431, time 408), over raw sockets."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import metrics
from ingest.gateway import GatewayServer, bind

MAX_HEAD = 4096
TIMEOUT_S = 0.5


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(orjson.dumps({"body": len(body), "headers": len(request.headers)}))


@asynccontextmanager
async def serving() -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    server = GatewayServer(
        app, bind("127.0.0.1", 0), max_head_bytes=MAX_HEAD, head_timeout_s=TIMEOUT_S
    )
    server.start()
    await asyncio.sleep(0.05)
    try:
        yield server.port
    finally:
        await server.stop()


def run(test: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving() as port:
            await test(port)

    asyncio.run(main())


def request(body: bytes = b"", headers: dict[str, str] | None = None, path: str = "/echo") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: edge", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await asyncio.wait_for(reader.readexactly(length), 5)


def refused(reason: str) -> float:
    return metrics.HTTP_REFUSED_HEADS.labels(reason)._value.get()


def test_a_head_within_the_limit_and_a_large_body_in_the_same_write_are_served() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        headers = {f"x-h{n}": "v" * 90 for n in range(30)}  # ~3 KiB of head
        body = b"b" * (1 << 20)  # in one write with the head: not counted as head
        writer.write(request(body, headers))
        status, reply = await response(reader)
        assert (status, orjson.loads(reply)["body"]) == (200, len(body))
        writer.write(request(b"again"))  # the connection stays open for the next request
        status, reply = await response(reader)
        assert (status, orjson.loads(reply)["body"]) == (200, 5)
        writer.close()

    run(test)


def test_a_complete_head_over_the_limit_is_answered_431_and_closed() -> None:
    async def test(port: int) -> None:
        before = refused("too_large")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(b"{}", {f"x-h{n}": "v" * 90 for n in range(50)}))  # ~5 KiB
        status, reply = await response(reader)
        assert status == 431
        assert orjson.loads(reply) == {
            "error": f"request line and headers exceed the limit of {MAX_HEAD} bytes"
        }
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        assert refused("too_large") == before + 1
        writer.close()

    run(test)


def test_a_long_request_line_counts_as_head() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(path="/echo?" + "q" * MAX_HEAD))
        assert (await response(reader))[0] == 431
        writer.close()

    run(test)


def test_an_endless_header_is_cut_off_after_the_limit_and_one_chunk() -> None:
    async def test(port: int) -> None:
        before = refused("too_large")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: edge\r\nx-endless: ")
        answer = asyncio.create_task(response(reader))
        sent = 0
        chunk = b"a" * 1024
        while not answer.done() and sent < 64 << 20:  # the edge answers long before
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)
        # The edge reads on after its answer, so the client gets it rather than a reset.
        status, _ = await answer
        assert status == 431
        assert sent < 4 << 20, sent
        assert refused("too_large") == before + 1
        writer.close()

    run(test)


def test_a_head_that_does_not_end_in_time_is_answered_408() -> None:
    async def test(port: int) -> None:
        before = refused("timeout")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: edge\r\n")  # and nothing more
        status, reply = await response(reader)
        assert status == 408
        assert orjson.loads(reply) == {"error": f"request head not received within {TIMEOUT_S:g} s"}
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

        # A connection that never sends a byte is closed the same way.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await response(reader))[0] == 408
        assert refused("timeout") == before + 2
        writer.close()

    run(test)


def test_the_time_bound_is_for_the_head_only_not_for_a_slow_body_or_an_idle_gap() -> None:
    async def test(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(b"x" * 10)[:-5])  # head complete, half the body
        await asyncio.sleep(TIMEOUT_S * 2)
        writer.write(b"xxxxx")
        status, reply = await response(reader)
        assert (status, orjson.loads(reply)["body"]) == (200, 10)
        await asyncio.sleep(TIMEOUT_S / 2)  # idle between requests: uvicorn's keep-alive
        writer.write(request(b"y"))
        assert (await response(reader))[0] == 200
        writer.close()

    run(test)
