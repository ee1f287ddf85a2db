"""Mergeable sketches: HyperLogLog for distinct users, KLL for value quantiles.

Apache DataSketches, with parameters chosen for the stated error bounds:
- HLL with lg_k = 14: relative standard error 0.81%, so within 2% at 2.5 sigma;
- KLL with k = 400: normalised rank error 0.68% (99% confidence), within 1%.

Sketches cross process boundaries (Bytewax snapshots, the database) only as bytes.
"""

import math
from collections.abc import Iterable, Sequence

import datasketches as ds
import numpy as np

HLL_LG_K = 14
HLL_TYPE = ds.tgt_hll_type.HLL_4
KLL_K = 400
QUANTILES = (0.5, 0.95, 0.99)

# The guarantees tests check the sketches against.
HLL_RELATIVE_ERROR = 0.02
KLL_RANK_ERROR = 0.01

HllSketch = ds.hll_sketch
KllSketch = ds.kll_doubles_sketch


def new_hll() -> ds.hll_sketch:
    return ds.hll_sketch(HLL_LG_K, HLL_TYPE)


def new_kll() -> ds.kll_doubles_sketch:
    return ds.kll_doubles_sketch(KLL_K)


def hll_of(users: Iterable[str]) -> ds.hll_sketch:
    """A new HLL sketch of these users."""
    sketch = new_hll()
    add_users(sketch, users)
    return sketch


def kll_of(values: Sequence[float]) -> ds.kll_doubles_sketch:
    """A new KLL sketch of these values."""
    sketch = new_kll()
    add_values(sketch, values)
    return sketch


def add_users(sketch: ds.hll_sketch, users: Iterable[str]) -> None:
    """Add user ids; empty ids (events without a user) are not users and are skipped."""
    update = sketch.update
    for user in users:
        if user:
            update(user)


_FEW_VALUES = 32  # up to this many, a call per value beats converting them to an array


def add_values(sketch: ds.kll_doubles_sketch, values: Sequence[float]) -> None:
    """Add values: a few one by one, more in one call (a numpy array: one C loop)."""
    if len(values) > _FEW_VALUES:
        sketch.update(np.asarray(values, dtype=np.float64))
        return
    update = sketch.update
    for value in values:
        update(value)


def distinct(sketch: ds.hll_sketch) -> int:
    """The distinct-count estimate, rounded to an integer."""
    estimate: float = sketch.get_estimate()
    return round(estimate)


def quantiles(sketch: ds.kll_doubles_sketch) -> tuple[float, float, float] | None:
    """(p50, p95, p99), or None for an empty sketch."""
    if sketch.is_empty():
        return None
    p50, p95, p99 = sketch.get_quantiles(list(QUANTILES))
    return float(p50), float(p95), float(p99)


def exact_quantiles(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(p50, p95, p99) of a few values, as a KLL sketch holding them answers: the value at
    sorted position floor(q * n). KLL keeps every value until it holds `KLL_K`, so the
    two agree exactly below that (tests check it for every n up to `KLL_K`)."""
    n = len(values)
    if n <= 1:
        return (values[0],) * 3 if n else None
    ordered = sorted(values)
    last = n - 1
    return (
        ordered[min(last, math.floor(QUANTILES[0] * n))],
        ordered[min(last, math.floor(QUANTILES[1] * n))],
        ordered[min(last, math.floor(QUANTILES[2] * n))],
    )


def percentiles(sketch: ds.kll_doubles_sketch) -> tuple[float | None, float | None, float | None]:
    """(p50, p95, p99), or three Nones for an empty sketch (as stored in the tables)."""
    q = quantiles(sketch)
    return q if q is not None else (None, None, None)


def hll_bytes(sketch: ds.hll_sketch) -> bytes:
    return bytes(sketch.serialize_compact())


def kll_bytes(sketch: ds.kll_doubles_sketch) -> bytes:
    return bytes(sketch.serialize())


def hll_from(data: bytes) -> ds.hll_sketch:
    return ds.hll_sketch.deserialize(data)


def kll_from(data: bytes) -> ds.kll_doubles_sketch:
    return ds.kll_doubles_sketch.deserialize(data)


def merge_hll(sketches: Iterable[ds.hll_sketch]) -> ds.hll_sketch:
    """The union of HLL sketches (exactly what one sketch of all inputs would hold)."""
    union = ds.hll_union(HLL_LG_K)
    for sketch in sketches:
        union.update(sketch)
    return union.get_result(HLL_TYPE)


def merge_kll(sketches: Iterable[ds.kll_doubles_sketch]) -> ds.kll_doubles_sketch:
    merged = new_kll()
    for sketch in sketches:
        merged.merge(sketch)
    return merged
