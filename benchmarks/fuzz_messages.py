"""Mutated request messages for the ingest edge, deterministic from a seed.

`MessageFuzzer(plan).calls(weights)` yields an endless stream of `Call`s: one RPC (or
one HTTP route, whose makers `benchmarks.fuzz_http` adds) and the raw bytes of the
messages to send on it. The same plan
(seed and clock) always yields the same bytes. `benchmarks.fuzz_edge` sends them.

A stream call is built so that one malformed message does not hide the rest: a prefix
of messages that always decode (valid events, events with hostile field values, unknown
fields) with *marker* events among them, then, often, one *breaker* that may not decode
(a byte-level mutation, or a batch over the events limit), which ends the call with
INVALID_ARGUMENT after the edge has acknowledged the prefix. A message over the size
limit is sent alone, as the transport refuses it (RESOURCE_EXHAUSTED) before the edge
sees anything. Marker events (campaign `Plan.marker_campaign`, unique ids, never
mutated) are the valid events whose fate is checked afterwards in Kafka; fuzz material
uses other campaigns, so a mutation never forges a marker.

Mutations, from valid serialized RawEvent / EventBatch / MetricsRequest messages:
- byte level: bit flips, inserted, deleted and random bytes, truncation, a corrupted
  length prefix, over-long and huge varints, wrong and invalid wire types, field number
  0, nested garbage, invalid UTF-8 in string fields, two messages spliced;
- field values: extreme numbers (NaN, infinities, denormals, int64 extremes as
  timestamps and query bounds, unknown enum values), strings that are empty, blank,
  control characters, SQL or format syntax, multi-byte text at and just over each length
  limit, oversized fields, many dimensions, unknown fields.
"""

import random
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.limits import (
    MAX_DIMENSION_KEY_CHARS,
    MAX_DIMENSION_VALUE_CHARS,
    MAX_DIMENSIONS,
    MAX_EVENT_TYPE_CHARS,
    MAX_ID_CHARS,
    MAX_TIMESTAMP_MS,
)

INGEST_EVENTS = "IngestEvents"
INGEST_EVENT_BATCHES = "IngestEventBatches"
QUERY_METRICS = "QueryMetrics"
# Calls per route: each query call is one message, each stream call about a dozen.
DEFAULT_WEIGHTS = {INGEST_EVENTS: 0.4, INGEST_EVENT_BATCHES: 0.3, QUERY_METRICS: 0.3}

