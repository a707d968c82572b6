"""Two videos (or photo folders) in, a training-ready TFDS dataset out, in one command.

  jaxswap-prepare --a VIDEO_OR_DIR --b VIDEO_OR_DIR --output DIR [--size 64]
  (= python tools/prepare_dataset.py ...)

Extracts each input into DIR/extracted/{a,b}/NAME (resuming finished work), filters the faces
(size, blur, failed landmarks), builds `jaxswap_faces` (array_record shards) in DIR and prints the
command that trains on it. DIR is then the `--config.data.dir` of `python -m jaxswap.train`.
--a/--b may be repeated to pool several videos of the same person.

Each extracted folder (one video or photo folder) is one `source`; the last `validation_fraction`
of its frames (a contiguous block, after a gap of about a second so near-identical neighbours never
straddle the split) becomes validation. The aligned crops are resized to `image_size` with an area
filter; landmarks follow exactly. The dataset's metadata records the face geometry (coverage,
template, size) that training hands on to the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from typing import Sequence

import cv2
import numpy as np

from jaxswap import configs, extract
from jaxswap.data import datasets
from jaxswap.data.datasets import IDENTITIES, SPLITS, face_example, split_name, validation_start
from jaxswap.errors import JaxswapError
from jaxswap.faces import alignments, geometry, pose

NAME = datasets.FACES_NAME


@dataclasses.dataclass(frozen=True)
class FaceRef:
  """One usable face: where its files are and its landmarks in the extracted crop."""
  identity: str
  folder: str
  source: str
  frame: int
  file: str
  mask_file: str
  landmarks: np.ndarray  # (478, 2) in the extracted crop's pixels
  crop_size: int


def select_faces(folder: str, identity: str, *, mask: str = "components", min_face: float = 0.0,
                 min_blur: float = 0.0) -> tuple[list[FaceRef], dict, dict]:
  """(faces passing the filters, dropped counts by reason, alignments document) of one folder."""
  doc = alignments.load(os.path.join(folder, alignments.FILENAME))
  if not doc.get("complete"):
    raise JaxswapError(f"{folder}/{alignments.FILENAME} is from an unfinished extraction; "
                       "re-run jaxswap-extract on it")
  size = int(doc["settings"]["size"])
  refs, dropped = [], {"small": 0, "blurry": 0, "no_landmarks": 0, "not_written": 0}
  for frame, face in alignments.face_records(doc):
    bbox = face["bbox"]
    lm, matrix = alignments.landmarks(face), alignments.matrix(face)
    if lm is None or matrix is None:
      dropped["no_landmarks"] += 1
    elif max(bbox[2] - bbox[0], bbox[3] - bbox[1]) < min_face:
      dropped["small"] += 1
    elif face.get("blur") is None or face["blur"] < min_blur:
      dropped["blurry"] += 1
    elif not face.get("file"):
      dropped["not_written"] += 1
    else:
      refs.append(FaceRef(identity=identity, folder=folder, source=doc["source"]["path"],
                          frame=int(frame["frame"]),
                          file=alignments.face_path(folder, doc, face),
                          mask_file=alignments.mask_path(folder, doc, face, mask),
                          landmarks=geometry.transform_points(matrix, lm), crop_size=size))
  return refs, dropped, doc


def split_refs(refs: Sequence[FaceRef], fraction: float, gap: int) -> dict[str, list[FaceRef]]:
  """Train/validation by contiguous frame blocks of one source: validation is the last block.

  `gap` frames before the validation block are left out (at most a tenth of the frames), so the
  last training frame is never the near-twin of the first validation frame.
  """
  frames = sorted({r.frame for r in refs})
  start = validation_start(len(frames), fraction)
  if start >= len(frames):
    return {"train": list(refs), "validation": []}
  first_val = frames[start]
  gap = min(gap, len(frames) // 10)
  train_frames = set(frames[:max(1, start - gap)])
  return {"train": [r for r in refs if r.frame in train_frames],
          "validation": [r for r in refs if r.frame >= first_val]}


def face_pose(ref: FaceRef) -> tuple[float, float, float]:
  """(yaw, pitch, roll) in degrees of the generic head fitted to a face's crop landmarks."""
  return pose.yaw_pitch_roll(pose.head_rotation(ref.landmarks, ref.crop_size, ref.crop_size,
                                                pose.MEDIAPIPE478))


