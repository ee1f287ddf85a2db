"""Process memory settings of the dataflow worker.

The dedup id memory (`pulse.dedup`) keeps its ids in numpy arrays that are merged into
new, larger arrays and freed. glibc raises its mmap threshold after such frees (up to
32 MiB), so later arrays come from the heap, and freed heap pages stay resident:
measured, 37 bytes of resident memory an id instead of 23. A fixed threshold maps every
array of 1 MiB or more directly and returns it to the system when freed.

The window state holds millions of small containers at high cardinality (a few per open
window and accumulator), and CPython's cyclic garbage collector traverses them: with its
default thresholds (700, 10, 10) a young collection runs every 700 allocations, and the
older generations, which hold the state, are traversed again and again as it grows. The
state makes almost no reference cycles, so the worker collects less often.
"""

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_ARRAY_BYTES = 1 << 20


def map_large_arrays(threshold: int = LARGE_ARRAY_BYTES) -> bool:
    """Allocate blocks of `threshold` bytes or more with mmap (glibc); False elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; large arrays may stay resident")
    return ok


# Young collection every 100,000 net allocations (more than a batch of 5,000 events
# allocates, so its objects die young), middle every 20 of those, the oldest
# every 100 of those (and, as always, only once its pending objects reach a quarter of
# it). Measured on the window step at 100,000 campaigns: 25% of its time went to the
# collector with the defaults; see the README's Performance section.
GC_THRESHOLDS = (100_000, 20, 100)


def collect_less(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Freeze what start-up allocated (never traversed again) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
