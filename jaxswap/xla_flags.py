"""The fastest measured XLA:CPU settings, applied to `XLA_FLAGS` before jax creates its backend.

Why: on XLA:CPU, jax 0.10 routes convolutions, dots and their elementwise neighbours through
YNNPACK fusions by default; XLA's own kernels run jaxswap's networks 1.15-1.65x faster
(benchmarks/README.md, "CPU performance ideas"). The flag that turns those fusions off is
experimental: XLA aborts the process on a flag it does not know, and the name may change between
releases, so it is only set on the jaxlib versions where it was verified to exist.

Rules (`decide` is the pure core, `apply_cpu_defaults` the entry-point hook):
  - the user's `XLA_FLAGS` is never touched, not even appended to: set it (even to an empty
    string, `XLA_FLAGS=`) to opt out;
  - only on jaxlib versions in `VERIFIED_JAXLIB` (checked from package metadata, no jax import);
  - only when the default platform is the CPU, decided without initialising jax: `JAX_PLATFORMS`
    (its first entry) when set, else "cpu" when no accelerator plugin (CUDA, ROCm, TPU) is
    installed;
  - only before jax's backends exist (XLA reads `XLA_FLAGS` once, when the first client is made).

XLA flags are read from the environment, so subprocesses inherit the choice.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from typing import Iterable, MutableMapping

# The settings, and the jaxlib releases [low, high) on which every one of them was verified.
CPU_DEFAULT_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=",)
VERIFIED_JAXLIB: tuple[tuple[int, int], tuple[int, int]] = ((0, 10), (0, 11))

# Distributions that bring a non-CPU PJRT backend to jax (installed => maybe not a CPU run).
ACCELERATOR_DISTRIBUTIONS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt",
                             "jax-cuda13-pjrt", "jax-rocm6-plugin", "jax-rocm7-plugin",
                             "jax-rocm60-plugin", "libtpu", "libtpu-nightly", "jax-metal")
ENV = "XLA_FLAGS"


@dataclasses.dataclass(frozen=True)
class Decision:
  """What the hook did; recorded in the run's log and in every benchmark JSON."""
  applied: bool
  xla_flags: str | None  # XLA_FLAGS after the decision (None: unset)
  reason: str

  def as_dict(self) -> dict:
    return {"xla_flags": self.xla_flags or "", "xla_flags_set_by_jaxswap": self.applied,
            "xla_flags_reason": self.reason}

  def log_line(self) -> str:
    if self.applied:
      return f"XLA_FLAGS={self.xla_flags!r} set by jaxswap ({self.reason})"
    return f"XLA_FLAGS left as is ({self.reason}): {self.xla_flags!r}"


_last: Decision | None = None


def jaxlib_version() -> tuple[int, ...] | None:
  """Installed jaxlib version from its metadata (importing jax would be too late to decide)."""
  try:
    raw = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None
  match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", raw)
  return tuple(int(g) for g in match.groups() if g is not None) if match else None