DAY_MS = 86_400_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Strings no field should choke on: SQL and format syntax, escapes, reserved names,
# blanks and control characters (NUL among them: it is not printable either).
HOSTILE = (
    "",
    " ",
    "\t\n",
    "\x00",
    "a\x01b",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x1f",  # the dataflow's series separator
    "\u0085",
    "\u2028",
    "\u200b",
    "\u202e",
    "\ufeff",
    "'; DROP TABLE event_metrics; --",
    '" OR 1=1 --',
    "') OR ('1'='1",
    "$$; SELECT pg_sleep(10); $$",
    "%s%s%s%n",
    "%(campaign_id)s",
    "{}{0}{campaign_id}",
    "\\",
    "\\x00\\'",
    "__missing__",
    "__other__",
    "null",
    "NaN",
    "country,device;user_id",
    '{"country": "DE"}',
)
# Multi-byte characters: 2, 3 and 4 UTF-8 bytes, a combining mark, right-to-left text.
WIDE = ("é", "日", "\U0001f680", "e\u0301", "\u05e9")
LIMITS = (MAX_DIMENSION_KEY_CHARS, MAX_EVENT_TYPE_CHARS, MAX_ID_CHARS, MAX_DIMENSION_VALUE_CHARS)
INVALID_UTF8 = (b"\xff", b"\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b")
VALUES = (
    0.0,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e15,
    -1e15,
    1e15 * (1 + 2**-52),
    5e-324,
    1.7976931348623157e308,
    -2.5,
    0.1,
)
RESOLUTIONS = (0, 1, 2, 3, 4, -1, 2**31 - 1, -(2**31))
GROUP_BYS = ("", "country", "country,device", "device, country", "user_id", "a,b,c,d,e", ",", ";")


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of `n` as an unsigned 64-bit number (negatives wrap)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def delimited(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def length_prefixes(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each top-level length prefix, scanning until the data stops parsing."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(data)

    def read_varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while i < n and shift < 64:
            byte = data[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return value, i
            shift += 7
        return -1, n

    while i < n:
        tag, i = read_varint(i)
        if tag < 0:
            break
        wire = tag & 7
        if wire == 0:
            _, i = read_varint(i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            start = i
            length, i = read_varint(i)
            if length < 0:
                break
            out.append((start, i))
            i += length
        else:
            break
    return out


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What an HTTP call sends besides its body: method, target (path and query string,
    printable ASCII), headers, and whether the body goes chunked (no Content-Length)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """One call: its route, the raw messages, and the marker events among them as
    (event_id, the event serialized) in order. An HTTP call has one message, its body,
    and its `request`."""

    route: str
    messages: tuple[bytes, ...]
    markers: tuple[tuple[str, bytes], ...] = ()
    marker_messages: int = 0  # the messages holding only markers (the rest are mutated)
    request: HttpRequest | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What the generated messages depend on: the seed and the clock they are relative to."""

    seed: int
    now_ms: int
    marker_campaign: str
    max_message_bytes: int = 1 << 20  # the edge's PULSE_MAX_MESSAGE_BYTES
    max_batch_events: int = 1000  # the edge's PULSE_MAX_BATCH_EVENTS
    max_prefix: int = 48  # decodable messages before a stream call's breaker
    max_age_ms: int = 7 * DAY_MS  # the edge's PULSE_MAX_EVENT_AGE_SECONDS, in ms
    max_body_bytes: int = 1 << 20  # the edge's PULSE_HTTP_MAX_BODY_BYTES


Maker = Callable[[], Call]


def _entry(name: bytes, value: bytes) -> bytes:
    """A map entry's payload: key field 1, value field 2."""
    return delimited(1, name) + delimited(2, value)


class MessageFuzzer:
    """Deterministic calls from `plan`. `makers` maps a route to the function making its
    next call; add one to fuzz another route (it should draw only on `self.rng`)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self._markers = 0
        now = plan.now_ms
        self.timestamps = (
            0,
            -1,
            1,
            INT64_MIN,
            INT64_MAX,
            MAX_TIMESTAMP_MS,
            MAX_TIMESTAMP_MS + 1,
            now,
            now - plan.max_age_ms - 60_000,
            now - plan.max_age_ms + 60_000,
            now + 299_000,
            now + 301_000,
            now + 10 * 365 * DAY_MS,
        )
        strings = HOSTILE + tuple(
            c * n for c in WIDE for limit in LIMITS for n in (limit, limit + 1)
        )
        self._strings = tuple(text.encode() for text in strings)
        self._huge = tuple(c.encode() * n for c in WIDE for n in (1000, 70_000))  # oversized
        # Dimension entries appended to an event that has two: 32, 33 and 502 in all.
        self._many = tuple(
            b"".join(delimited(4, _entry(f"d{i}".encode(), f"v{i}".encode())) for i in range(n))
            for n in (MAX_DIMENSIONS - 2, MAX_DIMENSIONS - 1, 500)
        )
        self._templates = tuple(self._template() for _ in range(64))
        self.makers: dict[str, Maker] = {
            INGEST_EVENTS: self._ingest_events_call,
            INGEST_EVENT_BATCHES: self._ingest_batches_call,
            QUERY_METRICS: self._query_call,
        }

    def calls(self, weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> Iterator[Call]:
        """Calls without end, each route drawn with its weight."""
        routes, chances = list(weights), list(weights.values())
        while True:
            yield self.makers[self.rng.choices(routes, chances)[0]]()

    # -- events ---------------------------------------------------------------------
    # Hostile events are built on the wire: a valid template with fields appended, which
    # override the template's (the last value of a field wins, a map key's last entry).

    def _template(self) -> bytes:
        rng = self.rng
        return pb.RawEvent(
            campaign_id=f"fz-{rng.randrange(20)}",
            event_type=rng.choice(("impression", "click", "conversion")),
            event_id="fz",
            timestamp=self.plan.now_ms - rng.randrange(600_000),
            value=rng.randrange(400) / 8,
            dimensions={"user_id": f"u{rng.randrange(1000)}", "country": rng.choice(("DE", "NL"))},
        ).SerializeToString()

    def valid_event(self) -> bytes:
        """Fuzz material: a valid event of a fuzz campaign (never the marker campaign)."""
        event_id = b"fz-%d" % self.rng.randrange(10**9)
        return self.rng.choice(self._templates) + delimited(5, event_id)

    def marker_fields(self) -> dict[str, Any]:
        """The next marker event's fields: valid, its id unique, one dimension (so its
        serialized form, which the edge writes to Kafka, is always the same bytes)."""
        self._markers += 1
        return {
            "campaign_id": self.plan.marker_campaign,
            "event_type": "click",
            "event_id": f"m{self._markers}",
            "timestamp": self.plan.now_ms - self.rng.randrange(600_000),
            "value": self._markers % 8 / 4,
            "dimensions": {"user_id": f"u{self._markers % 100}"},
        }

    @staticmethod
    def marker_from(fields: dict[str, Any]) -> bytes:
        """A marker's serialized form from its fields."""
        return pb.RawEvent(**fields).SerializeToString()

    def marker(self) -> tuple[str, bytes]:
        """The next marker event: its id and its serialized form."""
        fields = self.marker_fields()
        return fields["event_id"], self.marker_from(fields)

    def string(self) -> bytes:
        """A hostile string, UTF-8 encoded (valid UTF-8: the message still decodes)."""
        rng = self.rng
        return rng.choice(self._huge if rng.random() < 0.02 else self._strings)

    def hostile_event(self) -> bytes:
        """A valid event with one to three fields made hostile; it still decodes."""
        rng = self.rng
        parts = [self.valid_event()]
        for _ in range(rng.randint(1, 3)):
            pick = rng.randrange(9)
            if pick <= 2:  # campaign_id, event_type, event_id
                parts.append(delimited((1, 2, 5)[pick], self.string()))
            elif pick == 3:
                parts.append(key(3, 0) + varint(rng.choice(self.timestamps)))
            elif pick == 4:
                parts.append(key(6, 1) + struct.pack("<d", rng.choice(VALUES)))
            elif pick == 5:
                parts.append(delimited(4, _entry(self.string(), self.string())))
            elif pick == 6:
                parts.append(rng.choice(self._many))
            elif pick == 7:
                parts.append(delimited(4, _entry(b"country", self.string())))
            else:
                parts = [b""]  # every field empty
        return b"".join(parts)

    def _unknown_fields(self, data: bytes, first_free: int) -> bytes:
        """`data` with an unknown field appended: it still decodes (and is kept)."""
        rng = self.rng
        field = rng.randrange(first_free, 2000)
        wire = rng.choice((0, 1, 2, 5))
        if wire == 0:
            return data + key(field, 0) + varint(rng.choice((0, 1, INT64_MAX, -1)))
        if wire == 1:
            return data + key(field, 1) + rng.randbytes(8)
        if wire == 5:
            return data + key(field, 5) + rng.randbytes(4)
        return data + delimited(field, rng.randbytes(rng.randrange(64)))

    # -- byte-level mutations ----------------------------------------------------------

    def mutate_bytes(self, data: bytes) -> bytes:
        """One to three byte-level mutations of `data`; the result may not decode."""
        for _ in range(self.rng.randint(1, 3)):
            data = self._mutate_once(data)
        return data

    def _mutate_once(self, data: bytes) -> bytes:  # noqa: PLR0912 (one branch per mutation)
        rng = self.rng
        n = len(data)
        pick = rng.randrange(14)
        if pick == 0 and n:  # bit flips
            out = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(n)] ^= 1 << rng.randrange(8)
            return bytes(out)
        if pick == 1:  # inserted bytes
            at = rng.randrange(n + 1)
            return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
        if pick == 2 and n:  # deleted bytes
            at = rng.randrange(n)
            return data[:at] + data[at + rng.randint(1, 16) :]
        if pick == 3 and n:  # truncated
            return data[: rng.randrange(n)]
        if pick == 4:  # random bytes
            return rng.randbytes(rng.choice((0, 1, 2, 7, 64, 1000)))
        if pick == 5:  # a corrupted length prefix
            prefixes = length_prefixes(data)
            if prefixes:
                start, end = rng.choice(prefixes)
                wrong = rng.choice((0, 1, 127, 128, 2**31 - 1, 2**32 + 1, 2**63, 2**64 - 1))
                return data[:start] + varint(wrong) + data[end:]
        if pick == 6:  # over-long varint (11 continuation bytes) or the largest one
            field = rng.randrange(1, 8)
            huge = b"\xff" * 11 + b"\x01" if rng.random() < 0.5 else varint(2**64 - 1)
            return data + key(field, 0) + huge
        if pick == 7:  # a known field with the wrong wire type
            field = rng.randrange(1, 8)
            wire = rng.choice((0, 1, 2, 5))
            payload = {0: varint(12345), 1: rng.randbytes(8), 2: b"\x03abc", 5: rng.randbytes(4)}
            return data + key(field, wire) + payload[wire]
        if pick == 8:  # groups and invalid wire types (3, 4, 6, 7), field number 0
            return data + bytes([rng.choice((0x0B, 0x0C, 0x0E, 0x0F, 0x00, 0x02, 0x08))])
        if pick == 9:  # nested garbage in a message field (dimensions, events)
            return data + delimited(rng.choice((1, 4, 7)), rng.randbytes(rng.randint(1, 40)))
        if pick == 10:  # invalid UTF-8 in a string field
            return data + delimited(rng.choice((1, 2, 5, 6)), rng.choice(INVALID_UTF8))
        if pick == 11:  # invalid UTF-8 in a map key or value
            entry = delimited(rng.choice((1, 2)), rng.choice(INVALID_UTF8))
            return data + delimited(rng.choice((4, 7)), entry)
        if pick == 12 and n:  # spliced with itself
            return data[: rng.randrange(n)] + data[rng.randrange(n) :]
        # an enormous declared length at the end
        return data + key(rng.randrange(1, 8), 2) + varint(rng.choice((2**31, 2**62)))

    # -- calls --------------------------------------------------------------------------

    def _oversized(self) -> bytes:
        """A message over the size limit: a huge string field, or random bytes."""
        size = self.plan.max_message_bytes + self.rng.randint(1, 4096)
        if self.rng.random() < 0.5:
            return delimited(1, b"a" * size)
        return self.rng.randbytes(size)

    def _stream_call(
        self,
        route: str,
        decodable: Callable[[], bytes],
        marker_message: Callable[[], tuple[bytes, list[tuple[str, bytes]]]],
        breaker: Callable[[], bytes],
    ) -> Call:
        rng = self.rng
        if rng.random() < 0.002:
            return Call(route, (self._oversized(),))
        messages: list[bytes] = []
        markers: list[tuple[str, bytes]] = []
        marker_messages = 0
        for _ in range(rng.randrange(self.plan.max_prefix + 1)):
            if rng.random() < 0.1:
                message, marked = marker_message()
                messages.append(message)
                markers += marked
                marker_messages += 1
            else:
                messages.append(decodable())
        if rng.random() < 0.6:
            messages.append(breaker())
        return Call(route, tuple(messages), tuple(markers), marker_messages)

    def _event_bytes(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            return self.valid_event()
        data = self.hostile_event()
        return self._unknown_fields(data, 7) if roll < 0.25 else data

    def _ingest_events_call(self) -> Call:
        def marker_message() -> tuple[bytes, list[tuple[str, bytes]]]:
            marked = self.marker()
            return marked[1], [marked]

        def breaker() -> bytes:
            return self.mutate_bytes(self._event_bytes())

        return self._stream_call(INGEST_EVENTS, self._event_bytes, marker_message, breaker)

    def _batch_bytes(self) -> bytes:
        rng = self.rng
        events = (
            self.valid_event() if rng.random() < 0.3 else self.hostile_event()
            for _ in range(rng.choice((0, 1, 2, 5, 10)))
        )
        data = b"".join(delimited(1, event) for event in events)
        return self._unknown_fields(data, 2) if rng.random() < 0.1 else data

    def _ingest_batches_call(self) -> Call:
        def marker_message() -> tuple[bytes, list[tuple[str, bytes]]]:
            marked = [self.marker() for _ in range(self.rng.randint(1, 5))]
            return b"".join(delimited(1, data) for _, data in marked), marked

        def breaker() -> bytes:
            if self.rng.random() < 0.05:  # one event over the events limit
                return delimited(1, self.valid_event()) * (self.plan.max_batch_events + 1)
            return self.mutate_bytes(self._batch_bytes())

        return self._stream_call(INGEST_EVENT_BATCHES, self._batch_bytes, marker_message, breaker)

    def query(self) -> bytes:
        """A MetricsRequest with zero to three fields made hostile; it still decodes."""
        rng = self.rng
        now = self.plan.now_ms
        parts = [
            delimited(1, b"fz-%d" % rng.randrange(20))
            + key(3, 0)
            + varint(now - 3_600_000)
            + key(4, 0)
            + varint(now)
            + key(5, 0)
            + varint(rng.randrange(4))
        ]
        for _ in range(rng.randint(0, 3)):
            pick = rng.randrange(6)
            if pick <= 1:  # campaign_id, event_type
                parts.append(delimited(pick + 1, self.string()))
            elif pick == 2:  # start_ms, end_ms
                parts.append(key(3, 0) + varint(rng.choice(self.timestamps)))
                parts.append(key(4, 0) + varint(rng.choice(self.timestamps)))
            elif pick == 3:
                parts.append(key(5, 0) + varint(rng.choice(RESOLUTIONS)))
            elif pick == 4:
                group_by = rng.choice((*GROUP_BYS, "")).encode() or self.string()
                parts.append(delimited(6, group_by))
            else:
                parts.append(delimited(6, rng.choice(GROUP_BYS).encode()))
                name = rng.choice((b"country", b"device", self.string()))
                parts.append(delimited(7, _entry(name, self.string())))
        return b"".join(parts)

    def _query_call(self) -> Call:
        rng = self.rng
        roll = rng.random()
        data = self.query()
        if roll < 0.002:
            data = self._oversized()
        elif roll < 0.1:
            data = self._unknown_fields(data, 8)
        elif roll < 0.6:
            data = self.mutate_bytes(data)
        return Call(QUERY_METRICS, (data,))
