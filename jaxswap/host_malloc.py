"""glibc malloc settings that keep XLA:CPU's large temporary buffers mapped between steps.

Why: XLA:CPU's convolution input gradients allocate their column buffers (hundreds of MB at
batch 64) with malloc on every call. glibc serves blocks that large with a fresh mmap and
returns them with munmap on free, so every step the kernel faults in and zeroes ~1 GB of pages
again: ~300,000 page faults and 11 % of the `original` step's CPU time at batch 16 (`perf`).
With one arena, no mmap for large blocks and a high trim threshold, freed buffers stay in the
heap and the next step reuses them: no page faults after the first steps and a 15-20 % faster
`original` step at batch 16-64 (2-5 % for `quick` at batch 8), for a larger resident set (the
step's peak working set stays mapped: 3.3 -> 4.0-4.5 GB for `original` at batch 64).
benchmarks/README.md, "CPU performance ideas", has the figures.

Rules (`decide` is the pure core, `apply_cpu_defaults` the entry-point hook), as in
`jaxswap.xla_flags`:
  - the user's allocator choice is never touched: any `MALLOC_*` variable (glibc's own
    settings), `GLIBC_TUNABLES` naming `glibc.malloc`, or an allocator in `LD_PRELOAD`
    (jemalloc, tcmalloc, mimalloc) leaves malloc as it is. `MALLOC_ARENA_MAX=8`, say, opts out;
  - only on Linux with glibc, found through ctypes;
  - only when the default platform is the CPU (on a GPU host the large buffers live on the
    device and the host's malloc does not matter);
  - only before jax's backends exist: a thread's arena is chosen at its first malloc. glibc
    also hands a new thread an arena freed by a thread that already exited, so mallopt after
    the imports does not always bind XLA's threads to the main heap (2 runs in 8 kept their
    faults); the console entry points therefore re-execute themselves with the settings in
    GLIBC_TUNABLES (`apply_cpu_defaults(reexec=True)`), which glibc reads before any thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import sys
from typing import Callable, MutableMapping

from jaxswap import xla_flags

# The settings: mallopt name and parameter (glibc malloc.h), the same setting's glibc tunable
# (read at process start, before any thread exists), and the value jaxswap sets.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS: tuple[tuple[str, int, str, int], ...] = (
    # every thread allocates from the main (brk) heap
    ("M_ARENA_MAX", M_ARENA_MAX, "glibc.malloc.arena_max", 1),
    # large blocks come from that heap, not a fresh mmap
    ("M_MMAP_MAX", M_MMAP_MAX, "glibc.malloc.mmap_max", 0),
    # freed memory stays mapped (up to 2 GiB free at the heap's top)
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, "glibc.malloc.trim_threshold", 2**31 - 1),
)
REASON = "XLA:CPU's large temporary buffers are reused instead of page-faulted in again every step"
REEXEC_MARK = "JAXSWAP_HOST_MALLOC_REEXEC"  # set across the re-exec: the user's GLIBC_TUNABLES
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
      settings = ", ".join(f"{name}={value}" for name, _, _, value in SETTINGS)
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
  return Decision(True, REASON)


def _tunables(previous: str) -> str:
  ours = ":".join(f"{tunable}={value}" for _, _, tunable, value in SETTINGS)
  return f"{previous}:{ours}" if previous else ours


def _restore_tunables(environ: MutableMapping[str, str], previous: str) -> None:
  """GLIBC_TUNABLES back to the user's value (unset when they had none)."""
  if previous:
    environ["GLIBC_TUNABLES"] = previous
  else:
    environ.pop("GLIBC_TUNABLES", None)


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None,
                       enabled: bool = True, reexec: bool = False) -> Decision:
  """Entry-point hook: applies SETTINGS when `decide` says so; returns (and remembers) why.

  reexec=True (the console entry points, which own their process): the settings go into
  GLIBC_TUNABLES and the process re-executes itself (same PID, same command line), so glibc
  reads them before any thread exists; the re-executed process removes them from its
  environment again, so that its own children (ffmpeg, ...) keep glibc's defaults. Otherwise
  (or when exec fails) mallopt sets them in place: that holds for every thread started later,
  except those glibc hands an arena created before the call (a thread that ran during the
  imports), for which large blocks are mapped afresh as before.
  """
  global _last
  environ = os.environ if environ is None else environ
  if environ.get(REEXEC_MARK) is not None:  # we are the re-executed process
    _restore_tunables(environ, environ.pop(REEXEC_MARK))
    _last = Decision(True, f"{REASON} (GLIBC_TUNABLES at start)")
    return _last
  mallopt = _glibc_mallopt()
  decision = decide(environ, mallopt is not None, xla_flags.current_platform(environ),
                    xla_flags.backends_initialised(), enabled)
  if decision.applied and reexec and environ is os.environ and getattr(sys, "orig_argv", None):
    previous = environ.get("GLIBC_TUNABLES", "")
    environ[REEXEC_MARK] = previous
    environ["GLIBC_TUNABLES"] = _tunables(previous)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
      os.execv(sys.executable, list(sys.orig_argv))
    except OSError:  # cannot re-execute (e.g. no executable path): set them in place below
      environ.pop(REEXEC_MARK, None)
      _restore_tunables(environ, previous)
  if decision.applied:
    failed = [name for name, param, _, value in SETTINGS if mallopt(param, value) != 1]
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
