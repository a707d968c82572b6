"""Where a compiled step spends its device time: a jax.profiler trace summed per HLO op.

    import profile_ops
    summary = profile_ops.profile_compiled(compiled, state, batch, steps=3, trace_dir=DIR)
    profile_ops.print_summary(summary)

The trace's device events (GPU kernels on their streams; on a CPU, the XLA thunks on the
runtime's threads) carry the HLO instruction that launched them (`hlo_op`). Their durations are
summed per instruction and per category, the category read from the compiled program's own HLO
text: cuDNN convolutions (forward, backward-input, backward-filter), matrix products (cuBLAS or
Triton), elementwise and reduction fusions, copies/transposes, collectives. `device_busy` is the
union of the device intervals over the wall time of the traced steps: well under 1 means the
device waits on the host (launch overhead, input feeding), not on arithmetic.

On a GPU the events are the kernels' own times and add up to the step. On XLA:CPU they do not:
independent thunks run at once on the intra-op pool and share its cores, so an op's duration
includes the time its neighbours took from it (the input gradient of `original`'s 32x32 stride-2
conv read 713 ms in a batch-64 step, 266 ms timed alone), and the per-op figures only rank.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import time
from typing import Any

# `  %name = shape opcode(...)...` or `  ROOT name = (tuple, shape) opcode(...)`
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|\S+)\s+([\w\-]+)\(")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_KIND = re.compile(r"\bkind=(k\w+)")
_CONV_TARGETS = {"__cudnn$convForward": "conv forward (cuDNN)",
                 "__cudnn$convBiasActivationForward": "conv forward (cuDNN)",
                 "__cudnn$convBackwardInput": "conv backward-input (cuDNN)",
                 "__cudnn$convBackwardFilter": "conv backward-filter (cuDNN)"}
# XLA:GPU replays runs of small kernels (fusions, copies) as one CUDA graph, a "command buffer"
# thunk that the HLO text does not name.
_COMMAND_BUFFER = "command buffer (CUDA graph of small fusions)"
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def categorise(line: str) -> str:
  """The category of one HLO instruction line (see the module docstring)."""
  m = _INSTR.match(line)
  if not m:
    return "other"
  opcode = m.group(3)
  if opcode == "custom-call":
    target = (_TARGET.search(line) or [None, ""])[1]
    if target in _CONV_TARGETS:
      return _CONV_TARGETS[target]
    if "cublas" in target or "matmul" in target.lower() or "gemm" in target.lower():
      return "matmul (cuBLAS)"
    if "cudnn" in target:
      return "other cuDNN"
    return f"custom-call {target}"
  if opcode == "fusion":
    kind = (_KIND.search(line) or [None, ""])[1]
    if "triton_gemm" in line or "__triton" in line:
      return "matmul (Triton fusion)"
    if "__cudnn$fusion" in line or "cudnn" in line:
      return "cuDNN fusion"
    if "convolution" in line and kind == "kOutput":
      return "conv fusion"
    return {"kLoop": "elementwise fusion", "kInput": "reduction fusion",
            "kOutput": "output fusion (dot/conv + elementwise)",
            "kCustom": "custom fusion"}.get(kind, f"fusion {kind}")
  if opcode in ("convolution",):
    return "convolution"
  if opcode in ("dot",):
    return "matmul"
  if opcode in ("copy", "transpose", "copy-start", "copy-done", "bitcast", "dynamic-update-slice"):
    return "copy / transpose"
  if any(opcode.startswith(c) for c in _COLLECTIVES):
    return "collective"
  return opcode


def hlo_categories(hlo_text: str) -> dict[str, str]:
  """Instruction name -> category, for every instruction of an HLO module's text."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m:
      out[m.group(1)] = categorise(line)
  return out


def _merged_length(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for a, b in sorted(intervals):
    if b <= end:
      continue
    total += b - max(a, end)
    end = b
  return total


def summarise(trace_dir: str, hlo_text: str, steps: int, wall_s: float,
              top: int = 15) -> dict[str, Any]:
  """Sums the device events of the newest trace under trace_dir (see the module docstring)."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}")
  cats = hlo_categories(hlo_text)
  data = ProfileData.from_file(files[-1])
  per_op = collections.Counter()
  intervals, lines_used = [], set()
  device_planes = [p for p in data.planes if p.name.startswith("/device:")]
  planes = device_planes or [p for p in data.planes if p.name.startswith("/host:CPU")]
  for plane in planes:
    lines = list(plane.lines)
    # A GPU plane may carry derived op-level lines beside the raw kernel streams; count one kind.
    op_lines = [l for l in lines if l.name == "XLA Ops"]
    for line in op_lines or lines:
      for event in line.events:
        stats = dict(event.stats)
        op = stats.get("hlo_op")
        if op is None and op_lines:
          op = event.name
        if op is None:
          continue
        lines_used.add(f"{plane.name}: {line.name}")
        start = event.start_ns
        per_op[op] += event.duration_ns
        intervals.append((start, start + event.duration_ns))
  total_ns = sum(per_op.values())
  cat = lambda op: cats.get(op) or (  # noqa: E731
      _COMMAND_BUFFER if op.startswith("command_buffer") else "unknown")
  per_cat = collections.Counter()
  for op, ns in per_op.items():
    per_cat[cat(op)] += ns
  ms = lambda ns: ns / 1e6 / steps  # noqa: E731  (per step)
  busy_s = _merged_length(intervals) / 1e9
  return {
      "trace": files[-1], "steps": steps, "wall_ms_per_step": wall_s * 1e3 / steps,
      "device_ms_per_step": ms(total_ns), "device_busy": busy_s / wall_s if wall_s else None,
      "lines": sorted(lines_used),
      "by_category": [{"category": c, "ms_per_step": ms(ns), "share": ns / total_ns}
                      for c, ns in per_cat.most_common()] if total_ns else [],
      "top_ops": [{"op": op, "category": cat(op), "ms_per_step": ms(ns),
                   "share": ns / total_ns} for op, ns in per_op.most_common(top)],
  }


def profile_compiled(compiled, state, batch, steps: int, trace_dir: str):
  """Traces `steps` calls of a compiled (state, batch) -> (state, ...) step: (summary, state)."""
  import jax  # pylint: disable=g-import-not-at-top
  out = compiled(state, batch)  # one untraced call: nothing of the first run in the trace
  jax.block_until_ready(out)
  state = out[0]
  os.makedirs(trace_dir, exist_ok=True)
  with jax.profiler.trace(trace_dir):
    t0 = time.perf_counter()
    for _ in range(steps):
      out = compiled(state, batch)
      state = out[0]
    jax.block_until_ready(out)
    wall = time.perf_counter() - t0
  summary = summarise(trace_dir, compiled.as_text(), steps, wall)
  return summary, state


def print_summary(summary: dict[str, Any], title: str = "") -> None:
  busy = summary["device_busy"]
  print(f"  profile {title}: {summary['wall_ms_per_step']:.3g} ms/step wall, device ops "
        f"{summary['device_ms_per_step']:.3g} ms/step summed"
        + (f", device busy {busy:.0%} of the wall time" if busy is not None else ""))
  for c in summary["by_category"]:
    print(f"    {c['share']:6.1%} {c['ms_per_step']:9.3f} ms  {c['category']}")
  print("    top ops:")
  for o in summary["top_ops"]:
    print(f"    {o['share']:6.1%} {o['ms_per_step']:9.3f} ms  {o['op']} ({o['category']})")
