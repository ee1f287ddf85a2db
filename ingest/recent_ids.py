"""The event ids this edge had Kafka acknowledge recently: retries it can answer itself.

A client that retries a call (after a lost reply, a deadline, or UNAVAILABLE) re-sends
events this edge may already have written. Those it remembers are not written again
and are reported in `IngestResponse.duplicates`. An id is remembered only once Kafka
acknowledged it, so a retry of an event that never reached Kafka is always written.
Retries this edge cannot see (sent to another replica, or older than its memory) are
dropped by the dataflow, which keeps the authoritative memory per partition.

The memory is the dataflow's structure (`pulse.dedup.IdMemory`, 20 bytes an id) on
this edge's clock, bounded by the dedup horizon and by `max_ids` (oldest first).
"""

from collections.abc import Callable

import numpy as np

from pulse.dedup import DIGEST_BYTES, IdMemory, Mask


class RecentIds:
    """Acknowledged event-id hashes of this edge, within the horizon, at most `max_ids`."""

    def __init__(self, horizon_s: int, max_ids: int, clock_ms: Callable[[], int]) -> None:
        self._memory = IdMemory(horizon_s)
        self._max_ids = max_ids
        self._clock_ms = clock_ms

    def __len__(self) -> int:
        return len(self._memory)

    def seen(self, digests: bytes) -> Mask:
        """True for ids acknowledged within the horizon."""
        n = len(digests) // DIGEST_BYTES
        return self._memory.seen(digests, np.full(n, self._clock_ms(), dtype=np.int64))

    def remember(self, digests: bytes) -> None:
        """Ids Kafka has just acknowledged."""
        n = len(digests) // DIGEST_BYTES
        self._memory.remember(digests, np.full(n, self._clock_ms(), dtype=np.int64))
        if len(self._memory) > self._max_ids + self._max_ids // 4:  # shrink now and then
            self._memory.shrink_to(self._max_ids)
