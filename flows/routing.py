"""Which worker holds a partition's window state: balanced state keys.

Bytewax sends every key of a stateful step to worker `hash(key) % workers`, with Rust's
default hasher (SipHash-1-3 with zero keys) over the key string. Keyed by the partition
number alone, the four partitions of `events.raw` all hashed to worker 1 of 2: a second
process read Kafka and handed every record over, and did none of the aggregation.

So a partition's key is its number and a suffix, `"3.1207"`: the first suffix whose hash
is the partition number modulo `SPREAD`. Partition `p` then lives on worker
`p % workers` for every worker count that divides `SPREAD` (1 to 10, 12, 14, 15, 18, 20,
21, 24, 28, 30, 35, 36, 40, 42, 45, ...), and the key never depends on the count: a
recovery store written by one cluster size resumes in another. Another count still
works, with the keys spread as hashes spread.
"""

from functools import lru_cache
from typing import NamedTuple

from pulse.errors import ConfigError
from pulse.windowing import PartitionSnapshot

SPREAD = 2520  # the least common multiple of 1..10
_MASK = (1 << 64) - 1


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with keys (0, 0): what Rust's `DefaultHasher::default()` computes."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    whole = n - n % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def key_hash(key: str) -> int:
    """The hash Bytewax routes a state key by (a Rust `str` hashes its bytes, then 0xFF)."""
    return siphash13(key.encode() + b"\xff")


@lru_cache(maxsize=4096)
def state_key(partition: int) -> str:
    """The window state's key for a partition: on worker `partition % workers`."""
    target = partition % SPREAD
    suffix = 0
    while key_hash(f"{partition}.{suffix}") % SPREAD != target:
        suffix += 1
    return f"{partition}.{suffix}"


class KeyedSnapshot(NamedTuple):
    """A partition's snapshot with the key it was stored under."""

    key: str
    state: PartitionSnapshot


def unwrap(resume: object) -> PartitionSnapshot:
    """The partition's state from a resume snapshot; refuses a store of older keys."""
    if isinstance(resume, KeyedSnapshot):
        return resume.state
    msg = (
        "the recovery store holds window state keyed by partition number alone, as "
        "written before balanced state keys; it cannot resume here (see the README's "
        "Deploy section, upgrading a recovery store)"
    )
    raise ConfigError(msg)
