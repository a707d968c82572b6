"""A real prepared dataset for end-to-end benchmarks, built from two videos by `jaxswap.prepare`.

Why: `--data-dir` times the step fed by `StepLoader` (PNG decoding, sampling, host-to-device
copies), but a dataset made elsewhere may differ in size and faces from run to run. Building it
from named videos inside the benchmark's own temporary folder makes the figure reproducible from
one command. Faces are extracted once; a dataset is built per image size the configs need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from jaxswap import extract, prepare
from jaxswap.errors import JaxswapError


class BuiltDatasets:
  """Extracts `a` and `b` once (lazily), then one `jaxswap_faces` dataset per image size."""

  def __init__(self, a: str, b: str, *, every_n: int = 1, keep_dir: str | None = None,
               progress: bool = True):
    for path in (a, b):
      if not os.path.exists(path):
        raise JaxswapError(f"--build-from {path}: no such video or photo folder")
    self.a, self.b, self.every_n, self.progress = a, b, every_n, progress
    self.keep = keep_dir is not None
    self.root = keep_dir or tempfile.mkdtemp(prefix="jaxswap-bench-data-")
    os.makedirs(self.root, exist_ok=True)
    self.by_size: dict[int, str] = {}
    self.report: dict = {"a": os.path.abspath(a), "b": os.path.abspath(b), "every_n": every_n,
                         "root": self.root, "kept": self.keep, "sizes": {}}

  def data_dir(self, image_size: int) -> str:
    """The TFDS data_dir holding `jaxswap_faces` at this size (built on first request)."""
    if image_size in self.by_size:
      return self.by_size[image_size]
    out = os.path.join(self.root, f"faces{image_size}")
    t0 = time.perf_counter()
    first = os.path.join(self.root, f"faces{next(iter(self.by_size))}") if self.by_size else None
    if first is None:  # extract (mediapipe) and build
      result = prepare.prepare([self.a], [self.b], out, size=image_size,
                               settings=extract.Settings(faces="largest", every_n=self.every_n),
                               progress=self.progress)
      self.report["extracted"] = result.get("extracted")
    else:  # reuse the first size's extracted crops
      result = prepare.build_faces(out, prepare.extracted_dirs(first, "a", [self.a]),
                                   prepare.extracted_dirs(first, "b", [self.b]),
                                   image_size=image_size, min_face=image_size / 2,
                                   min_blur=10.0)
    self.report["sizes"][str(image_size)] = {
        "data_dir": out, "splits": result["splits"], "dropped": result["dropped"],
        "seconds": round(time.perf_counter() - t0, 1)}
    if self.progress:
      print(f"# dataset {image_size} px: {result['splits']} in {out} "
            f"({time.perf_counter() - t0:.0f} s)", flush=True)
    self.by_size[image_size] = out
    return out

  def close(self) -> None:
    if not self.keep:
      shutil.rmtree(self.root, ignore_errors=True)