def pose_coverage(a_refs: Sequence[FaceRef], b_refs: Sequence[FaceRef],
                  margin: float = 5.0, tail: float = 0.01) -> dict | None:
  """How many of B's faces are posed beyond the span of A's, and which way.

  A's decoder learns to draw the poses A's footage shows; when B turns or looks further, the
  swap holds the nearest pose A's decoder knows (`jaxswap-evaluate` then shows pitch or yaw not
  followed). The span leaves out the outer `tail` of A's poses on each side and adds `margin`
  degrees; the directions are `pose.beyond`'s.
  """
  span = pose.pose_range([face_pose(r) for r in a_refs], margin, tail)
  b = [face_pose(r) for r in b_refs]
  fraction = None if span is None else pose.outside_fraction(b, span)
  if fraction is None:
    return None
  ways = pose.beyond(b, span)
  return {"b_outside_a": fraction, "b_faces": len(ways["down"]), "a_span": span,
          "b_beyond": {k: float(v.mean()) for k, v in ways.items()}}


def load_example(ref: FaceRef, image_size: int) -> tuple[str, dict]:
  """(key, TFDS example) of one face, resized from the extracted crop to `image_size`."""
  image = cv2.imread(ref.file, cv2.IMREAD_COLOR)
  mask = cv2.imread(ref.mask_file, cv2.IMREAD_GRAYSCALE) if ref.mask_file else None
  if image is None or mask is None:
    raise JaxswapError(f"cannot read {ref.file} or its mask {ref.mask_file}; re-run "
                       f"jaxswap-extract on {ref.folder}")
  image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  if image.shape[0] != image_size:
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (image_size, image_size), interpolation=cv2.INTER_AREA)
  r = image_size / ref.crop_size  # resize maps pixel areas: centres move as (x + 0.5) r - 0.5
  landmarks = (ref.landmarks + 0.5) * r - 0.5
  priority = geometry.priority_mask(landmarks, image_size)
  key = f"{ref.identity}-{ref.folder}-{os.path.basename(ref.file)}"
  return key, face_example(image, mask, priority, landmarks, ref.identity, ref.source, ref.frame)


