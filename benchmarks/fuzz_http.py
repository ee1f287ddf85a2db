"""Mutated HTTP requests for the edge's REST/JSON gateway, deterministic from the seed.

`add_http_makers(fuzzer)` adds four routes to a `MessageFuzzer`, each call one request
(one message, its body) with its `HttpRequest`:
- `POST /v1/events json` and `POST /v1/events ndjson`: a JSON array, or NDJSON lines, of
  valid events, events with hostile values of the right JSON types (they decode; the
  edge rejects them one by one with a reason) and marker events; often with a *breaker*:
  a wrong type, an unknown field, a raw token (NaN, 1e999, integers beyond int64, lone
  surrogates, deep nesting) or an element that is no object in a fuzz event, which fails
  the whole body (400: its markers must not reach Kafka); or text-level mutations (bit
  flips, truncation, inserted, deleted and spliced bytes, invalid UTF-8, a BOM, trailing
  garbage) of a body without markers, as a flipped byte could forge one. Also wrong or
  missing content types (415), the other body format under either type, bodies just
  under and over the size limit, chunked bodies, and more events than the limit (413);
- `GET /v1/metrics`: query strings from a valid query with hostile values, extreme and
  non-integer bounds, unknown resolutions, dimension filters with odd names, unknown,
  repeated and missing parameters, then often mutated as text (invalid and truncated
  percent escapes, invalid UTF-8 escaped, raw bytes escaped);
- `HTTP other`: the probes, the OpenAPI document, unknown paths and wrong methods.
"""

import math
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson

from .fuzz_messages import (
    GROUP_BYS,
    INVALID_UTF8,
    VALUES,
    Call,
    HttpRequest,
    MessageFuzzer,
)

POST_JSON = "POST /v1/events json"
POST_NDJSON = "POST /v1/events ndjson"
GET_METRICS = "GET /v1/metrics"
HTTP_OTHER = "HTTP other"
HTTP_INGEST_ROUTES = frozenset({POST_JSON, POST_NDJSON})
HTTP_ROUTES = (POST_JSON, POST_NDJSON, GET_METRICS, HTTP_OTHER)

JSON_TYPES = ("application/json", "application/json; charset=utf-8", "Application/JSON")
NDJSON_TYPES = ("application/x-ndjson", "application/x-ndjson; charset=utf-8")
WRONG_TYPES = (
    None,
    "",
    ";",
    "text/plain",
    "application/xml",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json-seq",
    "application/grpc",
    "*/*",
    "application/json\x7f",
)
# Raw JSON tokens that no field takes: non-JSON numbers, numbers beyond int64 or a
# double, lone surrogates, other types, deep nesting (beyond the decoder's depth limit).
RAW_TOKENS = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e400",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"1" + b"0" * 400,
    b"1.0",
    b"-0.0",
    b"01",
    b"0x10",
    b"1E2",
    b"true",
    b"null",
    b"[]",
    b"{}",
    b'"1"',
    b'"\\ud800"',
    b'"\\udc00x"',
    b'"\\u0000"',
    b"[" * 100 + b"]" * 100,
    b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 1100 + b"1" + b"}" * 1100,
    b"'single'",
    b'"unterminated',
)
WRONG_VALUES: tuple[object, ...] = (None, True, False, 1, -1, 1.5, "x", "", [], {}, [1], {"a": 1})
QUERY_BOUNDS = (
    "",
    "1.5",
    "1e3",
    "+1",
    "0x10",
    "-",
    " 1",
    "1 ",
    "\u0661",  # an Arabic-Indic digit
    "9999999999999999999",
    "99999999999999999999",
    "-9223372036854775808",
    "9223372036854775807",
    "-9223372036854775809",
)
RESOLUTION_NAMES = ("minute", "hour", "day", "MINUTE", "Day", "", "week", "0", "1", "minute ")
QUERY_ESCAPES = (b"%", b"%G1", b"%zz", b"%FF", b"%C3%28", b"%ED%A0%80", b"%00", b"%F4%90%80%80")
FINITE_VALUES = tuple(v for v in VALUES if math.isfinite(v))  # NaN, inf: no JSON
SENTINEL = "\x00raw\x00"  # a field value replaced by a raw token in the JSON text
SENTINEL_JSON = orjson.dumps(SENTINEL)
MANY_DIMENSIONS = tuple({f"d{i}": f"v{i}" for i in range(n)} for n in (31, 32, 33, 500))
OTHER_REQUESTS = (
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("HEAD", "/healthz"),
    ("GET", "/"),
    ("GET", "/v1"),
    ("GET", "/v1/events"),
    ("PUT", "/v1/events"),
    ("DELETE", "/v1/events"),
    ("OPTIONS", "/v1/events"),
    ("PATCH", "/v1/metrics"),
    ("POST", "/v1/metrics"),
    ("POST", "/healthz"),
    ("GET", "/v1/events/x"),
    ("GET", "/v1/metrics/"),
    ("GET", "//v1/events"),
    ("GET", "/%2e%2e/%2e%2e/etc/passwd"),
    ("GET", "/v1/%00"),
    ("GET", "/v1/%FF%FE"),
    ("GET", "/" + "a" * 4000),
    ("GET", "/openapi.json?x=1"),
    ("POST", "/v2/events"),
)
MAX_TARGET_CHARS = 60_000
_UNPRINTABLE = re.compile(rb"[^\x21\x22\x24-\x7e]")


