"""Conversion throughput: end-to-end frames/s of jaxswap.convert and seconds per stage.

  python benchmarks/convert_fps.py --input VIDEO --workdir RUN --json OUT.json
      [--alignments FILE] [--frames START:END] [--batch 16] [--repeat 3] [--no-identity]
      [--no-baseline] [--morph PCT]

Three kinds of run over the same frames, each into a temporary mp4 that is deleted afterwards:
  model     the run's model (compiled and warmed up before timing, so compilation is excluded);
  identity  the model replaced by a jitted identity: what the pipeline itself costs;
  baseline  decode -> encode only (reader thread, writer thread, no faces): the I/O ceiling.
The pipeline keeps the model busy when `identity` runs at about the `baseline` rate. A shared
VM's speed drifts by 10-25 % from one minute to the next, so `--repeat N` runs identity and
baseline N times in turn and reports identity / ceiling for each adjacent pair and their median
(the headline figure); the model runs once. Stage seconds
are summed over the threads that run them (decode: reader; detect/align/infer: main; blend: pool;
encode: writer), so on an overlapped pipeline they add up to more than the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from jaxswap import convert, convert_faces, prefetch, provenance, video, xla_flags


def model_fn_of(workdir: str, to: str, batch: int, size: int, identity: bool):
  """A warmed-up, compiled swap function (or identity) at the batch shape conversion uses."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import swap  # pylint: disable=g-import-not-at-top
  batch = -(-batch // jax.device_count()) * jax.device_count()
  if identity:
    call = convert_faces.passthrough_fn()
  else:
    _, model, params = swap.load_run(workdir)
    fn = swap.make_swap_fn(model, to)
    call = lambda faces: fn(params, faces)  # noqa: E731
  t0 = time.perf_counter()
  jax.block_until_ready(call(np.zeros((batch, size, size, 3), np.uint8)))
  return call, time.perf_counter() - t0


def baseline(input_path: str, frames: tuple[int, int | None], out: str) -> dict:
  """Decode (reader thread) -> encode (writer thread), nothing else."""
  source = video.VideoSource(input_path)
  start, end = frames
  sink = video.Mp4Writer(out, source.width, source.height, source.fps,
                          provenance.provenance("benchmark"), size="exact", audio_from=input_path,
                          audio_start=start / source.fps)
  writer = prefetch.OrderedWriter(sink)
  t0, n = time.perf_counter(), 0
  for frame in prefetch.background(source.frames(lambda i: i >= start), 8):
    if end is not None and frame.index >= end:
      break
    if frame.rgb is not None:
      writer.put(frame.rgb)
      n += 1
  writer.close()
  sink.close()
  seconds = time.perf_counter() - t0
  return {"frames": n, "seconds": seconds, "fps": n / seconds}


def row(name: str, r: dict) -> str:
  per = {k: 1000 * v / max(r["frames"], 1) for k, v in r.get("stages", {}).items()}
  stages = "  ".join(f"{k} {per[k]:6.2f}" for k in convert.STAGES if k in per)
  return f"{name:<9} {r['fps']:7.1f} frames/s  ({r['frames']} frames, {r['seconds']:.1f} s)  " \
         f"ms/frame: {stages}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--json", default=None)
  p.add_argument("--alignments", default=None, help="default: detect faces on the fly")
  p.add_argument("--frames", default=None, help="START:END (default: the whole video)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--to", default="a", choices=("a", "b"))
  p.add_argument("--morph", type=float, default=convert.Options.morph,
                 help="jaxswap-convert's --morph (%%; default: its default); 0 times the "
                      "pipeline without the landmark morph")
  p.add_argument("--detail", type=float, default=convert.Options.detail,
                 help="jaxswap-convert's --detail (%%; default: its default)")
  p.add_argument("--mask", default=convert.Options.mask, choices=convert.MASKS,
                 help="jaxswap-convert's --mask (default: its default)")
  p.add_argument("--repeat", type=int, default=3,
                  help="identity + baseline pairs, in turn (the median ratio is the figure)")
  p.add_argument("--no-identity", action="store_true")
  p.add_argument("--no-baseline", action="store_true")
  p.add_argument("--no-xla-defaults", action="store_true",
                 help="do not apply jaxswap's CPU XLA_FLAGS defaults (jaxswap.xla_flags)")
  args = p.parse_args(argv)
  if args.repeat < 1:
    p.error(f"--repeat {args.repeat}: give 1 or more")
  xla_flags.apply_cpu_defaults(enabled=not args.no_xla_defaults)  # before jax's backend exists
  from jaxswap import swap  # pylint: disable=g-import-not-at-top
  config = swap.load_config(args.workdir)
  opts = convert.Options(to=args.to, batch=args.batch, frames=convert.parse_frames(args.frames),
                         morph=args.morph, detail=args.detail, mask=args.mask)
  tmp = tempfile.mkdtemp(prefix="jaxswap-convert-bench-")
  results: dict = {"input": os.path.abspath(args.input), "workdir": os.path.abspath(args.workdir),
                   "model": config.model.name, "batch": args.batch, "morph": args.morph,
                   "detail": args.detail, "mask": args.mask,
                   "alignments": args.alignments, "cpus": os.cpu_count(),
                   **xla_flags.describe()}
  def run(kind: str, fn, warm: float) -> dict:
    load0 = os.getloadavg()[0]
    r = convert.convert(args.input, args.workdir, os.path.join(tmp, f"{kind}.mp4"), opts,
                        alignments_path=args.alignments, progress=False, model_fn=fn)
    r.update(compile_and_warmup_s=warm, load_average_before=load0)
    print(row(kind, r), flush=True)
    return r

  try:
    results["model"] = run("model", *model_fn_of(args.workdir, args.to, args.batch,
                                                 config.image_size, False))
    identity = None if args.no_identity else model_fn_of(args.workdir, args.to, args.batch,
                                                         config.image_size, True)
    pairs = []
    for _ in range(args.repeat if identity and not args.no_baseline else 1):
      pair = {}
      if identity:
        pair["identity"] = run("identity", *identity)
      if not args.no_baseline:
        pair["baseline"] = baseline(args.input, opts.frames, os.path.join(tmp, "baseline.mp4"))
        print(row("baseline", pair["baseline"]), flush=True)
      if len(pair) == 2:
        pair["ratio"] = pair["identity"]["fps"] / pair["baseline"]["fps"]
        print(f"identity / ceiling {pair['ratio']:.3f}", flush=True)
      pairs.append(pair)
    for kind in ("identity", "baseline"):  # the first run of each, as before --repeat
      if kind in pairs[0]:
        results[kind] = pairs[0][kind]
    if "ratio" in pairs[0]:
      ratios = [p["ratio"] for p in pairs]
      results["pairs"] = pairs
      results["identity_over_ceiling"] = {"median": float(np.median(ratios)),
                                          "min": min(ratios), "max": max(ratios),
                                          "each": ratios}
      print(f"identity / ceiling: median {np.median(ratios):.3f} of {len(ratios)} pairs "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  results["load_average_after"] = os.getloadavg()[0]
  if args.json:
    provenance.write_bytes(args.json, json.dumps(results, indent=1).encode())
  return 0


if __name__ == "__main__":
  sys.exit(main())
