"""Extraction on a real face (scikit-image's public-domain astronaut photo), never the network.

Tolerances: mediapipe's landmarks move by a fraction of a pixel when the same face is resampled
(rotated, scaled, re-encoded), and the alignment error they cause is largest at the crop's
corners, furthest from the face centre. Measured: 1.3-2.6 px at 256 px for rotations up to 30
degrees and scales 0.6-1.3 (5 px at 45 degrees). We allow 4 px at 256 px: 1.6% of the crop, a
single pixel at the 64 px the `original` model trains on.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from jaxswap import extract, images
from jaxswap.faces import alignments
from jaxswap.faces import geometry as g
from jaxswap.faces import warp

skimage_data = pytest.importorskip("skimage.data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = 256
CORNER_TOL = 4.0  # crop pixels at 256, see the module docstring


def astronaut() -> np.ndarray:
  return skimage_data.astronaut()  # (512, 512, 3) RGB, the face near (225, 130)


def similarity(angle_deg, scale, tx, ty, centre=(256.0, 256.0)) -> np.ndarray:
  m = cv2.getRotationMatrix2D(centre, angle_deg, scale)
  m[:, 2] += (tx, ty)
  return m


def video_transforms(n: int, size: int):
  """Frame i shows the astronaut at scale 0.75, panned and turned from -10 to +10 degrees."""
  c = size / 2
  out = []
  for i in range(n):
    t = i / max(n - 1, 1)
    m = cv2.getRotationMatrix2D((256.0, 200.0), -10 + 20 * t, 0.75)
    m[:, 2] += (c - 256 - 30 + 60 * t, c - 200 + 15 * np.sin(2 * np.pi * t))
    out.append(m)
  return out


def write_video(path: str, n: int = 30, size: int = 384) -> list[np.ndarray]:
  """An mp4 of the moving astronaut; returns each frame's original -> frame transform."""
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, (size, size))
  assert writer.isOpened()
  ts = video_transforms(n, size)
  img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
  for m in ts:
    writer.write(cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_REFLECT101))
  writer.release()
  return ts


def corner_error(m_ref: np.ndarray, m: np.ndarray, t: np.ndarray) -> float:
  """Max distance, in crop pixels, between where m_ref and m o t send the crop's corners."""
  corners = np.array([[0, 0], [CROP - 1, 0], [0, CROP - 1], [CROP - 1, CROP - 1]], float)
  frame = g.transform_points(g.invert_affine(m_ref), corners)
  return float(np.abs(g.transform_points(g.compose(m, t), frame) - corners).max())


@pytest.fixture(scope="module")
def detector():
  from jaxswap.faces import detect  # pylint: disable=g-import-not-at-top
  with detect.FaceDetector() as d:
    yield d


@pytest.fixture(scope="module")
def reference(detector):
  faces = detector.detect(astronaut())
  assert len(faces) == 1
  return faces[0], g.alignment_matrix(faces[0].landmarks, CROP, 0.85)


# ----------------------------------------------------------------------------------------------
# Real face
# ----------------------------------------------------------------------------------------------


def test_detects_the_astronaut(reference):
  face, m = reference
  x0, y0, x1, y1 = face.bbox
  assert face.score > 0.8
  assert 150 < x0 < 200 and 60 < y0 < 110 and 250 < x1 < 300 and 150 < y1 < 200
  assert face.landmarks.shape == (478, 2)
  eyes = face.landmarks[[33, 263]]  # her right eye is on the image's left
  assert eyes[0, 0] < eyes[1, 0] and np.all((eyes > face.bbox[:2]) & (eyes < face.bbox[2:]))
  # Aligned: eyes level within a degree or two, face centred.
  aligned = g.transform_points(m, face.landmarks)
  dx, dy = aligned[263] - aligned[33]
  assert abs(np.degrees(np.arctan2(dy, dx))) < 3
  assert abs(aligned[list(g.FACE_OVAL)].mean(0) - CROP / 2).max() < 0.05 * CROP


@pytest.mark.parametrize("angle,scale,tx,ty", [(15, 1.0, 0, 0), (-20, 0.8, 30, -20),
                                               (10, 1.3, -40, 25), (0, 0.6, 0, 0)])
