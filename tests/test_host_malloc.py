"""jaxswap.host_malloc: glibc keeps freed large buffers only when the user chose no allocator.

The decision tests pass their own environment dict; the behaviour tests run fresh interpreters,
since mallopt changes the whole process.
"""

import os
import subprocess
import sys

import pytest

from jaxswap import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_applied_on_a_plain_cpu_host():
  decision = host_malloc.decide({"PATH": "/bin"}, has_glibc=True, platform="cpu")
  assert decision.applied
  assert "M_MMAP_MAX=0" in decision.log_line() and "M_ARENA_MAX=1" in decision.log_line()
  assert decision.as_dict() == {"host_malloc_set_by_jaxswap": True,
                                "host_malloc_reason": decision.reason}


@pytest.mark.parametrize("env,reason", [
    ({"MALLOC_ARENA_MAX": "8"}, "MALLOC_ARENA_MAX set by the user"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_ set by the user"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, "GLIBC_TUNABLES sets glibc.malloc"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "jemalloc preloaded"),
])
def test_the_users_allocator_choice_is_left_alone(env, reason):
  decision = host_malloc.decide(env, has_glibc=True, platform="cpu")
  assert not decision.applied and decision.reason == reason
  assert "left as is" in decision.log_line()


def test_not_applied_off_cpu_without_glibc_too_late_or_when_turned_off():
  env = {"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=0"}  # not a malloc tunable
  assert host_malloc.decide(env, True, "cpu").applied
  assert host_malloc.decide(env, True, "accelerator?").reason == "platform accelerator?, not cpu"
  assert host_malloc.decide(env, False, "cpu").reason == "not Linux with glibc"
  assert "already exist" in host_malloc.decide(env, True, "cpu", backends_initialised=True).reason
  assert "turned off" in host_malloc.decide(env, True, "cpu", enabled=False).reason


# Allocates, touches and frees a 256 MiB block twice through libc; prints the decision and the
# page faults of the second round (glibc's default maps such a block afresh every time).
_PROBE = r"""
import ctypes, resource, sys
from jaxswap import host_malloc
import os
d = host_malloc.apply_cpu_defaults(enabled=sys.argv[1] != "off", reexec=sys.argv[1] == "reexec")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 << 20
for round in range(2):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(size)
  ctypes.memset(p, 1, size)
  libc.free(p)
print(d.applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
      os.environ.get("GLIBC_TUNABLES", "-"), d.reason.replace(" ", "_"))
"""


GLIBC_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux") or host_malloc._glibc_mallopt() is None
    or any(a in os.environ.get("LD_PRELOAD", "") for a in host_malloc.PRELOADED_ALLOCATORS),
    reason="needs Linux with glibc's own malloc")


def _probe(mode: str, **env) -> tuple[bool, int, str, str]:
  environ = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
  environ.update(env, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  lines = subprocess.run([sys.executable, "-c", _PROBE, mode], env=environ, capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
  assert len(lines) == 1, lines  # one process printed, once
  out = lines[0].split()
  return out[0] == "True", int(out[1]), out[2], out[3]


@GLIBC_ONLY
def test_freed_large_buffers_are_reused_without_page_faults():
  applied, faults, _, _ = _probe("on")  # mallopt in place
  assert applied and faults < 1000  # the second 256 MiB block reuses the first one's pages
  applied, faults, _, _ = _probe("on", MALLOC_ARENA_MAX="8")  # the user's choice: glibc's own
  assert not applied and faults > 30000  # 65,536 pages of 4 KiB mapped and zeroed again
  applied, faults, _, _ = _probe("off")
  assert not applied and faults > 30000


@GLIBC_ONLY
def test_reexec_applies_the_tunables_at_start_and_hides_them_from_children():
  applied, faults, tunables, reason = _probe("reexec")
  assert applied and faults < 1000 and "GLIBC_TUNABLES_at_start" in reason
  assert tunables == "-"  # removed again: ffmpeg & co. keep glibc's defaults
  # The user's own non-malloc tunables survive the round trip.
  applied, faults, tunables, _ = _probe("reexec", GLIBC_TUNABLES="glibc.rtld.nns=4")
  assert applied and faults < 1000 and tunables == "glibc.rtld.nns=4"


def test_the_reexecuted_process_restores_the_environment():
  env = {host_malloc.REEXEC_MARK: "", "GLIBC_TUNABLES": host_malloc._tunables("")}
  assert host_malloc.apply_cpu_defaults(env).applied and env == {}
  env = {host_malloc.REEXEC_MARK: "glibc.rtld.nns=4",
         "GLIBC_TUNABLES": host_malloc._tunables("glibc.rtld.nns=4")}
  assert host_malloc.apply_cpu_defaults(env).applied
  assert env == {"GLIBC_TUNABLES": "glibc.rtld.nns=4"}
