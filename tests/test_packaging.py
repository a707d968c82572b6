"""A plain (non-editable) install works from any directory: wheel contents, console scripts.

The wheel is built from a copy of the tree (an in-tree build would leave build/ and egg-info in
the checkout) with `pip wheel --no-deps` and installed with `pip install --no-deps --target` into
a temporary folder, so the environment running the tests is untouched and supplies the
dependencies.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT

SCRIPTS = ("jaxswap-extract", "jaxswap-prepare", "jaxswap-train", "jaxswap-convert", "jaxswap-demo")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(wheel path, site folder, bin folder) of the tree built and installed as a user would."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", "runs", "demo_out"))
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  build = pip + ["wheel", str(src), "--no-deps", "-w", str(tmp / "dist")]
  # The environment's setuptools first (offline); it lacks bdist_wheel before 70.1 without the
  # `wheel` package, and then pip's isolated build fetches one from the configured index.
  errors = []
  for extra in (["--no-build-isolation"], []):
    proc = subprocess.run(build + extra, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
      break
    errors.append(proc.stderr[-500:])
  else:
    pytest.skip("cannot build a wheel here (no setuptools with bdist_wheel, no index): "
                + " | ".join(errors))
  (wheel,) = glob.glob(str(tmp / "dist" / "jaxswap-*.whl"))
  site = tmp / "site"
  subprocess.run(pip + ["install", "--no-deps", "--target", str(site), wheel], check=True,
                 capture_output=True)
  return wheel, str(site), str(site / "bin")


def run_script(installed, name, *args, cwd):
  _, site, bindir = installed
  env = dict(os.environ, PYTHONPATH=site)  # the installed copy, not the checkout
  return subprocess.run([os.path.join(bindir, name), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, check=False, timeout=600)


def test_wheel_holds_configs_and_the_face_pipeline(installed):
  names = set(zipfile.ZipFile(installed[0]).namelist())
  for path in ("jaxswap/configs/tiny.py", "jaxswap/configs/original.py", "jaxswap/data/loader.py",
               "jaxswap/data/datasets.py", "jaxswap/faces/detect.py", "jaxswap/faces/warp.py",
               "jaxswap/faces/composite.py", "jaxswap/faces/alignments.py", "jaxswap/video.py",
               "jaxswap/extract.py", "jaxswap/prepare.py", "jaxswap/convert.py"):
    assert path in names, path
  assert not any(n.startswith(("tools/", "configs/", "tests/", "benchmarks/")) for n in names)


def test_console_scripts_run_from_another_directory(installed, tmp_path):
  _, site, _ = installed
  where = subprocess.run([sys.executable, "-c", "import jaxswap; print(jaxswap.__file__)"],
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=site), capture_output=True,
                         text=True, check=True).stdout
  assert where.startswith(site), where
  for name in SCRIPTS:
    proc = run_script(installed, name, "--help", cwd=tmp_path)
    # absl (jaxswap-train) ends its --help with status 1; argparse with 0.
    assert proc.returncode in ((0, 1) if name == "jaxswap-train" else (0,)), (name, proc.stderr)
    assert "Traceback" not in proc.stderr and "usage" in proc.stdout.lower(), (name, proc.stdout)


def test_extract_then_convert_from_another_directory(installed, tiny_run, tmp_path):
  """The installed scripts, run outside the repository: extract a clip, swap it with a run."""
  pytest.importorskip("skimage.data")
  from tests.test_extract import write_video  # pylint: disable=g-import-not-at-top
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  write_video(str(outside / "clip.mp4"), n=4)
  proc = run_script(installed, "jaxswap-extract", "--input", "clip.mp4", "--output", "ext",
                    "--quiet", cwd=outside)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert os.path.isfile(outside / "ext" / "alignments.json")
  proc = run_script(installed, "jaxswap-convert", "--input", "clip.mp4", "--workdir", tiny_run,
                    "--alignments", "ext/alignments.json", "--output", "out.mp4", "--to", "a",
                    "--quiet", cwd=outside)
  assert proc.returncode == 0, proc.stderr[-2000:]
  def frames(path):
    cap, out = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
      out.append(got[1].astype(np.int16))
    return out
  before, after = frames(outside / "clip.mp4"), frames(outside / "out.mp4")
  assert len(after) == len(before) == 4
  assert all(np.abs(a - b).max() > 40 for a, b in zip(after, before))  # the face was swapped