def test_alignment_follows_a_known_transform(detector, reference, angle, scale, tx, ty):
  face, m_ref = reference
  t = similarity(angle, scale, tx, ty)
  moved = cv2.warpAffine(astronaut(), t, (512, 512), flags=cv2.INTER_CUBIC)
  faces = detector.detect(moved)
  assert len(faces) == 1 and faces[0].landmarks is not None
  m = g.alignment_matrix(faces[0].landmarks, CROP, 0.85)
  # The transformed copy's matrix is the reference's composed with the inverse transform.
  assert corner_error(m_ref, m, t) < CORNER_TOL
  # So the two crops show the same face: mean difference over the face of a few grey levels.
  crop_ref = warp.align_face(astronaut(), m_ref, CROP)
  crop = warp.align_face(moved, m, CROP)
  inside = g.face_mask(g.transform_points(m_ref, face.landmarks), CROP) > 0
  assert np.abs(crop_ref.astype(float) - crop)[inside].mean() < 6.0


def test_align_face_shrinks_without_aliasing():
  # 1-pixel checkerboard shrunk 4x: an area filter gives flat grey, a plain warp gives moire.
  board = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
  frame = np.repeat(board[..., None], 3, -1)
  m = similarity(10, 0.25, 50 - 256, 50 - 256)  # the frame's centre to the crop's
  crop = warp.align_face(frame, m, 100)[10:-10, 10:-10].astype(float)
  naive = cv2.warpAffine(frame, m, (100, 100), flags=cv2.INTER_LINEAR)[10:-10, 10:-10]
  assert abs(crop.mean() - 127.5) < 3 and crop.std() < 8
  assert naive.std() > 4 * crop.std()


@pytest.mark.parametrize("scale,off", [(0.22, 0), (0.3, 0), (0.45, 0), (0.6, 0), (0.3, 120)])
def test_align_face_shrinks_to_the_supersampled_crop(scale, off):
  # The shrink (a whole-factor box filter over a window grown to a multiple of it, then the
  # rest) against a reference made without it: the crop rendered 4x larger, about 1:1 with the
  # frame, then box-filtered 4x. `off` puts the face partly off the frame. A crop half a pixel
  # off lands 3.4-8 levels away; the shrink is within 2.4.
  frame = cv2.GaussianBlur(astronaut(), (0, 0), 1.0)
  m = similarity(8, scale, 0, 0)
  m[:, 2] += np.array([50.0, 50.0]) - g.transform_points(m, [[256.0 + off, 256.0 - off]])[0]
  crop = warp.align_face(frame, m, 100).astype(float)
  big = g.compose([[4, 0, 1.5], [0, 4, 1.5]], m)  # crop pixel c -> 4 (c + 0.5) - 0.5
  ref = cv2.resize(cv2.warpAffine(frame, big, (400, 400), flags=cv2.INTER_LINEAR), (100, 100),
                   interpolation=cv2.INTER_AREA).astype(float)
  on = warp.align_face(np.full_like(frame, 255), m, 100)[..., 0] == 255  # inside the frame
  on = cv2.erode(on.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
  assert on.sum() > (7000 if off else 9900)
  assert np.abs(crop - ref)[on].mean() < 2.5


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("video") / "astronaut.mp4")
  return path, write_video(path)


@pytest.fixture(scope="module")
def extracted(video, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("extracted") / "out")
  doc = extract.extract(video[0], out, progress=False)
  return out, doc


def test_video_extraction_one_face_per_frame(video, extracted, reference):
  path, transforms = video
  out, doc = extracted
  on_disk = alignments.load(os.path.join(out, "alignments.json"))
  assert on_disk["complete"] and on_disk["version"] == alignments.VERSION
  src = on_disk["source"]
  assert (src["type"], src["width"], src["height"], src["frame_count"]) == ("video", 384, 384, 30)
  assert src["fps"] == pytest.approx(30.0) and src["path"] == os.path.abspath(path)
  assert [f["frame"] for f in on_disk["frames"]] == list(range(30))
  assert doc["summary"]["faces_written"] == 30 and doc["summary"]["frames_no_face"] == 0
  # One person, one track over the whole clip.
  assert on_disk["tracks"] == [{"track": 0, "frames": 30, "first": 0, "last": 29,
                                "mean_size": on_disk["tracks"][0]["mean_size"]}]
  assert all(f["faces"][0]["track"] == 0 for f in on_disk["frames"])
  _, m_ref = reference
  for frame, t in zip(on_disk["frames"], transforms):
    (face,) = frame["faces"]
    assert face["skipped"] is None and face["blur"] > 20
    assert len(face["landmarks"]) == 478 and np.shape(face["matrix"]) == (2, 3)
    # Every frame's alignment undoes that frame's pan and turn (codec noise: 1.5x tolerance).
    assert corner_error(m_ref, alignments.matrix(face), t) < 1.5 * CORNER_TOL
    for rel in ("faces", "masks/components", "masks/extended"):
      image = cv2.imread(os.path.join(out, rel, face["file"]), cv2.IMREAD_UNCHANGED)
      assert image.shape[:2] == (CROP, CROP)
  assert not os.path.exists(os.path.join(out, extract.PARTIAL))


