"""Swap faces in a video with a trained run: B's face replaced by A's (or the reverse).

  jaxswap-convert --input VIDEO --workdir RUN_DIR --output OUT.mp4 --to a|b
      [--alignments FILE] [--mask brows|components|extended|learned|learned*components]
      [--erode 2] [--blur 8] [--color none|avg|rct|hist] [--blend alpha|seamless] [--detail 100]
      [--morph 75] [--batch 16]
      [--frames START:END] [--smooth N] [--face-index K[,K...]] [--track K] [--max-gap F]
      [--watermark] [--png-dir DIR]
  jaxswap-convert --alignments FILE --list-tracks

Pipeline: a reader thread decodes (and, without --alignments, detects faces); this thread aligns
every face with the extraction geometry and runs the jitted, batched `jaxswap.swap` (dispatch is
asynchronous: the next batch is aligned while the device computes the last one); a pool colour
matches, masks, inverse-warps and blends; a writer thread encodes. The output has the input's size,
fps, frame count and audio, carries a "synthetic media" provenance tag, and appears only complete.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import os
import sys
import threading
import time

import numpy as np
import tqdm

from jaxswap import convert_faces, prefetch, provenance, video
from jaxswap.errors import JaxswapError
from jaxswap.faces import alignments, composite, geometry, morph, track
from jaxswap.faces.composite import MASKS
STAGES = ("decode", "detect", "align", "infer", "blend", "encode")


@dataclasses.dataclass(frozen=True)
class Options:
  """How faces are put back; percentages are of the face crop's side in frame pixels."""
  to: str = "a"
  mask: str = "brows"
  erode: float = 2.0
  blur: float = 8.0
  color: str = "rct"
  blend: str = "alpha"
  sharpen: float = 0.0  # unsharp-mask amount (%) on the model's output; 0: off
  sharpen_radius: float = 1.0  # its Gaussian sigma, pixels of the model's output
  detail: float = 100.0  # % of the frame's detail the model cannot draw kept in the face
  morph: float = 75.0  # % of the way the swapped face's landmarks move onto the source's
  batch: int = 16
  frames: tuple[int, int | None] = (0, None)
  smooth: int = 0
  face_index: tuple[int, ...] | None = None
  watermark: bool = False
  coverage: float | None = None  # for on-the-fly detection; None: the run's, else 0.85
  track: int | None = None  # swap only this track (alignments' numbering); None: every face
  max_gap: int | None = None  # longest gap filled in along a track; None: max(12, 2 * every_n)
  passthrough: bool = False  # the model replaced by the identity (see convert_faces.passthrough_fn)

  def check(self) -> None:
    for name, value, choices in (("--to", self.to, ("a", "b")), ("--mask", self.mask, MASKS),
                                 ("--color", self.color, composite.COLOR_MODES),
                                 ("--blend", self.blend, composite.BLEND_MODES)):
      if value not in choices:
        raise JaxswapError(f"{name} {value!r} is not one of {', '.join(choices)}")
    for name, value, ok, rule in (
        ("--batch", self.batch, self.batch >= 1, ">= 1"),
        ("--smooth", self.smooth, self.smooth >= 0, ">= 0"),
        ("--erode", self.erode, -50 <= self.erode <= 50, "in -50..50 (%)"),
        ("--blur", self.blur, 0 <= self.blur <= 100, "in 0..100 (%)"),
        ("--track", self.track, (self.track or 0) >= 0, ">= 0"),
        ("--max-gap", self.max_gap, (self.max_gap or 0) >= 0, ">= 0"),
        ("--sharpen", self.sharpen, 0 <= self.sharpen <= 500, "in 0..500 (%)"),
        ("--sharpen-radius", self.sharpen_radius, 0.3 <= self.sharpen_radius <= 10,
         "in 0.3..10 (pixels)"),
        ("--detail", self.detail, 0 <= self.detail <= 100, "in 0..100 (%)"),
        ("--morph", self.morph, 0 <= self.morph <= 100, "in 0..100 (%)")):
      if not ok:
        raise JaxswapError(f"{name} {value:g}: must be {rule}")
    start, end = self.frames
    if start < 0 or (end is not None and end <= start):
      raise JaxswapError(f"--frames {start}:{end} is empty or negative")


