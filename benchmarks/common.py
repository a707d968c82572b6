"""Shared benchmark plumbing: config loading, synthetic batches, timing, tables, JSON.

jax is imported inside the functions that need it, never at module import: scripts must be able
to set XLA_FLAGS (e.g. `--xla_force_host_platform_device_count`) after parsing their arguments
and before jax's first import.

Timing convention (STYLE.md habit 8): the step is lowered and compiled ahead of time (reported
apart as `compile_s`), run `warmup` times untimed, then `steps` times, each step synchronised with
`jax.block_until_ready`; we report the median and the spread (min, max, interquartile range).
Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `configs` and `jaxswap` import from the repository root.
  sys.path.insert(0, str(ROOT))

from jaxswap import host_malloc  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxswap import xla_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxswap.errors import JaxswapError  # pylint: disable=g-import-not-at-top,wrong-import-position

# ---------------------------------------------------------------------------------------------
# Arguments and configs
# ---------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, default_steps: int = 5) -> None:
  parser.add_argument("--steps", type=int, default=default_steps, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps after compilation (first-run allocation, caches)")
  parser.add_argument("--json", default=None, metavar="OUT.json",
                      help="write the results here (atomically)")
  parser.add_argument("--no-xla-defaults", action="store_true",
                      help="do not apply jaxswap's CPU defaults: XLA_FLAGS (jaxswap.xla_flags) "
                           "and glibc malloc (jaxswap.host_malloc); for measuring XLA's and "
                           "glibc's own")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
  """argparse, plus `--config.KEY=VALUE` overrides collected in `args.overrides`."""
  args, rest = parser.parse_known_args(argv)
  overrides, unknown = [], []
  for item in rest:
    if item.startswith("--config.") and "=" in item:
      key, value = item[len("--config."):].split("=", 1)
      overrides.append((key, value))
    else:
      unknown.append(item)
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  args.overrides = overrides
  apply_xla_defaults(not getattr(args, "no_xla_defaults", False), reexec=argv is None)
  for name in ("steps", "warmup"):
    if hasattr(args, name) and getattr(args, name) < (1 if name == "steps" else 0):
      parser.error(f"--{name} must be {'positive' if name == 'steps' else 'non-negative'}")
  return args


def load_config(path: str, overrides: Iterable[tuple[str, str]] = ()):
  """configs/NAME.py -> its locked get_config(), like ml_collections' config_flags.

  Overrides are parsed against the type of the field they replace; unknown keys are errors.
  """
  file = Path(path)
  if not file.is_file():
    raise JaxswapError(f"--config={path}: no such file (expected configs/NAME.py)")
  spec = importlib.util.spec_from_file_location(f"_bench_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  except AttributeError as e:
    raise JaxswapError(f"--config={path}: not a config file ({e})") from None
  config.lock()
  for key, raw in overrides:
    set_dotted(config, key, raw)
  return config


def set_dotted(config, key: str, raw: str) -> None:
  *parents, leaf = key.split(".")
  node = config
  try:
    for part in parents:
      node = node[part]
    old = node[leaf]
  except (KeyError, AttributeError):
    raise JaxswapError(f"--config.{key}: no such config field") from None
  try:
    node[leaf] = _parse_like(raw, old)
  except (TypeError, ValueError, SyntaxError) as e:
    raise JaxswapError(f"--config.{key}={raw}: {e}") from None


def _parse_like(raw: str, old: Any) -> Any:
  if isinstance(old, bool):
    if raw.lower() not in ("true", "false", "1", "0"):
      raise ValueError("expected true or false")
    return raw.lower() in ("true", "1")
  if isinstance(old, str):
    return raw
  if isinstance(old, int):
    return int(raw)
  if isinstance(old, float):
    return float(raw)
  return ast.literal_eval(raw)


def run_cli(main: Callable[[], None]) -> None:
  """User errors: one line on stderr, exit status 2 (the project's CLI convention)."""
  try:
    main()
  except JaxswapError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def apply_xla_defaults(enabled: bool = True, reexec: bool = False) -> xla_flags.Decision:
  """The entry points' CPU defaults (XLA flags, glibc malloc), so benchmarks time what
  `jaxswap.train` runs.

  Must run before jax creates its backend (and before force_host_devices, which would otherwise
  look like a user's XLA_FLAGS); environment() records the outcome in every JSON. The malloc
  settings hold for the whole process, the PyTorch twin included; reexec (a script's own
  command line) lets host_malloc re-execute the script with them in GLIBC_TUNABLES.
  """
  host_malloc.apply_cpu_defaults(enabled=enabled, reexec=reexec)
  return xla_flags.apply_cpu_defaults(enabled=enabled)


def force_host_devices(count: int) -> None:
  """Simulated CPU devices; only meaningful before jax is imported (GPU/TPU hosts ignore it)."""
  if "jax" in sys.modules:
    raise RuntimeError("force_host_devices must run before jax is imported")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags and count > 1:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random uint8 host batch with the loader's keys and shapes, generated once."""
  rng = np.random.default_rng(seed)
  out = {}
  for ident in ("a", "b"):
    out[f"image_{ident}"] = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    out[f"mask_{ident}"] = rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
    out[f"priority_{ident}"] = rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
  return out


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
  compile_s: float
  step_s: list[float]
  wait_s: list[float] = dataclasses.field(default_factory=list)  # per step, blocked on next_batch

  @property
  def median(self) -> float:
    return statistics.median(self.step_s)

  def spread(self) -> dict[str, float]:
    s = sorted(self.step_s)
    q = np.percentile(s, [25, 75]) if len(s) > 1 else (s[0], s[0])
    return {"min": s[0], "max": s[-1], "iqr": float(q[1] - q[0]),
            "rel_iqr": float((q[1] - q[0]) / self.median)}


def time_jitted(fn, state, batch, steps: int, warmup: int, *, donated: bool = True,
                next_batch: Callable[[], Any] | None = None):
  """AOT-compiles fn(state, batch) -> (state, metrics), then times it (`time_compiled`).

  Returns (Timing, compiled, final_state).
  """
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  timing, state = time_compiled(compiled, state, batch, steps, warmup, donated=donated,
                                next_batch=next_batch)
  timing.compile_s = compile_s
  return timing, compiled, state


def time_compiled(compiled, state, batch, steps: int, warmup: int, *, donated: bool = True,
                  next_batch: Callable[[], Any] | None = None):
  """Times `steps` calls of a compiled step after `warmup` untimed ones: (Timing, final_state).

  With `donated`, the state is threaded through the steps exactly as the training loop threads
  it (the input buffers are consumed). With `next_batch`, every step fetches its own batch inside
  the timed region (end-to-end figure) and the time blocked in that fetch is kept apart
  (`wait_s`: the input pipeline falling behind).
  """
  import jax  # pylint: disable=g-import-not-at-top
  times, waits = [], []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    if next_batch is not None:
      batch = next_batch()
    t1 = time.perf_counter()
    out = compiled(state, batch)
    jax.block_until_ready(out)
    dt = time.perf_counter() - t0
    if donated:
      state = out[0]
    if i >= warmup:
      times.append(dt)
      if next_batch is not None:
        waits.append(t1 - t0)
  return Timing(0.0, times, waits), state


def time_python(step: Callable[[], None], steps: int, warmup: int) -> Timing:
  """Times a synchronous step (e.g. the PyTorch twin); no compilation."""
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    if i >= warmup:
      times.append(dt)
  return Timing(0.0, times)


def xla_cost(compiled) -> dict[str, float]:
  """XLA's HloCostAnalysis of the compiled (per-device, partitioned) program."""
  try:
    cost = compiled.cost_analysis()
  except (NotImplementedError, RuntimeError):
    return {}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  keep = ("flops", "transcendentals", "bytes accessed")
  return {k: float(cost[k]) for k in keep if cost and k in cost}


COST_NOTE = ("flops = XLA HloCostAnalysis of the compiled per-device program: 2 per multiply-add "
             "in convolutions and dots, ~1 per element of elementwise/reduce ops (augmentation, "
             "loss, Adam included); convolutions count only kernel taps that land inside the "
             "unpadded input (SAME padding on small maps counts less: 72% for original's "
             "8x8->4x4 5x5 conv). model flops = the analytic 2 x (fwd + bwd) multiply-adds of the "
             "network incl. padding taps (11.4 GFLOP per trained original face).")
MFU_NOTE = "MFU = flops_per_device_per_step / step_time_s / (peak_tflops * 1e12)"


def mfu(flops_per_device: float | None, step_s: float, peak_tflops: float | None):
  if not flops_per_device or not peak_tflops:
    return None
  return flops_per_device / step_s / (peak_tflops * 1e12)


# ---------------------------------------------------------------------------------------------
# Environment, tables, JSON
# ---------------------------------------------------------------------------------------------


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def cpu_count() -> int:
  """Cores this process may run on (respects affinity / container limits)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def environment() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "host": platform.node(),
      "processor": _cpu_model(),
      "cores": cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      **xla_flags.describe(),
      **host_malloc.describe(),
      "load_average_1_5_15": load_average(),
  }


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def print_environment(env: dict[str, Any]) -> None:
  print(f"# {env['time']}  jax {env['jax']} ({env['backend']}: {env['device_count']} x "
        f"{env['device_kind']})  {env['processor']}, {env['cores']} cores  "
        f"load {env['load_average_1_5_15']}")
  who = "set by jaxswap" if env.get("xla_flags_set_by_jaxswap") else "not set by jaxswap"
  print(f"# XLA_FLAGS={env.get('xla_flags', '')!r} ({who}: {env.get('xla_flags_reason')})")
  who = "set by jaxswap" if env.get("host_malloc_set_by_jaxswap") else "left as is"
  print(f"# glibc malloc {who}: {env.get('host_malloc_reason')}")


def _fmt(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    if value == 0:
      return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
      return f"{value:.3g}"
    return f"{value:.4g}"
  return str(value)


def print_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
  """columns: (key, header) pairs; missing values print as '-'."""
  cells = [[h for _, h in columns]] + [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  for n, row in enumerate(cells):
    print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    if n == 0:
      print("  ".join("-" * w for w in widths))


def write_json(path: str | None, payload: dict[str, Any]) -> None:
  """Atomic: a temp file in the same folder, then os.replace."""
  if not path:
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(payload, f, indent=2, default=_json_default)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  print(f"# wrote {path}")


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return str(value)


def command_line() -> str:
  return " ".join(["python"] + sys.argv)