def test_rerun_is_a_no_op(video, extracted):
  out, _ = extracted
  before = open(os.path.join(out, "alignments.json"), "rb").read()
  doc = extract.extract(video[0], out, progress=False)
  assert doc["run"]["frames"] == 0
  assert open(os.path.join(out, "alignments.json"), "rb").read() == before


def test_every_n_and_multi_face(tmp_path, detector):
  # Two astronauts side by side in every photo: each face is its own entry and file.
  pair = np.concatenate([astronaut(), astronaut()[:, ::-1]], 1)
  folder = tmp_path / "photos"
  folder.mkdir()
  for i in range(3):
    cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
  (folder / "notes.txt").write_text("not an image")
  doc = extract.extract(str(folder), str(tmp_path / "out"),
                        extract.Settings(size=64, every_n=2), progress=False, detector=detector)
  assert [f["name"] for f in doc["frames"]] == ["img0.png", "img2.png"]
  for frame in doc["frames"]:
    assert len(frame["faces"]) == 2 and (frame["width"], frame["height"]) == (1024, 512)
    xs = sorted(f["bbox"][0] for f in frame["faces"])
    assert xs[0] < 512 < xs[1]
  files = os.listdir(tmp_path / "out" / "faces")
  assert len(files) == 4
  largest = extract.extract(str(folder), str(tmp_path / "out2"),
                            extract.Settings(size=64, faces="largest"), progress=False,
                            detector=detector)
  assert all(len(f["faces"]) == 1 for f in largest["frames"])


# ----------------------------------------------------------------------------------------------
# Resume after a kill
# ----------------------------------------------------------------------------------------------


def test_killed_extraction_resumes_to_the_clean_result(tmp_path, detector):
  video_path = str(tmp_path / "long.mp4")
  write_video(video_path, n=60, size=320)
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "extract.py"),
                           "--input", video_path, "--output", killed, "--quiet"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  frames_dir = os.path.join(killed, extract.PARTIAL, "frames")
  deadline = time.time() + 60
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(frames_dir) and len(os.listdir(frames_dir)) >= 5:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "alignments.json")), "finished before the kill"
  # Whatever was written is whole: every PNG decodes, every frame record parses.
  for root, _, names in os.walk(killed):
    for name in names:
      path = os.path.join(root, name)
      if name.endswith(".png"):
        assert cv2.imread(path, cv2.IMREAD_UNCHANGED) is not None, path
      elif name.endswith(".json"):
        json.load(open(path))
  resumed = extract.extract(video_path, killed, progress=False, detector=detector)
  assert 0 < resumed["run"]["frames"] < 60
  clean = str(tmp_path / "clean")
  extract.extract(video_path, clean, progress=False, detector=detector)
  assert open(os.path.join(killed, "alignments.json"), "rb").read() == \
      open(os.path.join(clean, "alignments.json"), "rb").read()
  for rel in ("faces", "masks/components", "masks/extended"):
    names = sorted(os.listdir(os.path.join(clean, rel)))
    assert sorted(os.listdir(os.path.join(killed, rel))) == names
    for name in names:
      assert open(os.path.join(killed, rel, name), "rb").read() == \
          open(os.path.join(clean, rel, name), "rb").read()


# ----------------------------------------------------------------------------------------------
# Bad input: a message naming the file, exit status 2, nothing overwritten
# ----------------------------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str]:
  code = extract.main(list(args) + ["--quiet"])
  return code, capsys.readouterr().err


def test_missing_input(tmp_path, capsys):
  code, err = run_cli(capsys, "--input", str(tmp_path / "nope.mp4"), "--output",
                      str(tmp_path / "o"))
  assert code == 2 and "nope.mp4" in err and "does not exist" in err
  assert not (tmp_path / "o").exists()