def installed_accelerators() -> list[str]:
  """Accelerator plugins jax would try to load, found without importing jax."""
  found = []
  for name in ACCELERATOR_DISTRIBUTIONS:
    try:
      importlib.metadata.version(name)
      found.append(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  try:
    plugins = importlib.metadata.entry_points(group="jax_plugins")
    found += [f"entry point {ep.name}" for ep in plugins]
  except TypeError:  # very old importlib.metadata
    pass
  return found


def default_platform(environ: MutableMapping[str, str],
                     accelerators: Iterable[str] | None = None) -> str:
  """"cpu", a named platform (from JAX_PLATFORMS) or "accelerator?" (a plugin is installed)."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower()
  accelerators = installed_accelerators() if accelerators is None else list(accelerators)
  return "accelerator?" if accelerators else "cpu"


def version_supported(version: tuple[int, ...] | None) -> bool:
  low, high = VERIFIED_JAXLIB
  return version is not None and low <= tuple(version[:2]) < high


def backends_initialised() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return True  # cannot tell: assume too late rather than claim a setting that did not apply


def decide(environ: MutableMapping[str, str], version: tuple[int, ...] | None, platform: str,
           backends_initialised: bool = False, enabled: bool = True) -> Decision:
  """Pure: whether to add CPU_DEFAULT_FLAGS, and the XLA_FLAGS that results."""
  if not enabled:
    return Decision(False, environ.get(ENV), "jaxswap's CPU defaults turned off by the caller")
  if ENV in environ:
    return Decision(False, environ[ENV], "set by the user")
  if not version_supported(version):
    shown = ".".join(map(str, version)) if version else "not installed"
    low, high = (".".join(map(str, v)) for v in VERIFIED_JAXLIB)
    return Decision(False, None, f"jaxlib {shown} is outside {low} <= v < {high}, where the "
                    "flags were verified")
  if platform != "cpu":
    return Decision(False, None, f"platform {platform}, not cpu")
  if backends_initialised:
    return Decision(False, None, "jax's backends already exist; XLA_FLAGS would be ignored")
  return Decision(True, " ".join(CPU_DEFAULT_FLAGS),
                  "YNNPACK fusions off: XLA:CPU's own kernels measured faster")


def _configured_platforms() -> str:
  """jax.config.jax_platforms when jax is already imported (a script may set it in code)."""
  jax = sys.modules.get("jax")
  try:
    return (getattr(jax.config, "jax_platforms", None) or "") if jax is not None else ""
  except AttributeError:
    return ""


def current_platform(environ: MutableMapping[str, str]) -> str:
  """default_platform, also honouring a jax.config.jax_platforms set in code."""
  configured = _configured_platforms()
  if "JAX_PLATFORMS" not in environ and configured:
    return default_platform({"JAX_PLATFORMS": configured})
  return default_platform(environ)


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None,
                       enabled: bool = True) -> Decision:
  """Entry-point hook: sets XLA_FLAGS when `decide` says so; returns (and remembers) why."""
  global _last
  environ = os.environ if environ is None else environ
  decision = decide(environ, jaxlib_version(), current_platform(environ), backends_initialised(),
                    enabled)
  if decision.applied:
    environ[ENV] = decision.xla_flags
  _last = decision
  return decision


def last_decision() -> Decision | None:
  """The decision of the latest apply_cpu_defaults in this process (None: never called)."""
  return _last


def describe(environ: MutableMapping[str, str] | None = None) -> dict:
  """For benchmark JSON: the XLA_FLAGS in force and whether jaxswap set them."""
  environ = os.environ if environ is None else environ
  if _last is None:
    return {"xla_flags": environ.get(ENV, ""), "xla_flags_set_by_jaxswap": False,
            "xla_flags_reason": "jaxswap's CPU defaults were not consulted"}
  out = _last.as_dict()
  out["xla_flags"] = environ.get(ENV, "")  # what is in force now (a script may have appended)
  return out


def flags_accepted(flags: str, timeout: float = 300.0) -> tuple[bool, str]:
  """Runs a tiny jit under XLA_FLAGS=flags in a fresh CPU process: (accepted, its stderr tail).

  XLA aborts on an unknown flag, so a subprocess is the only safe probe.
  """
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  code = ("import jax, jax.numpy as jnp; "
          "print(float(jax.jit(lambda x: (x @ x).sum())(jnp.ones((4, 4)))))")
  try:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return False, "timed out"
  return proc.returncode == 0 and proc.stdout.strip() == "64.0", proc.stderr[-2000:]


if __name__ == "__main__":  # python -m jaxswap.xla_flags: what a run here would get, and a probe
  d = apply_cpu_defaults(dict(os.environ))
  print(d.log_line())
  ok, err = flags_accepted(" ".join(CPU_DEFAULT_FLAGS))
  print(f"this jaxlib accepts {' '.join(CPU_DEFAULT_FLAGS)!r}: {ok}")
  if not ok:
    print(err, file=sys.stderr)