def face_geometry(geometries: dict[str, tuple[float, str | None]], image_size: int) -> dict:
  """The crop geometry every face of the dataset shares; training hands it on to the run.

  A model learns faces at one scale: folders extracted at different coverages or templates
  cannot make one dataset.
  """
  if len(set(geometries.values())) != 1:
    listed = ", ".join(f"{folder}: coverage {c}, template {t}"
                       for folder, (c, t) in sorted(geometries.items()))
    raise JaxswapError(f"the extracted folders crop faces differently ({listed}); re-extract "
                       "them with one --coverage")
  coverage, template = next(iter(geometries.values()))
  return {"coverage": coverage, "template": template, "size": image_size}


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def build_faces(data_dir: str, a_dirs: Sequence[str], b_dirs: Sequence[str], *,
                image_size: int = 64, mask: str = "components", min_face: float = 0.0,
                min_blur: float = 0.0, validation_fraction: float = 0.1,
                validation_gap_seconds: float = 1.0, num_shards: int = 4,
                workers: int = 2, report_poses: bool = True) -> dict:
  """Builds (or reuses, when inputs and options are unchanged) `jaxswap_faces` in data_dir.

  Returns {"name", "built" (False when reused), "splits": {split: count}, "dropped":
  {identity: {reason: count}}, "shards", "path", "pose_coverage" (of B's faces by A's, see
  `pose_coverage`; None without `report_poses`)}.
  """
  if mask not in geometry.MASK_TYPES:
    raise JaxswapError(f"mask {mask!r} is not one of {geometry.MASK_TYPES}")
  if not 8 <= image_size <= 1024:
    raise JaxswapError(f"image size {image_size} is outside 8..1024")
  folders = {"a": list(a_dirs), "b": list(b_dirs)}
  plan: dict[str, list[FaceRef]] = {split_name(s, i): [] for s in SPLITS for i in IDENTITIES}
  dropped, sources, geometries = {}, [], {}
  for ident in IDENTITIES:
    if not folders[ident]:
      raise JaxswapError(f"no extracted folder given for identity {ident!r}")
    dropped[ident] = {}
    for folder in folders[ident]:
      refs, why, doc = select_faces(folder, ident, mask=mask, min_face=min_face,
                                    min_blur=min_blur)
      source, settings = doc["source"], doc["settings"]
      geometries[folder] = (float(settings["coverage"]), settings.get("template"))
      for k, v in why.items():
        dropped[ident][k] = dropped[ident].get(k, 0) + v
      gap = int(round((source.get("fps") or 0.0) * validation_gap_seconds))
      parts = split_refs(refs, validation_fraction, gap)
      for split, part in parts.items():
        plan[split_name(split, ident)] += part
      doc_path = os.path.join(folder, alignments.FILENAME)
      sources.append({"identity": ident, "folder": os.path.abspath(folder),
                      "alignments_sha256": _file_digest(doc_path), "faces": len(refs)})
    if not plan[split_name("train", ident)]:
      raise JaxswapError(
          f"no usable training faces of identity {ident!r} in {', '.join(folders[ident])} "
          f"(dropped: {dropped[ident]}); lower --min-face/--min-blur or add footage")
  face = face_geometry(geometries, image_size)
  counts = {k: len(v) for k, v in plan.items() if v}
  options = {"image_size": image_size, "mask": mask, "min_face": min_face, "min_blur": min_blur,
             "validation_fraction": validation_fraction,
             "validation_gap_seconds": validation_gap_seconds}
  fingerprint = hashlib.sha256(
      json.dumps([options, sources, face], sort_keys=True).encode()).hexdigest()
  metadata = {"fingerprint": fingerprint, "options": options, "sources": sources, "face": face,
              "num_landmarks": geometry.NUM_LANDMARKS, "image_size": image_size}
  version_dir = datasets.faces_version_dir(data_dir)
  built = (datasets.stored_metadata(version_dir) or {}).get("fingerprint") != fingerprint
  if built and os.path.isdir(version_dir):
    shutil.rmtree(version_dir)  # built from other faces or options: stale
  shards = max(1, min([num_shards] + list(counts.values())))
  datasets.build_faces_dataset(data_dir, plan, lambda r: load_example(r, image_size),
                               num_landmarks=geometry.NUM_LANDMARKS, metadata=metadata,
                               num_shards=shards, workers=workers)
  cover = None
  if report_poses:
    by_identity = {i: [r for s in SPLITS for r in plan[split_name(s, i)]] for i in IDENTITIES}
    cover = pose_coverage(by_identity["a"], by_identity["b"])
  return {"name": NAME, "built": built, "splits": counts, "dropped": dropped,
          "shards": shards, "path": version_dir, "pose_coverage": cover}


# Model input sizes of the shipped configs: the dataset's faces must match config.image_size.
CONFIG_FOR_SIZE = {64: "original", 128: "quick", 256: "liae256"}


def config_file(name: str) -> str:
  """A path `--config` opens from where the command runs: the checkout's `configs/NAME.py` (a
  re-export), else the installed package's own file."""
  local = os.path.join("configs", f"{name}.py")
  if os.path.isfile(local):
    return local
  return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), f"{name}.py")


def extracted_dirs(output: str, identity: str, inputs: list[str]) -> list[str]:
  """DIR/extracted/<identity>/<input name>, made unique when two inputs share a name."""
  dirs, seen = [], set()
  for path in inputs:
    name = extract.safe_stem(path)
    unique, k = name, 2
    while unique in seen:
      unique, k = f"{name}_{k}", k + 1
    seen.add(unique)
    dirs.append(os.path.join(output, "extracted", identity, unique))
  return dirs