def test_exit_status_of_the_script(tmp_path):
  proc = subprocess.run([sys.executable, "tools/extract.py", "--input", str(tmp_path / "x.mp4"),
                         "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "x.mp4" in proc.stderr


def test_corrupt_and_truncated_videos(tmp_path, capsys, video):
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
  code, err = run_cli(capsys, "--input", str(junk), "--output", str(tmp_path / "o1"))
  assert code == 2 and "junk.mp4" in err
  cut = tmp_path / "cut.mp4"
  data = open(video[0], "rb").read()
  cut.write_bytes(data[:len(data) // 2])  # mp4v puts its index at the end
  code, err = run_cli(capsys, "--input", str(cut), "--output", str(tmp_path / "o2"))
  assert code == 2 and "cut.mp4" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_input(tmp_path, capsys, video):
  locked = tmp_path / "locked.mp4"
  locked.write_bytes(open(video[0], "rb").read())
  locked.chmod(0)
  code, err = run_cli(capsys, "--input", str(locked), "--output", str(tmp_path / "o"))
  assert code == 2 and "locked.mp4" in err and "not readable" in err


def test_folder_without_images(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "readme.txt").write_text("no pictures here")
  code, err = run_cli(capsys, "--input", str(empty), "--output", str(tmp_path / "o"))
  assert code == 2 and "empty" in err and "no images" in err


def test_video_without_faces(tmp_path, capsys):
  path = str(tmp_path / "noise.mp4")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, (128, 128))
  rng = np.random.default_rng(0)
  for _ in range(5):
    writer.write(rng.integers(0, 256, (128, 128, 3), np.uint8))
  writer.release()
  code, err = run_cli(capsys, "--input", path, "--output", str(tmp_path / "o"))
  assert code == 2 and "no face found in" in err and "noise.mp4" in err
  assert not (tmp_path / "o" / "alignments.json").exists()


def test_output_of_another_video_is_not_overwritten(tmp_path, capsys, video, extracted):
  out, _ = extracted
  before = {n: os.path.getmtime(os.path.join(out, "faces", n))
            for n in os.listdir(os.path.join(out, "faces"))}
  doc_bytes = open(os.path.join(out, "alignments.json"), "rb").read()
  other = str(tmp_path / "other.mp4")
  write_video(other, n=3, size=256)
  code, err = run_cli(capsys, "--input", other, "--output", out)
  assert code == 2 and os.path.join(out, "alignments.json") in err and "another input" in err
  # Same video, different settings: refused too.
  code, err = run_cli(capsys, "--input", video[0], "--output", out, "--size", "128")
  assert code == 2 and "--size 256 (now 128)" in err
  assert open(os.path.join(out, "alignments.json"), "rb").read() == doc_bytes
  assert {n: os.path.getmtime(os.path.join(out, "faces", n))
          for n in os.listdir(os.path.join(out, "faces"))} == before
  assert not os.path.exists(os.path.join(out, extract.PARTIAL))


# ----------------------------------------------------------------------------------------------
# Image reading
# ----------------------------------------------------------------------------------------------


def with_exif_orientation(jpeg: bytes, value: int) -> bytes:
  """A JPEG with an APP1 EXIF block holding only the Orientation tag."""
  tiff = (b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1)
          + struct.pack("<HHIHH", 0x0112, 3, 1, value, 0) + struct.pack("<I", 0))
  exif = b"Exif\0\0" + tiff
  return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv(tmp_path, orientation):
  img = np.zeros((40, 60, 3), np.uint8)
  img[:10, :20] = (255, 255, 255)  # a marked top-left corner
  img[30:, 50:, 2] = 200
  ok, jpeg = cv2.imencode(".jpg", img)
  path = str(tmp_path / "o.jpg")
  open(path, "wb").write(with_exif_orientation(jpeg.tobytes(), orientation))
  expected = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # applies EXIF
  got = images.read_image(path)
  assert got.shape == expected.shape and np.array_equal(got, expected)
  assert got.shape[:2] == ((40, 60) if orientation <= 4 else (60, 40))


def test_16bit_gray_and_rgba_images(tmp_path):
  rng = np.random.default_rng(0)
  deep = rng.integers(0, 65536, (8, 9, 3), np.uint16)
  cv2.imwrite(str(tmp_path / "deep.png"), deep)
  got = images.read_image(str(tmp_path / "deep.png"))
  np.testing.assert_array_equal(got, np.rint(deep[..., ::-1] / 257.0).astype(np.uint8))
  gray = rng.integers(0, 256, (8, 9), np.uint8)
  cv2.imwrite(str(tmp_path / "gray.png"), gray)
  np.testing.assert_array_equal(images.read_image(str(tmp_path / "gray.png")),
                                np.repeat(gray[..., None], 3, -1))
  bgra = np.zeros((8, 9, 4), np.uint8)
  bgra[..., :3] = (10, 20, 30)
  bgra[:4, ..., 3] = 255  # top half opaque, bottom half transparent
  cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
  got = images.read_image(str(tmp_path / "rgba.png"))
  assert np.all(got[:4] == (30, 20, 10)) and np.all(got[4:] == 255)


def test_images_listed_in_natural_order(tmp_path):
  for name in ("img10.jpg", "img2.PNG", "img1.webp", "a.bmp", "skip.txt", ".hidden.png"):
    (tmp_path / name).write_bytes(b"")
  assert images.list_images(str(tmp_path)) == ["a.bmp", "img1.webp", "img2.PNG", "img10.jpg"]