class StageTimer:
  """Seconds spent per stage, summed over threads (a stage may run on several at once)."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.counts = collections.Counter()
    self._lock = threading.Lock()

  def add(self, stage: str, seconds: float) -> None:
    with self._lock:
      self.seconds[stage] += seconds

  def count(self, name: str) -> None:
    with self._lock:
      self.counts[name] += 1


# ----------------------------------------------------------------------------------------------
# Putting faces back
# ----------------------------------------------------------------------------------------------


def blend_frame(rgb: np.ndarray, jobs: list, opts: Options, size: int, mark: bool,
                timer: StageTimer, morpher: morph.Morpher | None = None) -> np.ndarray:
  """Draws the frame's swapped faces into `rgb` in place (and returns it, watermarked if asked).

  `rgb` is the reader's own array and nothing reads it once its faces are cropped: a copy of a
  720p frame would cost more than the blending of a face in it.
  """
  t0 = time.perf_counter()
  out = rgb
  for job in jobs:
    face, learned = job.rgb, job.learned
    if morpher is not None and job.landmarks is not None:
      target = geometry.transform_points(job.matrix, job.landmarks)
      face, learned, done = morpher(face, learned, target)
      timer.count("faces_morphed" if done else "faces_not_morphed")
    face = composite.sharpen(face, opts.sharpen, opts.sharpen_radius)
    composite.paste_face(out, job.matrix, job.landmarks, job.crop, face, learned,
                         size=size, mask=opts.mask, erode=opts.erode, blur=opts.blur,
                         color=opts.color, blend=opts.blend, detail=opts.detail)
  if mark:
    out = composite.watermark(out)
  timer.add("blend", time.perf_counter() - t0)
  return out


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def convert(input_path: str, workdir: str, output: str | None, opts: Options = Options(), *,
            alignments_path: str | None = None, png_dir: str | None = None,
            progress: bool = True, model_fn=None, blend_workers: int = 2) -> dict:
  """Converts `input_path`; returns a summary with per-stage seconds.

  model_fn(faces uint8 (B, H, W, 3)) -> {"rgb": ..., ["mask": ...]} replaces the trained model
  (benchmarks pass the identity to measure the pipeline alone).
  """
  opts.check()
  if (output is None) == (png_dir is None):
    raise JaxswapError("give exactly one of --output OUT.mp4 and --png-dir DIR")
  if output is not None:
    provenance.check_writable(output, "--output")
  source = video.open_source(input_path)
  if source.kind != "video":
    raise JaxswapError(f"--input {input_path} is a folder; conversion takes a video file")
  run = convert_faces.Run.load(workdir, opts.to, opts.batch, model_fn, opts.passthrough)
  if opts.mask.startswith("learned") and not run.has_mask:
    if opts.passthrough:
      raise JaxswapError(f"--mask {opts.mask} with --passthrough: the identity has no learned "
                         "mask; use brows, components or extended")
    raise JaxswapError(f"--mask {opts.mask}: the model of {workdir} has no learned mask "
                       "(train with --config.model.learn_mask=True)")
  faces = convert_faces.FaceSource.create(source, run, alignments_path, opts)
  start, end = opts.frames
  record = provenance.provenance(
      "video", run=os.path.abspath(workdir), checkpoint_step=run.step, model=run.model_name,
      to=opts.to, source=os.path.abspath(input_path), mask=opts.mask, color=opts.color,
      blend=opts.blend, frames=[start, end], passthrough=opts.passthrough, morph=opts.morph)
  if png_dir is not None:
    sink = provenance.PngDirSink(png_dir, record, first_index=start)
  else:
    sink = video.Mp4Writer(output, source.width, source.height, source.fps, record, size="exact",
                            audio_from=input_path, audio_start=start / (source.fps or 1.0))
  mark = opts.watermark
  timer = StageTimer()
  import cv2  # pylint: disable=g-import-not-at-top
  cv2_threads = cv2.getNumThreads()
  # Faces are small: OpenCV's own thread pool costs more than it saves on them (a 64 px L*a*b*
  # conversion takes 0.55 ms with it, 0.04 ms without); the blend pool parallelises instead.
  cv2.setNumThreads(1)
  total = (min(end, source.reported_frames) if end else source.reported_frames) - start
  bar = tqdm.tqdm(total=max(total, 0) or None, unit="frame", desc="convert", dynamic_ncols=True,
                  disable=not progress)
  writer = prefetch.OrderedWriter(sink, on_write=lambda s: timer.add("encode", s))
  t0 = time.perf_counter()
  frames = swapped = 0
  morpher = morph.Morpher(opts.morph / 100.0) if opts.morph > 0 else None
  try:
    with concurrent.futures.ThreadPoolExecutor(blend_workers) as pool:
      def emit(frame, jobs):
        writer.put(pool.submit(blend_frame, frame.rgb, jobs, opts, run.size, mark, timer,
                               morpher))
        bar.update(1)

      # An mp4 is written at one constant rate: a variable-rate input is refused, not drifted.
      stream = faces.stream(timer, constant_rate=png_dir is None)
      for frame, jobs in run.batches(stream, timer, opts.batch):
        emit(frame, jobs)
        frames += 1
        swapped += len(jobs)
      writer.close()
    sink.close()
  except BaseException:
    writer.abort()
    sink.abort()
    raise
  finally:
    cv2.setNumThreads(cv2_threads)
    bar.close()
    faces.close()
    if morpher is not None:
      morpher.close()
  seconds = time.perf_counter() - t0
  return {"frames": frames, "faces_swapped": swapped, "seconds": seconds,
          "fps": frames / max(seconds, 1e-9), "output": png_dir or output,
          "stages": {k: timer.seconds.get(k, 0.0) for k in STAGES}, **faces.counts,
          "faces_morphed": timer.counts["faces_morphed"],
          "faces_not_morphed": timer.counts["faces_not_morphed"],
          "compilations": run.compilations()}


def parse_frames(text: str | None) -> tuple[int, int | None]:
  if not text:
    return 0, None
  try:
    a, b = text.split(":")
    return int(a or 0), int(b) if b else None
  except ValueError:
    raise JaxswapError(f"--frames {text!r}: expected START:END (END exclusive, either may be "
                       "empty)") from None


def parse_face_index(text: str | None) -> tuple[int, ...] | None:
  if not text:
    return None
  try:
    index = tuple(int(k) for k in text.split(","))
  except ValueError:
    index = ()
  if not index or min(index) < 0:
    raise JaxswapError(f"--face-index {text!r}: expected face numbers, e.g. 0 or 0,2")
  return index


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", help="video of the person to replace")
  p.add_argument("--workdir", help="training run (config.json + checkpoints/)")
  p.add_argument("--output", help="output .mp4 (H.264, the input's audio)")
  p.add_argument("--png-dir", help="write lossless PNG frames into this new folder instead")
  p.add_argument("--to", choices=("a", "b"), help="identity to render faces as")
  p.add_argument("--alignments", help="alignments.json of --input (jaxswap-extract); default: "
                                      "detect faces on the fly")
  p.add_argument("--mask", default="brows", choices=MASKS,
                 help="where the swapped face replaces the source's: brows (default: eyebrows to "
                      "chin, the brows raised by half their height above the eyes, as faceswap's "
                      "and DeepFaceLab's 'extended'), components (brows to chin), extended (the "
                      "whole face up to the hairline), learned (the model's own mask), "
                      "learned*components")
  p.add_argument("--erode", type=float, default=2.0,
                 help="shrink the mask by this %% of the face size (negative grows it)")
  p.add_argument("--blur", type=float, default=8.0,
                 help="Gaussian kernel size of the mask edge, %% of the face size")
  p.add_argument("--color", default="rct", choices=composite.COLOR_MODES,
                 help="colour match in the aligned face: none, avg (mean), rct (Reinhard LAB), "
                      "hist (histogram)")
  p.add_argument("--blend", default="alpha", choices=composite.BLEND_MODES)
  p.add_argument("--sharpen", type=float, default=0.0,
                 help="unsharp-mask amount in %% applied to the model's output before it is "
                      "scaled into the frame (faceswap/DeepFaceLab merger sharpen); 0: off")
  p.add_argument("--sharpen-radius", type=float, default=1.0,
                 help="the unsharp mask's Gaussian sigma in pixels of the model's output")
  p.add_argument("--detail", type=float, default=100.0,
                 help="keep this %% of the frame's own detail that a face scaled up into the "
                      "frame cannot hold: finer than the model's pixels, and on the skin (not the "
                      "eyes, brows, mouth) finer than a half-resolution decoder draws; default "
                      "100, 0: off")
  p.add_argument("--morph", type=float, default=75.0,
                 help="move the swapped face's eyes, brows, nose, mouth and jaw line this %% of "
                      "the way onto the source face's landmarks (a warp of the model's output: "
                      "expression and head pose follow the source more closely); "
                      "default 75, 0: off")
  p.add_argument("--batch", type=int, default=16, help="faces per model call")
  p.add_argument("--frames", help="START:END, convert only these frames (END exclusive)")
  p.add_argument("--smooth", type=int, default=0,
                 help="average each face's matrix and landmarks over +-N frames")
  p.add_argument("--face-index", help="swap only these faces of a frame (0 = largest), "
                                      "comma separated; default all")
  p.add_argument("--track", type=int, default=None,
                 help="swap only this face track (0 = most screen time; needs --alignments)")
  p.add_argument("--list-tracks", action="store_true",
                 help="print the tracks of --alignments (frames, first/last, size) and exit")
  p.add_argument("--max-gap", type=int, default=None,
                 help="fill in a track across at most this many frames between sampled "
                      "alignments (default max(12, 2 x --every-n)); longer gaps pass through")
  p.add_argument("--coverage", type=float, default=None,
                 help="on-the-fly detection only: crop coverage (default: the run's dataset's)")
  p.add_argument("--passthrough", action="store_true",
                 help="replace the model by the identity: each face goes through the run's "
                      "crop at its size and back (what a perfect model would give; score it with "
                      "jaxswap-evaluate to see the resolution's ceiling)")
  p.add_argument("--watermark", action="store_true", help="add a visible 'SYNTHETIC' label")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    if args.list_tracks:
      if not args.alignments:
        raise JaxswapError("--list-tracks needs --alignments FILE")
      print(track.format_tracks(alignments.load(args.alignments)["tracks"]))
      return 0
    if not args.input or not args.workdir or not args.to:
      raise JaxswapError("--input, --workdir and --to are required (except with --list-tracks)")
    opts = Options(to=args.to, mask=args.mask, erode=args.erode, blur=args.blur,
                   color=args.color, blend=args.blend, sharpen=args.sharpen,
                   sharpen_radius=args.sharpen_radius, detail=args.detail, morph=args.morph,
                   batch=args.batch,
                   frames=parse_frames(args.frames), smooth=args.smooth,
                   face_index=parse_face_index(args.face_index),
                   watermark=args.watermark, coverage=args.coverage, track=args.track,
                   max_gap=args.max_gap, passthrough=args.passthrough)
    summary = convert(args.input, args.workdir, args.output, opts,
                      alignments_path=args.alignments, png_dir=args.png_dir,
                      progress=not args.quiet)
  except JaxswapError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: no output written", file=sys.stderr)
    return 130
  print(f"{summary['output']}: {summary['frames']} frames, {summary['faces_swapped']} faces "
        f"swapped ({summary['faces_interpolated']} filled in between sampled alignments, "
        f"{summary['faces_in_long_gaps']} left out in gaps over --max-gap) in "
        f"{summary['seconds']:.1f} s ({summary['fps']:.1f} frames/s)")
  if opts.morph > 0:
    tried = summary["faces_morphed"] + summary["faces_not_morphed"]
    left = (f"; the other {summary['faces_not_morphed']} blended as drawn (no landmarks found on "
            "the swapped face, or none near the source's)") if summary["faces_not_morphed"] else ""
    print(f"--morph {opts.morph:g}: {summary['faces_morphed']} of {tried} swapped faces moved onto "
          f"the source's landmarks{left}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
