"""Merges the JSON files of benchmarks/gpu.sh into OUTDIR/gpu.json and a Markdown table gpu.md.

    python benchmarks/gpu_report.py OUTDIR [--peak-bf16 989] [--peak-fp32 495]

Reads OUTDIR/train_*.json (benchmarks/train_throughput.py) and OUTDIR/convert.json
(benchmarks/convert_fps.py); missing files are reported, not fatal.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

fmt = common._fmt  # pylint: disable=protected-access

TRAIN_COLUMNS = [("config", "config"), ("dtype", "dtype"), ("batch", "batch"),
                 ("step_s", "step s"), ("egs_per_s", "EGs/s"), ("tflops", "XLA TFLOP/s"),
                 ("mfu_pct", "MFU % (XLA)"), ("mfu_model_pct", "MFU % (model)"),
                 ("compile_s", "compile s"), ("error", "error")]
CONVERT_KINDS = ("model", "identity", "baseline")


def train_rows(outdir: str) -> tuple[list[dict], dict | None, list[str]]:
  """(rows of every train_*.json, the first file's environment, files cut short by a budget)."""
  rows, env, cut = [], None, []
  for path in sorted(glob.glob(os.path.join(outdir, "train_*.json"))):
    with open(path) as f:
      data = json.load(f)
    env = env or data.get("environment")
    if data.get("interrupted"):
      cut.append(os.path.basename(path))
    for r in data.get("rows", []):
      out = {k: r.get(k) for k in ("config", "dtype", "batch", "mode", "step_s", "egs_per_s",
                                   "compile_s", "error", "rel_iqr")}
      if r.get("achieved_gflops"):
        out["tflops"] = r["achieved_gflops"] / 1e3
      for src, dst in (("mfu", "mfu_pct"), ("mfu_model_flops", "mfu_model_pct")):
        if r.get(src) is not None:
          out[dst] = 100 * r[src]
      out["peak_tflops"] = data.get("peak_tflops")
      out["source"] = os.path.basename(path)
      if r.get("profile"):
        out["profile"] = r["profile"]
      rows.append(out)
  return rows, env, cut


def convert_summary(outdir: str) -> dict | None:
  path = os.path.join(outdir, "convert.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    data = json.load(f)
  out = {"model": data.get("model"), "batch": data.get("batch"),
         "xla_flags": data.get("xla_flags")}
  for kind in CONVERT_KINDS:
    if kind in data:
      out[f"{kind}_fps"] = data[kind].get("fps")
  base = out.get("baseline_fps")
  for kind in ("model", "identity"):
    if base and out.get(f"{kind}_fps"):
      out[f"{kind}_vs_baseline"] = out[f"{kind}_fps"] / base
  return out


def markdown(rows: list[dict], conv: dict | None, env: dict | None, cut: list[str],
             args) -> str:
  lines = []
  if env:
    lines.append(f"Device: {env.get('device_count')} x {env.get('device_kind')} "
                 f"({env.get('backend')}), jax {env.get('jax')}, host {env.get('processor')}, "
                 f"{env.get('time')}. Peaks: bf16 {args.peak_bf16}, float32 (TF32) "
                 f"{args.peak_fp32} TFLOP/s.")
    lines.append("")
  if args.smoke:
    lines += ["**Smoke test of the script (tiny config, 1 step): not a measurement.**", ""]
  if cut:
    lines += [f"Stopped at the time budget, rows so far kept: {', '.join(cut)}.", ""]
  head = [h for _, h in TRAIN_COLUMNS]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    lines.append("| " + " | ".join(fmt(r.get(k)) for k, _ in TRAIN_COLUMNS) + " |")
  if env and env.get("backend") == "gpu":
    # Seen on an H200 (jax 0.11.2): XLA's count was 0.03-0.2 % of peak where flops.py's was 16-52 %.
    lines += ["", "XLA's cost analysis does not count the convolutions that run as cuDNN custom "
              "calls: on a GPU, MFU % (model) (benchmarks/flops.py's count) is the figure."]
  profiled = [r for r in rows if r.get("profile")]
  if profiled:  # PROFILE=1: device time by category, one column per profiled cell
    cats = sorted({c["category"] for r in profiled for c in r["profile"]["by_category"]},
                  key=lambda c: -max(x["share"] for r in profiled
                                     for x in r["profile"]["by_category"] if x["category"] == c))
    names = [f"{r['config']} {r['dtype']} b{r['batch']}" for r in profiled]
    lines += ["", "Device time per step by category (`--profile`; ms, share):", "",
              "| category | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in cats:
      cells = []
      for r in profiled:
        x = next((x for x in r["profile"]["by_category"] if x["category"] == c), None)
        cells.append(f"{x['ms_per_step']:.3g} ({100 * x['share']:.0f} %)" if x else "-")
      lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| device busy | " + " | ".join(
        f"{100 * r['profile']['device_busy']:.0f} %" if r["profile"].get("device_busy")
        else "-" for r in profiled) + " |")
  if conv:
    lines += ["", "| conversion | fps | / decode->encode |", "|---|---|---|"]
    for kind in CONVERT_KINDS:
      lines.append(f"| {kind} | {fmt(conv.get(f'{kind}_fps'))} | "
                   f"{fmt(conv.get(f'{kind}_vs_baseline'))} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("outdir")
  p.add_argument("--peak-bf16", type=float, default=989.0)
  p.add_argument("--peak-fp32", type=float, default=495.0)
  p.add_argument("--smoke", type=int, default=0, help="1: mark the output as a smoke test")
  args = p.parse_args()
  rows, env, cut = train_rows(args.outdir)
  conv = convert_summary(args.outdir)
  if not rows:
    print(f"gpu_report: no training rows in {args.outdir}/train_*.json", file=sys.stderr)
  if cut:
    print(f"gpu_report: stopped at the time budget: {', '.join(cut)}", file=sys.stderr)
  if conv is None:
    print(f"gpu_report: no convert.json in {args.outdir}", file=sys.stderr)
  common.print_table(rows, TRAIN_COLUMNS)
  if conv:
    print("\nconversion fps: " + ", ".join(f"{k} {fmt(conv.get(f'{k}_fps'))}"
                                          for k in CONVERT_KINDS))
  common.write_json(os.path.join(args.outdir, "gpu.json"), {
      "environment": env, "smoke_test": bool(args.smoke),
      "peak_tflops": {"bfloat16": args.peak_bf16, "float32 (TF32)": args.peak_fp32},
      "train": rows, "train_files_cut_short": cut, "convert": conv,
      "load_average_after": common.load_average()})
  with open(os.path.join(args.outdir, "gpu.md"), "w") as f:
    f.write(markdown(rows, conv, env, cut, args))
  print(f"# wrote {os.path.join(args.outdir, 'gpu.md')}")


if __name__ == "__main__":
  common.run_cli(main)
