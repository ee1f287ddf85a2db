"""`WindowAggregate`: exact users and values while few, sketches beyond, same answers."""

import pickle
import random

from pulse import sketches
from pulse.aggregation import FrozenAggregate, Partial, WindowAggregate

T0 = 1_764_000_000_000


def partials(rng: random.Random, events: int, users: int) -> list[Partial]:
    out = []
    i = 0
    while i < events:
        size = min(rng.choice([1, 2, 5, 13]), events - i)
        out.append(
            Partial.of(
                [
                    (
                        T0 + i + k,
                        rng.choice([rng.randrange(400) / 8, rng.uniform(-1e6, 1e6), 1.0]),
                        rng.choice(["", f"user-{rng.randrange(users)}"]),
                        i + k,
                        b"",
                    )
                    for k in range(size)
                ]
            )
        )
        i += size
    return out


def sketched() -> WindowAggregate:
    """An aggregate that holds sketches from the start (as every one did before)."""
    agg = WindowAggregate()
    assert agg.users is not None and agg.values is not None  # made now: sketches from here
    return agg


def test_exact_quantiles_answer_as_kll_does_below_its_capacity() -> None:
    rng = random.Random(1)
    for n in range(1, sketches.KLL_K + 1):
        values = [rng.choice([rng.randrange(40) / 8, rng.uniform(-1e9, 1e9)]) for _ in range(n)]
        kll = sketches.new_kll()
        sketches.add_values(kll, values)
        assert sketches.exact_quantiles(values) == sketches.quantiles(kll), n
    assert sketches.exact_quantiles([]) is None


def test_rows_are_the_same_exact_or_sketched_and_promotion_happens_past_small() -> None:
    rng = random.Random(2)
    for events in (1, 3, WindowAggregate.SMALL, WindowAggregate.SMALL + 1, 150, 399):
        parts = partials(rng, events, users=60)
        exact, sketch = WindowAggregate(), sketched()
        for part in parts:
            exact.merge(part)
            sketch.merge(part)
        for closed in (False, True):
            got = exact.row("c", "click", T0, closed)
            want = sketch.row("c", "click", T0, closed)
            assert (got.unique_users, got.value_p50, got.value_p95, got.value_p99) == (
                want.unique_users,
                want.value_p50,
                want.value_p95,
                want.value_p99,
            ), events
            assert got.event_count == want.event_count == events
            users = {u for p in parts for u in p.users if u}
            assert got.unique_users == len(users)


def test_frozen_copies_round_trip_exact_and_sketched() -> None:
    rng = random.Random(3)
    for events in (2, 100):
        agg = WindowAggregate()
        for part in partials(rng, events, users=1000):
            agg.merge(part)
        frozen = agg.freeze()
        assert (frozen.value_list is None) == (events > WindowAggregate.SMALL)
        thawed = WindowAggregate.thaw(pickle.loads(pickle.dumps(frozen)))
        got, want = thawed.row("c", "click", T0, True), agg.row("c", "click", T0, True)
        # A sketch read back may serialize its entries in another order: compare content.
        assert got._replace(users_sketch=None) == want._replace(users_sketch=None)
        assert got.users_sketch is not None and want.users_sketch is not None
        assert sketches.distinct(sketches.hll_from(got.users_sketch)) == want.unique_users


def test_copies_frozen_before_exact_sets_existed_still_thaw() -> None:
    agg = sketched()
    agg.merge(Partial.of([(T0, 2.5, "u1", 0, b""), (T0 + 1, 4.0, "u2", 1, b"")]))
    new = agg.freeze()
    old = object.__new__(FrozenAggregate)
    old.__setstate__([getattr(new, name) for name in FrozenAggregate.__dataclass_fields__][:8])  # type: ignore[attr-defined]
    thawed = WindowAggregate.thaw(old)
    assert thawed.row("c", "click", T0, False) == agg.row("c", "click", T0, False)
    assert thawed.distinct_users() == 2


def test_a_frozen_copy_is_made_once_per_change() -> None:
    agg = WindowAggregate()
    agg.merge(Partial.of([(T0, 2.5, "u1", 0, b"")]))
    first = agg.freeze()
    assert agg.freeze() is first  # unchanged: the same copy
    agg.merge(Partial.of([(T0 + 1, 4.0, "u2", 1, b"")]))
    second = agg.freeze()
    assert second is not first
    assert (second.count, second.value_list, set(second.user_set or ())) == (
        2,
        (2.5, 4.0),
        {"u1", "u2"},
    )


def test_a_window_made_of_its_first_partial_equals_one_that_merged_it() -> None:
    rng = random.Random(8)
    cases = [
        Partial.of([(T0, 2.5, "u", 0, b"")]),
        Partial.of([(T0, 2.5, "", 0, b"")]),
        Partial.of([(T0 + k, k / 4, f"u{k % 3}", k, b"") for k in range(7)]),
        Partial.of([(T0 + k, k / 4, f"u{k}", k, b"") for k in range(WindowAggregate.SMALL + 5)]),
        *partials(rng, 300, 50),
    ]
    for part in cases:
        merged = WindowAggregate()
        merged.merge(part)
        made = WindowAggregate.of(part)
        assert made.row("c", "t", T0, closed=True) == merged.row("c", "t", T0, closed=True)
        assert made.freeze() == merged.freeze()
        # Both go on alike: another partial, exact or past SMALL.
        more = cases[3]
        made.merge(more)
        merged.merge(more)
        assert made.row("c", "t", T0, closed=True) == merged.row("c", "t", T0, closed=True)
