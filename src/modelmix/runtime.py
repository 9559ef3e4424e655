"""What a running merge does to its process and its terminal: glibc's malloc thresholds, set once, and the
progress display. Kept apart from the executor, which owns the arithmetic and the threads."""

from __future__ import annotations

import math
import sys
import threading
import time

_MALLOC_TUNED = False



def bound_malloc() -> None:
    """Fix glibc's mmap and trim thresholds (process-wide, once).

    glibc raises its mmap threshold dynamically after large blocks are freed, after which whole-tensor
    temporaries come from per-thread heap arenas that fragment and never shrink (a 1.1B TIES merge once
    peaked at 1.96 GB instead of 0.43 GB). A fixed 8 MiB threshold keeps those on mmap, returned to the OS
    on free, while chunk-sized temporaries (<= 2 MiB) stay on the heap, and a high trim threshold keeps
    glibc from handing that heap back after every chunk. With a 1 MiB threshold every chunk temporary was
    a fresh mmap: 1.4M page faults (3-4 s of system time) in a 1.1B linear merge, 50K with these settings.
    No-op where glibc's mallopt is unavailable.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 8 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class Progress:
    """tqdm bar on a terminal, plain periodic log lines otherwise, nothing when quiet."""

    def __init__(self, total_bytes: int, n_tensors: int, *, quiet: bool, stream=None):
        self.total = total_bytes
        self.done = 0
        self.tensors = 0
        self.n_tensors = n_tensors
        self.lock = threading.Lock()
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.bar = None
        self._next_log = 0.1
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="merging", file=self.stream, dynamic_ncols=True)

    def update(self, nbytes: int, finished_tensor: bool) -> None:
        with self.lock:
            self.done += nbytes
            self.tensors += finished_tensor
            if self.bar is not None:
                self.bar.update(nbytes)
                if finished_tensor:
                    self.bar.set_postfix_str(f"{self.tensors}/{self.n_tensors} tensors", refresh=False)
            elif (not self.quiet and self.total and self.done / self.total >= self._next_log
                  and time.perf_counter() - self.t0 >= 2.0):  # no log lines for merges that take a moment
                el = time.perf_counter() - self.t0
                frac = self.done / self.total
                eta = el / frac - el if frac else 0
                print(
                    f"modelmix: {frac:4.0%} {self.tensors}/{self.n_tensors} tensors, "
                    f"{self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB, {el:.1f}s elapsed, ETA {eta:.0f}s",
                    file=self.stream,
                    flush=True,
                )
                self._next_log = math.floor(frac * 10 + 1) / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
