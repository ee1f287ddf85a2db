"""`Partial.of`: one batch's events of a window, folded; the one-event path included."""

import random

import pytest

from pulse.aggregation import Partial, to_micros


def general(events: list[tuple[int, float, str, int, bytes]]) -> Partial:
    """The fold written out, as a reference."""
    times, values, users, offsets, raws = zip(*events, strict=True)
    return Partial(
        len(events),
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


@pytest.mark.parametrize("size", [1, 2, 7])
def test_a_partial_folds_its_events_exactly(size: int) -> None:
    rng = random.Random(size)
    for _ in range(500):
        events = [
            (
                rng.randrange(10**13),
                rng.choice([rng.uniform(-1e9, 1e9), rng.randrange(400) / 8, 0.1 + 0.2]),
                f"user-{rng.randrange(10)}",
                rng.randrange(10**6),
                b"raw",
            )
            for _ in range(size)
        ]
        assert Partial.of(events) == general(events)
