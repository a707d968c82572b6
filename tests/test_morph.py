"""The conversion's landmark morph (jaxswap.faces.morph) on a real face: scikit-image's astronaut.

Tolerances: mediapipe's landmarks of the same face move by a fraction of a pixel when the image is
resampled (tests/test_extract.py); at the 128 px crop used here the mean over the morph's points
stays under ~1 px, so a 4 px move of the lower lip is well above that noise.
"""

import concurrent.futures
import dataclasses
import subprocess

import cv2
import numpy as np
import pytest

from jaxswap import convert
from jaxswap import video as video_io
from jaxswap.faces import detect, geometry as g, morph, warp

skimage_data = pytest.importorskip("skimage.data")
SIZE = 128
LOWER_LIP = (14, 17, 84, 87, 178, 181, 314, 317, 402, 405)  # inner and outer lower lip, centre


@pytest.fixture(scope="module")
def detector():
  with detect.FaceDetector() as d:
    yield d


@pytest.fixture(scope="module")
def face():
  """The astronaut's aligned 128 px crop (float [0, 1]) and its landmarks in the crop."""
  photo = skimage_data.astronaut()
  with detect.FaceDetector() as detector:
    (found,) = detector.detect(photo)
  m = g.alignment_matrix(found.landmarks, SIZE, 0.85)
  crop = warp.align_face(photo, m, SIZE)
  return crop.astype(np.float32) / 255.0, g.transform_points(m, found.landmarks)


def mean_dist(a, b, idx) -> float:
  return float(np.linalg.norm(a[list(idx)] - b[list(idx)], axis=1).mean())


def test_backward_map_is_the_identity_for_unmoved_points():
  pts = np.random.default_rng(0).uniform(20, 100, (60, 2))
  map_x, map_y = morph.backward_map(pts, pts, SIZE)
  base = np.arange(SIZE, dtype=np.float32)
  assert np.abs(map_x - base[None, :]).max() < 1e-3 and np.abs(map_y - base[:, None]).max() < 1e-3


def test_backward_map_carries_a_point_and_holds_the_border():
  """A dot drawn at `source` lands at `target`; the crop's edge samples itself (exactly at the
  spline's fixed points, within a fraction of a pixel between them)."""
  src, dst = np.array([[50.0, 60.0]]), np.array([[56.0, 66.0]])
  img = np.zeros((SIZE, SIZE), np.float32)
  cv2.circle(img, (50, 60), 2, 1.0, -1)
  map_x, map_y = morph.backward_map(dst, src, SIZE)
  out = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR)
  ys, xs = np.nonzero(out > 0.5)
  assert abs(xs.mean() - 56) < 0.5 and abs(ys.mean() - 66) < 0.5
  base = np.arange(SIZE, dtype=np.float32)
  corners = map_x[[0, 0, -1, -1], [0, -1, 0, -1]] - base[[0, -1, 0, -1]]
  assert np.abs(corners).max() < 0.02
  assert np.abs(map_x[0] - base).max() < 0.25 and np.abs(map_y[:, -1] - base).max() < 0.25


def test_landmarks_of_an_aligned_crop_match_the_frames(face, detector):
  crop, lm = face
  found = morph.face_landmarks(detector, crop)
  assert found is not None and found.shape == (g.NUM_LANDMARKS, 2)
  assert mean_dist(found, lm, morph.MORPH_POINTS) < 1.5


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_morph_moves_the_features_toward_the_target(face, strength, detector):
  """The lower lip asked 4 px lower (a mouth opening): it moves by about strength x 4 px, and
  the eyes stay where they were."""
  crop, lm = face
  before = morph.face_landmarks(detector, crop)
  target = before.copy()
  target[list(LOWER_LIP), 1] += 4.0
  ones = np.ones((SIZE, SIZE), np.float32)
  out, learned, done = morph.morph_face(detector, crop, ones, target, strength)
  assert done and out.shape == crop.shape and out.dtype == np.float32
  assert learned is not None and learned.shape == (SIZE, SIZE)
  after = morph.face_landmarks(detector, out)
  moved = float(np.mean(after[list(LOWER_LIP), 1] - before[list(LOWER_LIP), 1]))
  assert abs(moved - 4.0 * strength) < 1.2, moved
  eyes = g.RIGHT_EYE + g.LEFT_EYE
  assert mean_dist(after, before, eyes) < 0.6
  # Pixels far from the face are left alone.
  assert np.abs(out[:6] - crop[:6]).max() < 1e-3


def test_no_morph_without_landmarks_or_with_implausible_ones(face, detector):
  crop, lm = face
  grey = np.full((SIZE, SIZE, 3), 0.5, np.float32)
  out, _, done = morph.morph_face(detector, grey, None, lm, 1.0)
  assert not done and out is grey
  out, _, done = morph.morph_face(detector, crop, None, lm + 40.0, 1.0)  # the mesh is "elsewhere"
  assert not done and out is crop
  out, _, done = morph.morph_face(detector, crop, None, lm, 0.0)
  assert not done and out is crop


def test_morpher_gives_each_thread_its_detector_and_closes_them(face):
  """The conversion's blend pool calls one Morpher from several threads at once."""
  crop, lm = face
  with morph.Morpher(1.0) as morpher:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      results = list(pool.map(lambda _: morpher(crop, None, lm), range(6)))
    assert all(done for _, _, done in results)
    assert 1 <= len(morpher._detectors) <= 2  # pylint: disable=protected-access
    first = results[0][0]
    assert all(np.array_equal(r[0], first) for r in results)  # no state between calls
  assert not morpher._detectors  # pylint: disable=protected-access


@pytest.mark.skipif(video_io.ffmpeg_exe() is None, reason="imageio-ffmpeg's ffmpeg is absent")
def test_convert_counts_morphed_faces(tiny_run, tmp_path):
  """End to end: with --passthrough each face is the input's own, so its landmarks are found, the
  morph is counted, and moving a face onto its own landmarks leaves it nearly as it was."""
  photo = skimage_data.astronaut()[40:296, 100:356]
  frames = [np.ascontiguousarray(np.roll(photo, 2 * i, axis=1)) for i in range(3)]
  path = str(tmp_path / "astronaut.mp4")
  subprocess.run([video_io.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
                  "-pix_fmt", "rgb24", "-s", "256x256", "-r", "5", "-i", "-", "-c:v", "libx264",
                  "-crf", "12", "-pix_fmt", "yuv444p", path],
                 input=np.stack(frames).tobytes(), check=True)
  opts = convert.Options(to="a", color="none", passthrough=True, morph=100.0)
  outs = {}
  for name, o in (("morph", opts), ("plain", dataclasses.replace(opts, morph=0.0))):
    summary = convert.convert(path, tiny_run, None, o, png_dir=str(tmp_path / name),
                              progress=False)
    outs[name] = cv2.imread(str(tmp_path / name / "frame_000001.png")).astype(np.float32)
    assert summary["faces_swapped"] == 3
    assert summary["faces_morphed"] == (3 if name == "morph" else 0)
  assert 0 < np.abs(outs["morph"] - outs["plain"]).mean() < 1.0
