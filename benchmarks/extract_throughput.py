"""Extraction throughput: each stage timed on its own, then the whole overlapped pipeline.

  python benchmarks/extract_throughput.py --input VIDEO --json OUT.json [--frames 300 --cores 2]

Stages (one thread, after a warm-up), each timed on extraction's own code: decode
(`video.VideoSource.frames`, incl. BGR->RGB), `extract.process_frame` split into detection
(BlazeFace full + short range) and landmarks (face_mesh on each face's crop) by timing the detector
it calls, the rest being alignment (Umeyama matrix, warp, masks, blur score), and writing
(`extract.Output.commit`: PNG encode of crop + 2 masks, atomic writes). Then `jaxswap.extract`'s
real pipeline (reader thread, detection, writer threads) over the whole video into a temporary
folder: its frames/s is the figure that counts; the stage sum shows what overlap buys.
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

from jaxswap import extract, video  # pylint: disable=g-import-not-at-top
from jaxswap.faces import detect  # pylint: disable=g-import-not-at-top

STAGES = ("decode", "detection", "landmarks", "alignment", "writing")


class TimedDetector:
  """The real detector, with the seconds spent in detection and in landmarks added up."""

  def __init__(self, detector):
    self.detector, self.seconds = detector, {"detection": 0.0, "landmarks": 0.0}

  def find_faces(self, rgb, tiles=1):
    t0 = time.perf_counter()
    try:
      return self.detector.find_faces(rgb, tiles)
    finally:
      self.seconds["detection"] += time.perf_counter() - t0

  def landmarks(self, rgb, face):
    t0 = time.perf_counter()
    try:
      return self.detector.landmarks(rgb, face)
    finally:
      self.seconds["landmarks"] += time.perf_counter() - t0


def time_stages(path: str, frames: int, warmup: int, size: int, coverage: float) -> dict:
  """Seconds per stage over `frames` frames (after `warmup`), and frames/faces counted.

  The stages are extraction's own code, one frame at a time: `video.VideoSource.frames` (decode),
  `extract.process_frame` (detection and landmarks through the detector it is given; the rest of
  it is alignment: matrix, warp, masks, blur score) and `extract.Output.commit` (writing).
  """
  totals = dict.fromkeys(STAGES, 0.0)
  counted_frames = counted_faces = 0
  out = tempfile.mkdtemp(prefix="jaxswap-bench-")
  settings = extract.Settings(size=size, coverage=coverage, tiles=1)
  output = extract.Output(out, {})
  source = video.VideoSource(path)
  try:
    os.makedirs(os.path.join(out, extract.PARTIAL, "frames"))
    with detect.FaceDetector() as detector:
      timed = TimedDetector(detector)
      frames_iter = source.frames(lambda i: True)
      for i in range(warmup + frames):
        t0 = time.perf_counter()
        frame = next(frames_iter, None)
        if frame is None:
          break
        t1 = time.perf_counter()
        before = dict(timed.seconds)
        record, images = extract.process_frame(timed, frame, settings, "bench")
        t2 = time.perf_counter()
        output.commit(record, images)
        t3 = time.perf_counter()
        if i >= warmup:
          found = {k: timed.seconds[k] - before[k] for k in timed.seconds}
          totals["decode"] += t1 - t0
          totals["detection"] += found["detection"]
          totals["landmarks"] += found["landmarks"]
          totals["alignment"] += (t2 - t1) - found["detection"] - found["landmarks"]
          totals["writing"] += t3 - t2
          counted_frames += 1
          counted_faces += sum(1 for f in record["faces"] if f["file"])
  finally:
    shutil.rmtree(out, ignore_errors=True)
  return {"seconds": totals, "frames": counted_frames, "faces": counted_faces}


def run_pipeline(path: str, size: int, coverage: float, keep: str | None) -> dict:
  out = keep or tempfile.mkdtemp(prefix="jaxswap-bench-")
  try:
    if not keep:
      shutil.rmtree(out)
    cpu0 = time.process_time()
    doc = extract.extract(path, out, extract.Settings(size=size, coverage=coverage),
                          progress=False)
    cpu = time.process_time() - cpu0
  finally:
    if not keep:
      shutil.rmtree(out, ignore_errors=True)
  run = doc["run"]
  return {"seconds": run["seconds"], "cpu_seconds": cpu, "frames": run["frames"],
          "faces": run["new_faces"]}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", required=True, help="video file")
  p.add_argument("--json", required=True, help="where to write the results")
  p.add_argument("--frames", type=int, default=300, help="frames for the per-stage timing")
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--coverage", type=float, default=0.85)
  p.add_argument("--cores", type=int, default=0,
                 help="pin this process to the first N CPUs (0: leave the affinity alone)")
  p.add_argument("--keep", default=None, help="keep the pipeline's output in this folder")
  args = p.parse_args(argv)
  if args.cores:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
  cpus = len(os.sched_getaffinity(0))
  src = video.open_source(args.input)
  stages = time_stages(args.input, args.frames, args.warmup, args.size, args.coverage)
  n, faces = stages["frames"], stages["faces"]
  rows = {}
  for name in STAGES:
    sec = stages["seconds"][name]
    rows[name] = {"ms_per_frame": 1e3 * sec / max(n, 1), "frames_per_s": n / max(sec, 1e-9),
                  "faces_per_s": faces / max(sec, 1e-9)}
  total = sum(stages["seconds"].values())
  rows["sequential sum"] = {"ms_per_frame": 1e3 * total / max(n, 1),
                            "frames_per_s": n / max(total, 1e-9),
                            "faces_per_s": faces / max(total, 1e-9)}
  pipe = run_pipeline(args.input, args.size, args.coverage, args.keep)
  rows["pipeline (extract.py)"] = {
      "ms_per_frame": 1e3 * pipe["seconds"] / max(pipe["frames"], 1),
      "frames_per_s": pipe["frames"] / max(pipe["seconds"], 1e-9),
      "faces_per_s": pipe["faces"] / max(pipe["seconds"], 1e-9)}
  # CPU time is what other processes on a shared machine cannot steal: with `cpus` cores all
  # ours, the pipeline could reach at most cpus / (CPU seconds per frame).
  cpu_per_frame = pipe["cpu_seconds"] / max(pipe["frames"], 1)
  pipe["cpu_ms_per_frame"] = 1e3 * cpu_per_frame
  pipe["frames_per_s_bound_if_cores_idle"] = cpus / max(cpu_per_frame, 1e-9)
  pipe["load_average_1min"] = os.getloadavg()[0]
  print(f"{args.input}: {src.width}x{src.height}, {cpus} CPUs, stages over {n} frames "
        f"({faces} faces), pipeline over {pipe['frames']} frames ({pipe['faces']} faces)")
  print(f"{'stage':<24}{'ms/frame':>10}{'frames/s':>10}{'faces/s':>10}")
  for name, r in rows.items():
    print(f"{name:<24}{r['ms_per_frame']:>10.2f}{r['frames_per_s']:>10.1f}"
          f"{r['faces_per_s']:>10.1f}")
  print(f"pipeline CPU time {pipe['cpu_ms_per_frame']:.1f} ms/frame: at most "
        f"{pipe['frames_per_s_bound_if_cores_idle']:.0f} frames/s on {cpus} idle cores "
        f"(load average now {pipe['load_average_1min']:.1f})")
  result = {"input": os.path.abspath(args.input), "width": src.width, "height": src.height,
            "cpus": cpus, "size": args.size, "coverage": args.coverage,
            "stage_frames": n, "stage_faces": faces, "pipeline": pipe, "rows": rows}
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
