"""What the dataflow computes per `(campaign_id, event_type, window)`: the data model.

- `Partial`: one input batch's events of one window, pre-aggregated (plain lists, cheap
  to build per event and to ship between workers).
- `WindowAggregate`: an open window's running aggregate, with its sketches; partials
  merge into it.
- `MetricRow`: what the sink upserts into `event_metrics`. Rows of one window only grow
  (`revision` rises), so replays and stale rows are no-ops for an upsert that keeps the
  highest revision.
- `ClosedWindow`: a window the watermark has passed, final, handed to rollups and alerts.
- `LateEvent`: an event behind the watermark, with its original bytes and origin.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pulse import sketches

MICROS = 1_000_000  # value sums are kept exactly, in millionths

EventTuple = tuple[int, float, str, int, bytes]  # (event time, value, user, offset, raw bytes)


def to_micros(values: Sequence[float]) -> int:
    """The exact sum of `values` in millionths: integers add up the same in any order."""
    return sum(map(round, map(float(MICROS).__mul__, values)))


@dataclass(slots=True)
class Partial:
    """The on-time events of one window within one input batch, folded together; never
    changed once made (not frozen: a frozen dataclass costs a `__setattr__` per field to
    build, and one is built per key-window and batch).

    Columns rather than objects: built with C-level `zip`, `min`, `max` and `sum`.
    """

    count: int
    sum_micros: int
    value_min: float
    value_max: float
    first_ms: int
    last_ms: int
    values: Sequence[float]
    users: Sequence[str]
    offsets: Sequence[int]
    times: Sequence[int]
    raws: Sequence[bytes]

    @classmethod
    def of(cls, events: Sequence[EventTuple]) -> "Partial":
        """Fold events given as `(time, value, user, offset, raw)` tuples (at least one)."""
        if len(events) == 1:  # common at high cardinality: a key's only event in a batch
            ts, value, user, offset, raw = events[0]
            return cls(
                1, round(value * MICROS), value, value, ts, ts, (value,), (user,), (offset,),
                (ts,), (raw,),
            )  # fmt: skip
        times, values, users, offsets, raws = zip(*events, strict=True)
        return cls(
            len(times),
            to_micros(values),
            min(values),
            max(values),
            min(times),
            max(times),
            values,
            users,
            offsets,
            times,
            raws,
        )


class MetricRow(NamedTuple):
    """One `event_metrics` row: the on-time aggregate of a window so far (or final).

    Rows, closed windows and rollup rows are named tuples: immutable, and built at C speed
    (one or two of each per key-window).
    """

    campaign_id: str
    event_type: str
    bucket_start_ms: int
    event_count: int
    value_sum: float
    value_min: float | None = None
    value_max: float | None = None
    unique_users: int = 0
    value_p50: float | None = None
    value_p95: float | None = None
    value_p99: float | None = None
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    closed: bool = False
    users_sketch: bytes | None = None  # serialized HLL, on closed rows
    values_sketch: bytes | None = None  # serialized KLL, on closed rows

    @property
    def value_avg(self) -> float | None:
        return self.value_sum / self.event_count if self.event_count else None

    @property
    def revision(self) -> int:
        """Grows with every change of the window: more events, then once more on close."""
        return 2 * self.event_count + int(self.closed)


class WindowAggregate:
    """The running aggregate of one open window: scalars, plus its users and values.

    Users and values stay exact (a set, a list) while they are few (`SMALL` at most),
    and become mergeable sketches when they grow or when a sketch is asked for (`users`,
    `values`: to merge the window into a rollup or a sliding alert window, or to store
    it). Most windows of a high-cardinality stream hold a few events: exact sets cost
    less to fill, to read and to keep than sketches (a KLL sketch alone allocates room
    for 400 values). The estimates agree: below 400 values a KLL sketch is exact, and
    `exact_quantiles` answers as it does; an HLL sketch counts a few users exactly.
    """

    __slots__ = (
        "_frozen",
        "_user_tuple",
        "_users",
        "_value_tuple",
        "_values",
        "count",
        "first_ms",
        "last_ms",
        "sum_micros",
        "value_max",
        "value_min",
    )

    SMALL = 32

    def __init__(self) -> None:
        self.count = 0
        self.sum_micros = 0
        self.value_min = float("inf")
        self.value_max = float("-inf")
        self.first_ms = 2**63 - 1
        self.last_ms = -(2**63)
        # Exact users (distinct, no empty id) and values as tuples, shared with the frozen
        # copy: a tuple of a few items takes a quarter of a set's memory. None once a
        # sketch holds them.
        self._user_tuple: tuple[str, ...] | None = ()
        self._users: sketches.HllSketch | None = None
        self._value_tuple: tuple[float, ...] | None = ()
        self._values: sketches.KllSketch | None = None
        self._frozen: FrozenAggregate | None = None  # `freeze()` since the last change

    @classmethod
    def of(cls, part: Partial) -> "WindowAggregate":
        """A new window holding one partial (as a new one that merged it, built directly:
        most windows of a high-cardinality stream are made from a single partial)."""
        agg = cls.__new__(cls)
        agg.count = part.count
        agg.sum_micros = part.sum_micros
        agg.value_min = part.value_min
        agg.value_max = part.value_max
        agg.first_ms = part.first_ms
        agg.last_ms = part.last_ms
        agg._frozen = None
        users = part.users
        if len(users) == 1:
            agg._user_tuple = tuple(users) if users[0] else ()
        else:
            distinct = set(users)
            distinct.discard("")  # events without a user
            agg._user_tuple = tuple(distinct)
        agg._users = None
        if len(agg._user_tuple) > cls.SMALL:
            agg._users = sketches.hll_of(agg._user_tuple)
            agg._user_tuple = None
        agg._value_tuple = tuple(part.values)
        agg._values = None
        if len(agg._value_tuple) > cls.SMALL:
            agg._values = sketches.kll_of(agg._value_tuple)
            agg._value_tuple = None
        return agg

    def merge(self, part: Partial) -> None:
        self._frozen = None
        self.count += part.count
        self.sum_micros += part.sum_micros
        self.value_min = min(self.value_min, part.value_min)
        self.value_max = max(self.value_max, part.value_max)
        self.first_ms = min(self.first_ms, part.first_ms)
        self.last_ms = max(self.last_ms, part.last_ms)
        users = self._user_tuple
        if users is None:
            sketches.add_users(self.users, part.users)
        elif len(part.users) == 1:  # one event: no set to build
            user = part.users[0]
            if user and user not in users:
                users += (user,)
                if len(users) > self.SMALL:
                    self._users = sketches.hll_of(users)
                    self._user_tuple = None
                else:
                    self._user_tuple = users
        else:
            merged = {*users, *part.users}
            merged.discard("")  # events without a user
            if len(merged) > self.SMALL:
                self._users = sketches.hll_of(merged)
                self._user_tuple = None
            else:
                self._user_tuple = tuple(merged)
        values = self._value_tuple
        if values is None:
            sketches.add_values(self.values, part.values)
        else:
            values += tuple(part.values)
            if len(values) > self.SMALL:
                self._values = sketches.kll_of(values)
                self._value_tuple = None
            else:
                self._value_tuple = values

    @property
    def users(self) -> sketches.HllSketch:
        """The users as a sketch (made now if they were still exact; kept from then on)."""
        if self._users is None:
            self._users = sketches.hll_of(self._user_tuple or ())
            self._user_tuple = None
        return self._users

    @property
    def values(self) -> sketches.KllSketch:
        """The values as a sketch (made now if they were still exact; kept from then on)."""
        if self._values is None:
            self._values = sketches.kll_of(self._value_tuple or ())
            self._value_tuple = None
        return self._values

    def _users_bytes(self) -> bytes:
        """The users as a serialized sketch; exact users stay exact (rollups merge them)."""
        if self._user_tuple is None:
            return sketches.hll_bytes(self.users)
        return sketches.hll_bytes(sketches.hll_of(self._user_tuple))

    def _values_bytes(self) -> bytes:
        """The values as a serialized sketch; exact values stay exact."""
        if self._value_tuple is None:
            return sketches.kll_bytes(self.values)
        return sketches.kll_bytes(sketches.kll_of(self._value_tuple))

    def exact_users(self) -> tuple[str, ...] | None:
        """The distinct users while exact; None once a sketch holds them."""
        return self._user_tuple

    def exact_values(self) -> tuple[float, ...] | None:
        """The values while exact; None once a sketch holds them."""
        return self._value_tuple

    def distinct_users(self) -> int:
        users = self._user_tuple
        return len(users) if users is not None else sketches.distinct(self.users)

    def percentiles(self) -> tuple[float | None, float | None, float | None]:
        values = self._value_tuple
        if values is None:
            return sketches.percentiles(self.values)
        q = sketches.exact_quantiles(values)
        return q if q is not None else (None, None, None)

    @property
    def value_sum(self) -> float:
        return self.sum_micros / MICROS

    @property
    def value_avg(self) -> float | None:
        return self.sum_micros / MICROS / self.count if self.count else None

    def row(self, campaign_id: str, event_type: str, start_ms: int, closed: bool) -> MetricRow:
        """The window as a row; closed rows carry the serialized sketches for rollups."""
        p50, p95, p99 = self.percentiles()
        return MetricRow(
            campaign_id,
            event_type,
            start_ms,
            self.count,
            self.value_sum,
            self.value_min if self.count else None,
            self.value_max if self.count else None,
            self.distinct_users(),
            p50,
            p95,
            p99,
            self.first_ms if self.count else None,
            self.last_ms if self.count else None,
            closed,
            self._users_bytes() if closed else None,
            self._values_bytes() if closed else None,
        )

    def freeze(self) -> "FrozenAggregate":
        """An immutable copy: exact users and values as tuples, sketches as bytes. Made
        once per change: every snapshot freezes every open window, most unchanged."""
        if self._frozen is None:
            self._frozen = self._make_frozen()
        return self._frozen

    def _make_frozen(self) -> "FrozenAggregate":
        users, values = self._user_tuple, self._value_tuple
        return FrozenAggregate(
            self.count,
            self.sum_micros,
            self.value_min,
            self.value_max,
            self.first_ms,
            self.last_ms,
            b"" if users is not None else sketches.hll_bytes(self.users),
            b"" if values is not None else sketches.kll_bytes(self.values),
            users,
            values,
        )

    @classmethod
    def thaw(cls, frozen: "FrozenAggregate") -> "WindowAggregate":
        agg = cls()
        agg.count = frozen.count
        agg.sum_micros = frozen.sum_micros
        agg.value_min = frozen.value_min
        agg.value_max = frozen.value_max
        agg.first_ms = frozen.first_ms
        agg.last_ms = frozen.last_ms
        # Copies frozen before exact sets existed hold sketches only.
        user_set = getattr(frozen, "user_set", None)
        value_list = getattr(frozen, "value_list", None)
        if user_set is None:
            agg._users, agg._user_tuple = sketches.hll_from(frozen.users), None
        else:
            agg._user_tuple = tuple(user_set)
        if value_list is None:
            agg._values, agg._value_tuple = sketches.kll_from(frozen.values), None
        else:
            agg._value_tuple = tuple(value_list)
        return agg


@dataclass(frozen=True, slots=True)
class FrozenAggregate:
    """Immutable, picklable copy of a `WindowAggregate` (for Bytewax snapshots): users
    and values either exact (`user_set`, `value_list`) or as sketch bytes."""

    count: int
    sum_micros: int
    value_min: float
    value_max: float
    first_ms: int
    last_ms: int
    users: bytes  # serialized HLL (empty while the users are exact)
    values: bytes  # serialized KLL (empty while the values are exact)
    user_set: tuple[str, ...] | None = None
    value_list: tuple[float, ...] | None = None


class ClosedWindow(NamedTuple):
    """A final window result: the watermark passed its end. `agg` must not be mutated."""

    campaign_id: str
    event_type: str
    start_ms: int
    end_ms: int
    agg: WindowAggregate


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event whose window had closed when it arrived: not counted, routed aside."""

    campaign_id: str
    event_type: str
    bucket_start_ms: int
    partition: int
    offset: int
    timestamp_ms: int
    raw: bytes
    watermark_ms: int
