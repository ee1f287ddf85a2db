"""Dimension slices: the campaign aggregates again, per value of chosen event dimensions.

A *dimension set* names one or more of `RawEvent.dimensions`, for example `country` or
`country,device` (names sorted, so `device,country` is the same set). Each configured
set gives every window of a campaign one slice per combination of values, with the
same columns as the campaign's row.

Inside the dataflow a slice is keyed like its campaign window, with the event type
extended to a *series*: `event_type SEP set SEP value...` (`SEP` is the ASCII unit
separator, which validated event types never hold). So a slice shares its campaign's
watermark and is merged, closed, corrected and rolled up by the same code, and its rows
are split into `(event_type, set, {name: value})` only at the store (`split_series`).

Values:
- an event without the dimension, or with an empty value, counts under `MISSING`;
- a value that is too long or holds control characters counts under `OTHER`;
- per partition, dimension and UTC day of the event time, the first `max_values`
  distinct values (in offset order) count under their own name; later ones under
  `OTHER`. The day, not the window, scopes the limit because a late event corrects its
  closed window up to the correction horizon later, and must meet the same admitted
  values then: a day's sets hold at most `max_values` values per dimension, while a set
  per window would be kept for every window of the horizon. Decisions depend only on
  the partition's records in offset order (and the snapshot), so replays repeat them.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass

from pulse.errors import ConfigError
from pulse.limits import MAX_DIMENSION_KEY_CHARS, MAX_DIMENSION_VALUE_CHARS
from pulse.windows import DAY_MS, bucket_start

SEP = "\x1f"
MISSING = "__missing__"
OTHER = "__other__"
MAX_SETS = 8  # dimension sets one deployment may configure
MAX_SET_DIMENSIONS = 4  # dimensions in one set
DEFAULT_MAX_VALUES = 1000  # distinct values per dimension, partition and day
MAX_ANSWERS = 65_536  # remembered slicing answers (cleared when full)
RESERVED = frozenset({"user_id"})  # aggregated as distinct users, never sliced

DimensionSet = tuple[str, ...]  # sorted dimension names


def set_name(dimensions: DimensionSet) -> str:
    return ",".join(dimensions)


def parse_set(text: str) -> DimensionSet:
    """`country, device` -> ("country", "device"); raise ConfigError when invalid."""
    names = sorted({name.strip() for name in text.split(",") if name.strip()})
    if not names:
        raise ConfigError(f"empty dimension set in {text!r}")
    if len(names) > MAX_SET_DIMENSIONS:
        msg = f"dimension set {text!r} has {len(names)} dimensions, limit {MAX_SET_DIMENSIONS}"
        raise ConfigError(msg)
    for name in names:
        if len(name) > MAX_DIMENSION_KEY_CHARS or not name.isprintable() or SEP in name:
            raise ConfigError(f"invalid dimension name {name!r}")
        if name in RESERVED:
            raise ConfigError(f"dimension {name!r} is aggregated as distinct users, not sliced")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class GroupBy:
    """The configured dimension sets and the bound on distinct values."""

    sets: tuple[DimensionSet, ...] = ()
    max_values: int = DEFAULT_MAX_VALUES

    @classmethod
    def parse(cls, text: str, max_values: int = DEFAULT_MAX_VALUES) -> "GroupBy":
        """`country;country,device` -> two sets (empty text: none)."""
        sets: list[DimensionSet] = []
        for part in text.split(";"):
            if part.strip():
                parsed = parse_set(part)
                if parsed not in sets:
                    sets.append(parsed)
        if len(sets) > MAX_SETS:
            raise ConfigError(f"{len(sets)} dimension sets, limit {MAX_SETS}")
        if max_values < 1:
            raise ConfigError(f"the distinct values limit must be at least 1, got {max_values}")
        return cls(tuple(sets), max_values)

    @property
    def names(self) -> DimensionSet:
        """Every dimension some set names: the values the decoder reads, in this order."""
        return tuple(sorted({name for s in self.sets for name in s}))

    def __bool__(self) -> bool:
        return bool(self.sets)


def series(event_type: str, dimensions: DimensionSet, values: Iterable[str]) -> str:
    return SEP.join((event_type, set_name(dimensions), *values))


def is_series(event_type: str) -> bool:
    """Whether a window key's event type names a slice (rather than a campaign total)."""
    return SEP in event_type


def split_series(event_type: str) -> tuple[str, str, dict[str, str]]:
    """A slice's series -> (event type, set name, {dimension: value})."""
    base, name, *values = event_type.split(SEP)
    return base, name, dict(zip(name.split(","), values, strict=True))