def train_command(output: str, size: int, workdir: str) -> str | None:
  """The command that trains on the dataset; None when no shipped model takes `size` px faces
  (a model is built for one size: --config.image_size cannot change it)."""
  if size not in CONFIG_FOR_SIZE:
    return None
  return (f"python -m jaxswap.train --config {config_file(CONFIG_FOR_SIZE[size])} "
          f"--workdir {workdir} --config.data.dir={output} --config.data.name=jaxswap_faces")


def extract_all(output: str, inputs: dict[str, list[str]], settings: extract.Settings,
                progress: bool) -> dict[str, str]:
  """Extracts every input into DIR/extracted/<group>/<name> (resumable); summaries by folder."""
  reports = {}
  for group, paths in inputs.items():
    for path, folder in zip(paths, extracted_dirs(output, group, paths)):
      if progress:
        print(f"[{group}] extracting {path} -> {folder}", file=sys.stderr)
      doc = extract.extract(path, folder, settings, progress=progress)
      reports[folder] = extract.format_summary(doc)
      if progress:
        print(f"[{group}] {reports[folder]}", file=sys.stderr)
  return reports


def prepare_pretrain(inputs: list[str], output: str, *, size: int = 64,
                     settings: extract.Settings = extract.Settings(faces="all"),
                     min_face: float | None = None, min_blur: float = 10.0,
                     mask: str = "components", validation: float = 0.1, shards: int = 4,
                     progress: bool = True) -> dict:
  """Many people pooled into one dataset whose A and B are both the whole pool.

  DeepFaceLab's pretraining: the encoder (and LIAE's inter blocks) learn faces in general, both
  decoders learn to draw any face; a pair run then starts from it (`--config.init_from`).
  """
  if len(set(map(os.path.abspath, inputs))) != len(inputs):
    raise JaxswapError("--pretrain lists the same input twice")
  reports = extract_all(output, {"pool": inputs}, settings, progress)
  folders = extracted_dirs(output, "pool", inputs)
  result = build_faces(output, folders, folders, image_size=size, mask=mask,
                       min_face=size / 2 if min_face is None else min_face, min_blur=min_blur,
                       validation_fraction=validation, num_shards=shards,
                       report_poses=False)  # A and B are the same pool
  result["extracted"] = reports
  return result


def prepare(a_inputs: list[str], b_inputs: list[str], output: str, *, size: int = 64,
            settings: extract.Settings = extract.Settings(faces="largest"),
            min_face: float | None = None, min_blur: float = 10.0, mask: str = "components",
            validation: float = 0.1, shards: int = 4, progress: bool = True) -> dict:
  """Extracts both identities, then builds the dataset; returns build_faces' report + extras."""
  for a in a_inputs:
    for b in b_inputs:
      if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
        raise JaxswapError(f"--a and --b are the same input ({a}); they must be two people")
  reports = extract_all(output, {"a": a_inputs, "b": b_inputs}, settings, progress)
  result = build_faces(
      output, extracted_dirs(output, "a", a_inputs), extracted_dirs(output, "b", b_inputs),
      image_size=size, mask=mask, min_face=size / 2 if min_face is None else min_face,
      min_blur=min_blur, validation_fraction=validation, num_shards=shards)
  result["extracted"] = reports
  return result


