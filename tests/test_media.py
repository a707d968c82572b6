"""Provenance tags and atomic writes; swap-quality metrics against closed-form cases."""

import os

import numpy as np
import pytest

from jaxswap import provenance
from jaxswap import video
from jaxswap.errors import JaxswapError


def test_png_carries_provenance_and_decodes_unchanged(tmp_path):
  import cv2
  rgb = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
  path = str(tmp_path / "x.png")
  provenance.write_png(path, rgb, provenance.provenance("test", run="r1"))
  record = video.provenance_of(path)
  assert record["synthetic"] is True and record["run"] == "r1"
  text = provenance.png_text(open(path, "rb").read())
  assert text["DigitalSourceType"] == provenance.IPTC_SYNTHETIC
  np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB), rgb)
  assert os.listdir(tmp_path) == ["x.png"]  # no temporary left behind


def test_mp4_carries_provenance(tmp_path):
  if video.ffmpeg_exe() is None:
    pytest.skip("imageio-ffmpeg's ffmpeg binary is not available")
  import cv2
  path = str(tmp_path / "v.mp4")
  frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(12)]
  assert video.write_mp4(path, frames, 24, provenance.provenance("test", run="r2")) == 12
  assert video.provenance_of(path)["run"] == "r2"
  cap = cv2.VideoCapture(path)
  assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
  assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)


def test_failed_write_leaves_nothing(tmp_path):
  path = tmp_path / "out.bin"
  path.write_bytes(b"old")
  with pytest.raises(RuntimeError):
    with provenance.atomic_path(str(path)) as tmp:
      open(tmp, "wb").write(b"half")
      raise RuntimeError("killed")
  assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
  with pytest.raises(JaxswapError, match="cannot write"):
    provenance.write_bytes("/proc/nope/out.bin", b"x")