def dimensions_json(dims: dict[str, str]) -> str:
    """The `dimensions` jsonb column's text: keys sorted, so equal slices store equally."""
    return json.dumps(dims, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def series_of_row(event_type: str, name: str, dims: dict[str, str]) -> str:
    """The series of a stored slice row (the inverse of `split_series`)."""
    dimensions = tuple(name.split(","))
    return series(event_type, dimensions, (dims[d] for d in dimensions))


def _clean(value: str) -> str:
    if not value:
        return MISSING
    if len(value) > MAX_DIMENSION_VALUE_CHARS or not value.isprintable():
        return OTHER
    return value


# Per day: one admitted-values set per dimension of `GroupBy.names`.
Admitted = dict[int, tuple[set[str], ...]]


class Slicer:
    """One partition's slicing: an event's dimension values -> the series of its slices.

    Holds the admitted values per dimension and UTC day; `overflow` counts, per
    dimension, the values sent to `OTHER` since the caller last took them.
    """

    def __init__(self, group_by: GroupBy, admitted: Admitted | None = None) -> None:
        self.group_by = group_by
        names = group_by.names
        # Per set, the positions of its dimensions in `names`.
        self._picks = [(dims, tuple(names.index(d) for d in dims)) for dims in group_by.sets]
        self._names = names
        self._admitted: Admitted = admitted if admitted is not None else {}
        self.overflow: dict[str, int] = {}
        # (day, event type, values) -> (series, dimensions sent to OTHER): a day's
        # answers never change (admitted values stay admitted, a full set stays full),
        # so the common repeat costs one lookup.
        self._answers: dict[tuple[int, str, tuple[str, ...]], tuple[list[str], list[str]]] = {}

    def series(self, event_type: str, ts: int, values: tuple[str, ...]) -> list[str]:
        """The series of the event's slices, one per dimension set, in set order."""
        day = bucket_start(ts, DAY_MS)
        known = self._answers.get((day, event_type, values))
        if known is not None:
            out, others = known
            for name in others:
                self.overflow[name] = self.overflow.get(name, 0) + 1
            return out
        out, others = self._decide(day, event_type, values)
        if len(self._answers) >= MAX_ANSWERS:
            self._answers.clear()
        self._answers[(day, event_type, values)] = (out, others)
        return out

    def _decide(
        self, day: int, event_type: str, values: tuple[str, ...]
    ) -> tuple[list[str], list[str]]:
        admitted = self._admitted.get(day)
        if admitted is None:
            admitted = self._admitted[day] = tuple(set() for _ in self._names)
        limit = self.group_by.max_values
        kept: list[str] = []
        others: list[str] = []
        for name, seen, raw in zip(self._names, admitted, values, strict=True):
            value = _clean(raw)
            if value not in seen and value not in (MISSING, OTHER):
                if len(seen) < limit:
                    seen.add(value)
                else:
                    value = OTHER
            if value == OTHER:
                self.overflow[name] = self.overflow.get(name, 0) + 1
                others.append(name)
            kept.append(value)
        out = [series(event_type, dims, [kept[i] for i in picks]) for dims, picks in self._picks]
        return out, others

    def take_overflow(self) -> dict[str, int]:
        out, self.overflow = self.overflow, {}
        return out

    def forget_before(self, ms: int) -> None:
        """Drop the admitted values of days that end at or before `ms`: no event of
        theirs can be counted any more (the caller's watermark minus its horizon)."""
        for day in [d for d in self._admitted if d + DAY_MS <= ms]:
            del self._admitted[day]
            self._answers.clear()  # the day starts afresh if an event of it comes

    def snapshot(self) -> "SlicerSnapshot":
        names = self._names
        return tuple(
            (day, tuple((name, tuple(sorted(s))) for name, s in zip(names, sets, strict=True)))
            for day, sets in sorted(self._admitted.items())
        )

    @classmethod
    def restore(cls, group_by: GroupBy, saved: "SlicerSnapshot") -> "Slicer":
        """Rebuild a snapshot; dimensions it lacks start with no admitted values."""
        admitted: Admitted = {}
        for day, entries in saved:
            by_name = dict(entries)
            admitted[day] = tuple(set(by_name.get(name, ())) for name in group_by.names)
        return cls(group_by, admitted)


# Per day, per dimension name, the admitted values.
SlicerSnapshot = tuple[tuple[int, tuple[tuple[str, tuple[str, ...]], ...]], ...]
