"""Process memory settings of the dataflow worker.

The dedup id memory (`pulse.dedup`) keeps its ids in numpy arrays that are merged into
new, larger arrays and freed. glibc raises its mmap threshold after such frees (up to
32 MiB), so later arrays come from the heap, and freed heap pages stay resident:
measured, 37 bytes of resident memory an id instead of 23. A fixed threshold maps every
array of 1 MiB or more directly and returns it to the system when freed.
"""

import ctypes
import ctypes.util
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