def coverage_report(cover: dict) -> str:
  """The pose coverage as a line (and a hint when B often goes beyond A)."""
  span, frac = cover["a_span"], cover["b_outside_a"]
  ways = {"down": "looking down", "up": "looking up", "left": "turned to the image's left",
          "right": "turned to the image's right"}
  where = ", ".join(f"{ways[k]} {100 * v:.0f} %" for k, v in cover["b_beyond"].items() if v > 0)
  line = (f"poses: A's faces span yaw {span['yaw'][0]:.0f}..{span['yaw'][1]:.0f}, pitch "
          f"{span['pitch'][0]:.0f}..{span['pitch'][1]:.0f} deg; {100 * frac:.0f} % of B's "
          f"{cover['b_faces']} faces lie beyond" + (f" ({where})" if where else ""))
  if frac >= 0.1:
    line += ("\n  A's decoder can only draw the poses A's footage shows: in those frames the swap "
             "will not follow B's head. Add footage of A posed that way (--a may be repeated).")
  return line


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--a", action="append", help="video or photo folder of person A")
  p.add_argument("--b", action="append", help="video or photo folder of person B")
  p.add_argument("--pretrain", nargs="+", action="extend", metavar="INPUT",
                 help="instead of --a/--b: videos and photo folders of many people, pooled into "
                      "one dataset for pretraining (every face found is used unless --faces)")
  p.add_argument("--output", required=True, help="dataset folder (the --config.data.dir)")
  p.add_argument("--size", type=int, default=64,
                 help="face size in the dataset = the model's config.image_size "
                      "(64: original/lightweight/tiny, 128: sae128)")
  p.add_argument("--extract-size", type=int, default=256,
                 help="side of the aligned crops kept on disk (resized to --size for the dataset)")
  extract.add_finding_args(p, faces=None)
  p.add_argument("--min-face", type=float, default=None,
                 help="drop faces whose detection box is smaller (frame pixels; default --size/2)")
  p.add_argument("--min-blur", type=float, default=10.0,
                 help="drop faces with a lower blur score (Laplacian variance at 128 px)")
  p.add_argument("--mask", choices=("components", "extended"), default="components",
                 help="the dataset's mask feature")
  p.add_argument("--validation", type=float, default=0.1,
                 help="fraction of each input's frames (its last block) kept for validation")
  p.add_argument("--shards", type=int, default=4, help="array_record shards per split")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  pair = bool(args.a or args.b)
  if (args.pretrain and pair) or (not args.pretrain and not (args.a and args.b)):
    print("error: give --a and --b (two people), or --pretrain INPUT... (many people)",
          file=sys.stderr)
    return 2
  # A pair's videos are about one person each; a pretraining pool wants every face it holds.
  faces = args.faces or ("all" if args.pretrain else "largest")
  settings = extract.Settings(size=args.extract_size, coverage=args.coverage,
                              every_n=args.every_n, faces=faces,
                              detect_confidence=args.detect_confidence)
  options = dict(size=args.size, settings=settings, min_face=args.min_face,
                 min_blur=args.min_blur, mask=args.mask, validation=args.validation,
                 shards=args.shards, progress=not args.quiet)
  try:
    if args.pretrain:
      result = prepare_pretrain(args.pretrain, args.output, **options)
    else:
      result = prepare(args.a, args.b, args.output, **options)
  except JaxswapError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: finished frames are kept; re-run to resume", file=sys.stderr)
    return 130
  splits = ", ".join(f"{k} {v}" for k, v in sorted(result["splits"].items()))
  state = "built" if result["built"] else "unchanged, reused"
  print(f"dataset {result['name']} ({state}) in {args.output}: {splits} faces of "
        f"{args.size} px in {result['shards']} shards per split")
  for ident, why in result["dropped"].items():
    if any(why.values()):
      print(f"  dropped {ident}: " + ", ".join(f"{v} {k}" for k, v in why.items() if v))
  if result["pose_coverage"]:
    print(coverage_report(result["pose_coverage"]))
  workdir = os.path.join("runs", os.path.basename(os.path.normpath(args.output)) or "faces")
  command = train_command(args.output, args.size, workdir)
  if command is None:
    sizes = ", ".join(f"{s} ({n})" for s, n in sorted(CONFIG_FOR_SIZE.items()))
    print(f"no shipped config trains on {args.size} px faces (sizes: {sizes}); write one whose "
          "model is built for them, or rebuild with such a --size")
  else:
    print("train with:\n  " + command)
    if args.pretrain:
      print("then start each pair's run from it: add --config.init_from=" + workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
