"""Imports run one way: read every module's imports (ast) and refuse one that runs upward.

The rules (README "Layout"): the training core never imports the face pipeline, video or the
pipelines; `faces/` is numpy + OpenCV, never jax; nothing in the package imports `tools/`,
`benchmarks/` or the root `configs/`; each outside system has one owning module.
"""

from __future__ import annotations

import ast
import os

import pytest

from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, "jaxswap")

# The training core and what it stands on.
CORE = ("jaxswap.train", "jaxswap.step", "jaxswap.models", "jaxswap.losses", "jaxswap.augment",
        "jaxswap.parallel", "jaxswap.checkpoint", "jaxswap.swap", "jaxswap.previews",
        "jaxswap.logs",
        "jaxswap.prefetch", "jaxswap.errors", "jaxswap.provenance", "jaxswap.synthetic_eval",
        "jaxswap.data", "jaxswap.configs")
# What the core must never reach.
ABOVE_CORE = ("jaxswap.faces", "jaxswap.video", "jaxswap.images", "jaxswap.extract",
              "jaxswap.prepare", "jaxswap.convert", "jaxswap.convert_faces", "jaxswap.demo",
              "jaxswap.evaluate")
FACES_MAY_IMPORT = ("jaxswap.faces", "jaxswap.errors", "jaxswap.provenance")
NOT_IN_FACES = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow_datasets")
NEVER = ("tools", "benchmarks", "configs")
# outside system -> the one module allowed to import it
OWNERS = {"mediapipe": "jaxswap.faces.detect", "tensorflow_datasets": "jaxswap.data.datasets",
          "orbax": "jaxswap.checkpoint", "imageio_ffmpeg": "jaxswap.video"}
VIDEO_ATTRS = ("VideoCapture", "VideoWriter")  # cv2's video I/O: jaxswap.video only


def _under(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports_of(source: str, module: str) -> tuple[set[str], set[str]]:
  """(modules imported anywhere in the source, incl. inside functions; cv2 attributes used)."""
  tree = ast.parse(source)
  names, attrs = set(), set()
  package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against this module's package
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      names.add(base)
      names.update(f"{base}.{a.name}" for a in node.names)  # `from jaxswap import video`
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
        node.value.id == "cv2":
      attrs.add(node.attr)
  return names, attrs


def violations(module: str, source: str) -> list[str]:
  names, attrs = imports_of(source, module)
  out = []
  for name in sorted(names):
    if _under(name, NEVER):
      out.append(f"{module} imports {name} (nothing in the package may)")
    if _under(module, CORE) and _under(name, ABOVE_CORE):
      out.append(f"{module} imports {name}: the training core never imports the face/video "
                 "pipeline")
    if _under(module, ("jaxswap.faces",)):
      if _under(name, NOT_IN_FACES):
        out.append(f"{module} imports {name}: faces/ is numpy + OpenCV, never jax")
      if name.startswith("jaxswap") and name != "jaxswap" and \
          not _under(name, FACES_MAY_IMPORT):
        out.append(f"{module} imports {name}: faces/ stands on errors and provenance only")
    for system, owner in OWNERS.items():
      if _under(name, (system,)) and module != owner:
        out.append(f"{module} imports {system}, which only {owner} may")
  for attr in sorted(set(VIDEO_ATTRS) & attrs):
    if module != "jaxswap.video":
      out.append(f"{module} uses cv2.{attr}, which only jaxswap.video may")
  if "ffmpeg" in source and module != "jaxswap.video" and "ffmpeg" in _code_strings(source):
    out.append(f"{module} runs ffmpeg, which only jaxswap.video may")
  return out


def _code_strings(source: str) -> str:
  """String constants passed as call arguments (where an ffmpeg command line would be)."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Call):
      for arg in node.args:
        for sub in ast.walk(arg):
          if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            found.append(sub.value)
  return " ".join(found)


def package_modules() -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        with open(path, encoding="utf-8") as f:
          out[rel.removesuffix(".__init__")] = f.read()
  return out


def test_package_imports_run_one_way():
  modules = package_modules()
  assert "jaxswap.train" in modules and "jaxswap.faces.detect" in modules
  problems = [v for module, source in sorted(modules.items()) for v in violations(module, source)]
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module,source,expected", [
    ("jaxswap.train", "def f():\n  from jaxswap import video\n", "training core"),
    ("jaxswap.data.loader", "from jaxswap.faces import geometry\n", "training core"),
    ("jaxswap.models", "import jaxswap.extract\n", "training core"),
    ("jaxswap.convert", "from tools import blend\n", "nothing in the package"),
    ("jaxswap.demo", "from configs import tiny\n", "nothing in the package"),
    ("jaxswap.convert", "import mediapipe as mp\n", "only jaxswap.faces.detect"),
    ("jaxswap.faces.warp", "import jax.numpy as jnp\n", "never jax"),
    ("jaxswap.faces.composite", "from jaxswap import swap\n", "errors and provenance only"),
    ("jaxswap.extract", "import cv2\ncap = cv2.VideoCapture('x')\n", "cv2.VideoCapture"),
    ("jaxswap.demo", "import subprocess\nsubprocess.run(['ffmpeg', '-i', 'x'])\n", "runs ffmpeg"),
    ("jaxswap.prepare", "import tensorflow_datasets as tfds\n", "only jaxswap.data.datasets"),
    ("jaxswap.swap", "import orbax.checkpoint as ocp\n", "only jaxswap.checkpoint"),
])
def test_checker_catches_upward_imports(module, source, expected):
  found = violations(module, source)
  assert any(expected in v for v in found), found


def test_checker_accepts_downward_imports():
  assert violations("jaxswap.convert", "from jaxswap import swap, video\n"
                                       "from jaxswap.faces import detect\n") == []
  assert violations("jaxswap.train", "from jaxswap.data import loader\n") == []
