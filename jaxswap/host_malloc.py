"""glibc malloc settings that keep XLA:CPU's large temporary buffers mapped between steps.

Why: XLA:CPU's convolution input gradients allocate their column buffers (hundreds of MB at
batch 64) with malloc on every call. glibc serves blocks that large with a fresh mmap and
returns them with munmap on free, so every step the kernel faults in and zeroes ~1 GB of pages
again: ~300,000 page faults and 11 % of the `original` step's CPU time at batch 16 (`perf`).
With one arena, no mmap for large blocks and a high trim threshold, freed buffers stay in the
heap and the next step reuses them: no page faults after the first steps and a 15-20 % faster
`original` step at batch 16-64 (2-5 % for `quick` at batch 8), for a larger resident set (the step's peak working set stays mapped: 3.3 -> 4.0-4.5 GB
for `original` at batch 64). benchmarks/README.md, "CPU performance ideas", has the figures.

Rules (`decide` is the pure core, `apply_cpu_defaults` the entry-point hook), as in
`jaxswap.xla_flags`:
  - the user's allocator choice is never touched: any `MALLOC_*` variable (glibc's own
    settings), `GLIBC_TUNABLES` naming `glibc.malloc`, or an allocator in `LD_PRELOAD`
    (jemalloc, tcmalloc, mimalloc) leaves malloc as it is. `MALLOC_ARENA_MAX=8`, say, opts out;
  - only on Linux with glibc, found through ctypes;
  - only when the default platform is the CPU (on a GPU host the large buffers live on the
    device and the host's malloc does not matter);
  - only before jax's backends exist: a thread's arena is chosen at its first malloc, so the
    single arena only holds for threads (XLA's, Eigen's) started after the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import sys
from typing import Callable, MutableMapping

from jaxswap import xla_flags

# mallopt parameters (glibc malloc.h) and the values jaxswap sets.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_ARENA_MAX", M_ARENA_MAX, 1),  # every thread allocates from the main (brk) heap
    ("M_MMAP_MAX", M_MMAP_MAX, 0),  # large blocks come from that heap, not a fresh mmap
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, 2**31 - 1),  # freed memory stays mapped (<= 2 GiB)
)
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


@dataclasses.dataclass(frozen=True)
class Decision:
  """What the hook did; recorded in the run's log and in every benchmark JSON."""
  applied: bool
  reason: str

  def as_dict(self) -> dict:
    return {"host_malloc_set_by_jaxswap": self.applied, "host_malloc_reason": self.reason}

  def log_line(self) -> str:
    if self.applied:
      settings = ", ".join(f"{name}={value}" for name, _, value in SETTINGS)
      return f"glibc malloc set by jaxswap ({settings}): {self.reason}"
    return f"malloc left as is ({self.reason})"


_last: Decision | None = None


def user_choice(environ: MutableMapping[str, str]) -> str | None:
  """The user's own allocator setting, described, or None."""
  names = sorted(k for k in environ if k.startswith("MALLOC_"))
  if names:
    return f"{names[0]} set by the user"
  if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
    return "GLIBC_TUNABLES sets glibc.malloc"
  preload = environ.get("LD_PRELOAD", "")
  for name in PRELOADED_ALLOCATORS:
    if name in preload:
      return f"{name} preloaded"
  return None


def _glibc_mallopt() -> Callable[[int, int], int] | None:
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  # glibc only (not musl)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return mallopt


def decide(environ: MutableMapping[str, str], has_glibc: bool, platform: str,
           backends_initialised: bool = False, enabled: bool = True) -> Decision:
  """Pure: whether to apply SETTINGS, and why."""
  if not enabled:
    return Decision(False, "jaxswap's CPU defaults turned off by the caller")
  choice = user_choice(environ)
  if choice:
    return Decision(False, choice)
  if not has_glibc:
    return Decision(False, "not Linux with glibc")
  if platform != "cpu":
    return Decision(False, f"platform {platform}, not cpu")
  if backends_initialised:
    return Decision(False, "jax's backends already exist; their threads have their arenas")
  return Decision(True, "XLA:CPU's large temporary buffers are reused instead of "
                  "page-faulted in again every step")


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None,
                       enabled: bool = True) -> Decision:
  """Entry-point hook: calls mallopt when `decide` says so; returns (and remembers) why."""
  global _last
  environ = os.environ if environ is None else environ
  mallopt = _glibc_mallopt()
  decision = decide(environ, mallopt is not None, xla_flags.current_platform(environ),
                    xla_flags.backends_initialised(), enabled)
  if decision.applied:
    failed = [name for name, param, value in SETTINGS if mallopt(param, value) != 1]
    if failed:
      decision = Decision(False, f"mallopt refused {', '.join(failed)}")
  _last = decision
  return decision


def last_decision() -> Decision | None:
  """The decision of the latest apply_cpu_defaults in this process (None: never called)."""
  return _last


def describe() -> dict:
  """For benchmark JSON: whether jaxswap set malloc, and why."""
  if _last is None:
    return {"host_malloc_set_by_jaxswap": False,
            "host_malloc_reason": "jaxswap's CPU defaults were not consulted"}
  return _last.as_dict()
