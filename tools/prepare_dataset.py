"""Two videos (or photo folders) in, a training-ready TFDS dataset out, in one command.

  python tools/prepare_dataset.py --a VIDEO_OR_DIR --b VIDEO_OR_DIR --output DIR [--size 64]

Extracts each input into DIR/extracted/{a,b}/NAME (resuming finished work), filters the faces
(size, blur, failed landmarks), builds `jaxswap_faces` (array_record shards) in DIR and prints the
command that trains on it. DIR is then the `--config.data.dir` of `python -m jaxswap.train`.
--a/--b may be repeated to pool several videos of the same person.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as `python tools/prepare_dataset.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxswap.errors import JaxswapError  # pylint: disable=g-import-not-at-top
from tools import extract

# Model input sizes of the shipped configs: the dataset's faces must match config.image_size.
CONFIG_FOR_SIZE = {64: "configs/original.py", 128: "configs/sae128.py"}


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


def train_command(output: str, size: int, workdir: str) -> str:
  config = CONFIG_FOR_SIZE.get(size, "configs/original.py")
  extra = "" if size in CONFIG_FOR_SIZE else f" --config.image_size={size}"
  return (f"python -m jaxswap.train --config {config} --workdir {workdir} "
          f"--config.data.dir={output} --config.data.name=jaxswap_faces{extra}")


def prepare(a_inputs: list[str], b_inputs: list[str], output: str, *, size: int = 64,
            settings: extract.Settings = extract.Settings(faces="largest"),
            min_face: float | None = None, min_blur: float = 10.0, mask: str = "components",
            validation: float = 0.1, shards: int = 4, progress: bool = True) -> dict:
  """Extracts both identities, then builds the dataset; returns build_faces' report + extras."""
  for a in a_inputs:
    for b in b_inputs:
      if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
        raise JaxswapError(f"--a and --b are the same input ({a}); they must be two people")
  reports = {}
  for ident, inputs in (("a", a_inputs), ("b", b_inputs)):
    for path, folder in zip(inputs, extracted_dirs(output, ident, inputs)):
      if progress:
        print(f"[{ident}] extracting {path} -> {folder}", file=sys.stderr)
      doc = extract.extract(path, folder, settings, progress=progress)
      reports[folder] = extract.format_summary(doc)
      if progress:
        print(f"[{ident}] {reports[folder]}", file=sys.stderr)
  from jaxswap import data_faces  # pylint: disable=g-import-not-at-top  (TFDS import is slow)
  result = data_faces.build_faces(
      output, extracted_dirs(output, "a", a_inputs), extracted_dirs(output, "b", b_inputs),
      image_size=size, mask=mask, min_face=size / 2 if min_face is None else min_face,
      min_blur=min_blur, validation_fraction=validation, num_shards=shards)
  result["extracted"] = reports
  return result


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--a", action="append", required=True, help="video or photo folder of person A")
  p.add_argument("--b", action="append", required=True, help="video or photo folder of person B")
  p.add_argument("--output", required=True, help="dataset folder (the --config.data.dir)")
  p.add_argument("--size", type=int, default=64,
                 help="face size in the dataset = the model's config.image_size "
                      "(64: original/lightweight/tiny, 128: sae128)")
  p.add_argument("--extract-size", type=int, default=256,
                 help="side of the aligned crops kept on disk (resized to --size for the dataset)")
  p.add_argument("--coverage", type=float, default=0.85, help="see tools/extract.py --coverage")
  p.add_argument("--every-n", type=int, default=1, help="use every n-th video frame")
  p.add_argument("--faces", choices=("all", "largest"), default="largest",
                 help="faces per frame to keep (largest: the person the video is about)")
  p.add_argument("--detect-confidence", type=float, default=0.5)
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
  settings = extract.Settings(size=args.extract_size, coverage=args.coverage,
                              every_n=args.every_n, faces=args.faces,
                              detect_confidence=args.detect_confidence)
  try:
    result = prepare(args.a, args.b, args.output, size=args.size, settings=settings,
                     min_face=args.min_face, min_blur=args.min_blur, mask=args.mask,
                     validation=args.validation, shards=args.shards, progress=not args.quiet)
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
  workdir = os.path.join("runs", os.path.basename(os.path.normpath(args.output)) or "faces")
  print("train with:\n  " + train_command(args.output, args.size, workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