def _escape_target(data: bytes) -> str:
    """`data` as a request target: bytes outside printable ASCII (and #) %-escaped, so
    the client sends it as it is (malformed escapes in it stay malformed)."""
    return _UNPRINTABLE.sub(lambda m: b"%%%02X" % m[0][0], data).decode()


class HttpFuzz:
    """The HTTP makers over a `MessageFuzzer`: its rng, hostile strings and markers."""

    def __init__(self, fuzzer: MessageFuzzer) -> None:
        self.f = fuzzer
        self.rng = fuzzer.rng
        self.plan = fuzzer.plan

    # -- events as JSON ---------------------------------------------------------------

    def valid_event(self) -> dict[str, Any]:
        """Fuzz material: a valid event of a fuzz campaign (never the marker campaign)."""
        rng = self.rng
        return {
            "campaign_id": f"fz-{rng.randrange(20)}",
            "event_type": rng.choice(("impression", "click", "conversion")),
            "event_id": f"fz-{rng.randrange(10**9)}",
            "timestamp": self.plan.now_ms - rng.randrange(600_000),
            "value": rng.randrange(400) / 8,
            "dimensions": {"user_id": f"u{rng.randrange(1000)}", "country": "DE"},
        }

    def text(self) -> str:
        return self.f.string().decode()

    def hostile_event(self) -> dict[str, Any]:
        """A valid event with one to three values made hostile, of the right JSON types."""
        rng = self.rng
        event = self.valid_event()
        for _ in range(rng.randint(1, 3)):
            pick = rng.randrange(8)
            if pick <= 2:
                event[("campaign_id", "event_type", "event_id")[pick]] = self.text()
            elif pick == 3:
                event["timestamp"] = rng.choice(self.f.timestamps)
            elif pick == 4:
                event["value"] = rng.choice(FINITE_VALUES)
            elif pick == 5:
                event.setdefault("dimensions", {})[self.text()] = self.text()
            elif pick == 6:
                event["dimensions"] = dict(rng.choice(MANY_DIMENSIONS))
            else:
                for name in rng.sample(sorted(event), rng.randint(0, len(event))):
                    del event[name]  # absent fields are the proto defaults
        return event

    def _material(self, markers: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Zero to 30 events: valid, hostile and (one in ten) markers, listed in `markers`."""
        rng = self.rng
        events = []
        for _ in range(rng.choice((0, 1, 2, 3, 5, 10, 30))):
            roll = rng.random()
            if roll < 0.1:
                fields = self.f.marker_fields()
                markers.append((fields["event_id"], self.f.marker_from(fields)))
                events.append(fields)
            elif roll < 0.3:
                events.append(self.valid_event())
            else:
                events.append(self.hostile_event())
        return events

    def _break_event(self, events: list[Any], markers: list[tuple[str, bytes]]) -> None:
        """Make one fuzz event (never a marker) fail the whole body."""
        rng = self.rng
        marker_ids = {i for i, _ in markers}
        spots = [i for i, e in enumerate(events) if e.get("event_id") not in marker_ids]
        if not spots:
            events.append(self.valid_event())
            spots = [len(events) - 1]
        at = rng.choice(spots)
        event = events[at]
        pick = rng.randrange(5)
        if pick == 0:
            event[rng.choice(sorted(event) or ["value"])] = rng.choice(WRONG_VALUES)
        elif pick == 1:
            event[rng.choice(("unknown", "Campaign_id", "campaignId", "", "dimensions "))] = 1
        elif pick == 2:
            event.setdefault("dimensions", {})["country"] = rng.choice(WRONG_VALUES)
        elif pick == 3:
            event[rng.choice(("timestamp", "value", "campaign_id", "dimensions"))] = SENTINEL
        else:
            events[at] = rng.choice(WRONG_VALUES[:9])

    def _mutate_text(self, data: bytes) -> bytes:  # noqa: PLR0912 (one branch per mutation)
        """One to three text-level mutations; the result is usually malformed JSON."""
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            n = len(data)
            pick = rng.randrange(10)
            if pick == 0 and n:  # bit flips
                out = bytearray(data)
                for _ in range(rng.randint(1, 8)):
                    out[rng.randrange(n)] ^= 1 << rng.randrange(8)
                data = bytes(out)
            elif pick == 1:  # inserted bytes
                at = rng.randrange(n + 1)
                data = data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
            elif pick == 2 and n:  # deleted bytes
                at = rng.randrange(n)
                data = data[:at] + data[at + rng.randint(1, 16) :]
            elif pick == 3 and n:  # truncated
                data = data[: rng.randrange(n)]
            elif pick == 4:  # invalid UTF-8, often inside a string
                at = rng.randrange(n + 1)
                if rng.random() < 0.7:  # just after the next quote: inside a string or a key
                    at = data.find(b'"', at) + 1
                data = data[:at] + rng.choice(INVALID_UTF8) + data[at:]
            elif pick == 5 and n:  # a structural character replaced
                at = rng.randrange(n)
                data = data[:at] + bytes([rng.choice(b'{}[]:,"\\ ')]) + data[at + 1 :]
            elif pick == 6:  # a byte order mark, leading or trailing garbage
                data = rng.choice((b"\xef\xbb\xbf" + data, data + b" x", b"//c\n" + data))
            elif pick == 7 and n:  # spliced with itself
                data = data[: rng.randrange(n)] + data[rng.randrange(n) :]
            elif pick == 8:  # random bytes
                data = rng.randbytes(rng.choice((0, 1, 2, 7, 64, 1000)))
            else:  # a raw token in place of a value
                data = data + b"," + rng.choice(RAW_TOKENS)
        return data

    def _render(self, events: list[Any], ndjson: bool) -> bytes:
        def one(event: Any) -> bytes:
            text = orjson.dumps(event)
            if SENTINEL_JSON in text:
                text = text.replace(SENTINEL_JSON, self.rng.choice(RAW_TOKENS))
            return text

        if not ndjson:
            return b"[" + b",".join(one(e) for e in events) + b"]"
        seps = (b"\n", b"\n", b"\n", b"\r\n", b"\n\n", b"\n \t\n")
        lines = [one(e) + self.rng.choice(seps) for e in events]
        return b"".join(lines)

    def _oversized(self, ndjson: bool) -> bytes:
        """A one-event body within a few bytes of the limit, either side."""
        rng = self.rng
        limit = self.plan.max_body_bytes
        event = self.valid_event()
        event["dimensions"]["pad"] = ""
        base = len(self._render([event], ndjson))
        size = limit + rng.choice((-4096, -1, 0, 1, 4096)) if rng.random() < 0.7 else limit + 1
        event["dimensions"]["pad"] = "a" * max(0, size - base)
        return self._render([event], ndjson)

    def _events_call(self, route: str, ndjson: bool) -> Call:
        rng = self.rng
        markers: list[tuple[str, bytes]] = []
        only_markers = False
        content_type: str | None = rng.choice(NDJSON_TYPES if ndjson else JSON_TYPES)
        roll = rng.random()
        if roll < 0.004:
            body = self._oversized(ndjson)
        elif roll < 0.01:  # one event over the events limit
            body = self._render([self.valid_event()] * (self.plan.max_batch_events + 1), ndjson)
        else:
            events: list[Any] = self._material(markers)
            roll = rng.random()
            if roll < 0.25:
                self._break_event(events, markers)
                body = self._render(events, ndjson)
            elif roll < 0.55:
                marker_ids = {i for i, _ in markers}
                events = [e for e in events if e.get("event_id") not in marker_ids]
                markers = []
                body = self._mutate_text(self._render(events, ndjson))
            else:
                only_markers = bool(events) and len(markers) == len(events)
                body = self._render(events, ndjson)
        if rng.random() < 0.08:
            content_type = rng.choice((*WRONG_TYPES, *(JSON_TYPES if ndjson else NDJSON_TYPES)))
        headers = (("content-type", content_type),) if content_type is not None else ()
        request = HttpRequest("POST", "/v1/events", headers, chunked=rng.random() < 0.03)
        return Call(route, (body,), tuple(markers), int(only_markers), request)

    def post_json(self) -> Call:
        return self._events_call(POST_JSON, ndjson=False)

    def post_ndjson(self) -> Call:
        return self._events_call(POST_NDJSON, ndjson=True)

    # -- queries ------------------------------------------------------------------------

    def _query_params(self) -> list[tuple[str, str]]:
        rng = self.rng
        now = self.plan.now_ms
        params = {
            "campaign_id": f"fz-{rng.randrange(20)}",
            "start_ms": str(now - 3_600_000),
            "end_ms": str(now),
            "resolution": rng.choice(("minute", "hour", "day")),
        }
        extra: list[tuple[str, str]] = []
        for _ in range(rng.randint(0, 3)):
            pick = rng.randrange(9)
            if pick <= 1:
                params[("campaign_id", "event_type")[pick]] = self.text()
            elif pick == 2:
                params["start_ms"] = str(rng.choice(self.f.timestamps))
                params["end_ms"] = str(rng.choice(self.f.timestamps))
            elif pick == 3:
                params[rng.choice(("start_ms", "end_ms"))] = rng.choice(QUERY_BOUNDS)
            elif pick == 4:
                params["resolution"] = rng.choice((*RESOLUTION_NAMES, self.text()))
            elif pick == 5:
                params["group_by"] = rng.choice((*GROUP_BYS, self.text()))
            elif pick == 6:
                name = rng.choice(("country", "device", "", "]", "[", "a][b", self.text()))
                extra.append((f"dimension[{name}]", rng.choice(("DE", self.text()))))
            elif pick == 7:
                name = rng.choice(("unknown", "dimension", "dimension[", "Campaign_id", ""))
                extra.append((name, "1"))
            else:
                name = rng.choice(sorted(params))
                if rng.random() < 0.5:
                    del params[name]  # a required one missing, or an optional one
                else:
                    extra.append((name, params[name]))  # given twice
        return [*params.items(), *extra]

    def get_metrics(self) -> Call:
        rng = self.rng
        params = self._query_params()
        safe = rng.choice(("", "[]", "[]:,"))
        query = urllib.parse.urlencode(params, safe=safe).encode()
        roll = rng.random()
        if roll < 0.2:  # an escape (malformed, truncated, invalid UTF-8) spliced in
            at = rng.randrange(len(query) + 1)
            query = query[:at] + rng.choice(QUERY_ESCAPES) + query[at:]
        elif roll < 0.35:
            query = self._mutate_text(query)
        elif roll < 0.4:  # a parameter without "=", empty pairs
            query += rng.choice((b"&start_ms", b"&&", b"&=", b"&=1", b";x=1"))
        headers = (("accept", "application/x-ndjson"),) if rng.random() < 0.2 else ()
        # Cut to what the client sends (a 64 KiB URL); a cut escape stays malformed.
        target = ("/v1/metrics?" + _escape_target(query))[:MAX_TARGET_CHARS]
        return Call(GET_METRICS, (b"",), request=HttpRequest("GET", target, headers))

    def other(self) -> Call:
        rng = self.rng
        method, path = rng.choice(OTHER_REQUESTS)
        body = rng.randbytes(rng.choice((0, 10))) if method in {"POST", "PUT", "PATCH"} else b""
        return Call(HTTP_OTHER, (body,), request=HttpRequest(method, path))


def add_http_makers(fuzzer: MessageFuzzer) -> None:
    """Register the HTTP routes' makers with `fuzzer`."""
    http = HttpFuzz(fuzzer)
    makers: dict[str, Callable[[], Call]] = {
        POST_JSON: http.post_json,
        POST_NDJSON: http.post_ndjson,
        GET_METRICS: http.get_metrics,
        HTTP_OTHER: http.other,
    }
    fuzzer.makers.update(makers)


def markers_body(fuzzer: MessageFuzzer, events: int) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    """A JSON array of `events` fresh markers, and the markers (id, serialized)."""
    fields = [fuzzer.marker_fields() for _ in range(events)]
    markers = tuple((f["event_id"], fuzzer.marker_from(f)) for f in fields)
    return orjson.dumps(fields), markers
