"""The sketches meet their stated error bounds, and merging equals sketching everything."""

import random

import pytest

from pulse import sketches


def exact_rank_error(sorted_values: list[float], q: float, estimate: float) -> float:
    """|rank(estimate) - q| with rank the fraction of values <= estimate."""
    lo, hi = 0, len(sorted_values)
    while lo < hi:  # bisect_right
        mid = (lo + hi) // 2
        if sorted_values[mid] <= estimate:
            lo = mid + 1
        else:
            hi = mid
    return abs(lo / len(sorted_values) - q)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_distinct_users_within_two_percent_at_100k(seed: int) -> None:
    rng = random.Random(seed)
    users = [f"user-{seed}-{i}" for i in range(100_000)]
    stream = users + [rng.choice(users) for _ in range(50_000)]  # repeats do not count
    rng.shuffle(stream)
    hll = sketches.new_hll()
    sketches.add_users(hll, stream)
    assert abs(sketches.distinct(hll) - 100_000) / 100_000 <= sketches.HLL_RELATIVE_ERROR


def test_merged_hll_is_within_bounds_and_insensitive_to_overlap() -> None:
    users = [f"u{i}" for i in range(30_000)]
    whole = sketches.new_hll()
    sketches.add_users(whole, users)
    parts = []
    for i in range(0, len(users), 7_000):
        part = sketches.new_hll()
        sketches.add_users(part, users[i : i + 7_000] + users[:50])  # overlaps too
        parts.append(sketches.hll_from(sketches.hll_bytes(part)))
    merged = sketches.distinct(sketches.merge_hll(parts))
    assert merged == sketches.distinct(sketches.merge_hll(parts + parts))  # idempotent
    assert abs(merged - 30_000) / 30_000 <= sketches.HLL_RELATIVE_ERROR
    assert abs(sketches.distinct(whole) - 30_000) / 30_000 <= sketches.HLL_RELATIVE_ERROR


def test_empty_user_ids_are_not_users() -> None:
    hll = sketches.new_hll()
    sketches.add_users(hll, ["", "a", "", "b", "a"])
    assert sketches.distinct(hll) == 2


@pytest.mark.parametrize("shape", ["uniform", "lognormal", "few_distinct"])
def test_quantiles_within_one_percent_rank_error(shape: str) -> None:
    rng = random.Random(shape)
    draw = {
        "uniform": lambda: rng.uniform(0, 1000),
        "lognormal": lambda: rng.lognormvariate(1, 1.5),
        "few_distinct": lambda: float(rng.randrange(20)),
    }[shape]
    values = [draw() for _ in range(200_000)]
    kll = sketches.new_kll()
    for i in range(0, len(values), 5_000):  # as the flow feeds it: batch by batch
        sketches.add_values(kll, values[i : i + 5_000])
    estimates = sketches.quantiles(kll)
    assert estimates is not None
    ordered = sorted(values)
    for q, estimate in zip(sketches.QUANTILES, estimates, strict=True):
        if shape == "few_distinct":
            # With ties, the estimate must be a value whose rank interval contains q +- 1%.
            below = sum(1 for v in ordered if v < estimate) / len(ordered)
            upto = sum(1 for v in ordered if v <= estimate) / len(ordered)
            assert below - sketches.KLL_RANK_ERROR <= q <= upto + sketches.KLL_RANK_ERROR
        else:
            assert exact_rank_error(ordered, q, estimate) <= sketches.KLL_RANK_ERROR


def test_merged_kll_stays_within_bounds() -> None:
    rng = random.Random(4)
    values = [rng.expovariate(0.1) for _ in range(100_000)]
    parts = []
    for i in range(0, len(values), 10_000):
        part = sketches.new_kll()
        sketches.add_values(part, values[i : i + 10_000])
        parts.append(sketches.kll_from(sketches.kll_bytes(part)))
    merged = sketches.merge_kll(parts)
    estimates = sketches.quantiles(merged)
    assert estimates is not None
    ordered = sorted(values)
    for q, estimate in zip(sketches.QUANTILES, estimates, strict=True):
        assert exact_rank_error(ordered, q, estimate) <= sketches.KLL_RANK_ERROR


def test_an_empty_kll_has_no_quantiles() -> None:
    assert sketches.quantiles(sketches.new_kll()) is None
