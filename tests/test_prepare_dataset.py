"""Video + photos -> extracted faces -> jaxswap_faces (TFDS) -> the loader -> one train step."""

import os

import cv2
import numpy as np
import pytest

from jaxswap import extract, prepare
from jaxswap.data import datasets as data
from jaxswap.data import loader
from jaxswap.errors import JaxswapError
from jaxswap.faces import alignments
from jaxswap.faces import geometry as g
from jaxswap.faces import pose
from tests.test_extract import astronaut, similarity, write_video

pytest.importorskip("skimage.data")
SIZE = 64


def write_photos(folder, n: int = 12) -> None:
  """Person "b": the astronaut recoloured (another skin/suit tone), turned a little per photo."""
  os.makedirs(folder)
  hsv = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2HSV)
  hsv[..., 0] = (hsv[..., 0].astype(int) + 20) % 180
  recoloured = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
  for i in range(n):
    m = similarity(-12 + 2 * i, 0.9, 0, 0)
    cv2.imwrite(os.path.join(folder, f"photo{i}.jpg"),
                cv2.warpAffine(recoloured, m, (512, 512), borderMode=cv2.BORDER_REFLECT101))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("prep")
  video = str(root / "astro.mp4")
  write_video(video)
  photos = str(root / "photos")
  write_photos(photos)
  out = str(root / "dataset")
  result = prepare.prepare([video], [photos], out, size=SIZE, progress=False)
  return {"video": video, "photos": photos, "out": out, "result": result}


def test_splits_are_contiguous_frame_blocks(prepared):
  res = prepared["result"]
  # a: 30 frames -> last 3 validate, 3 more (a tenth) left out as the gap; b: 12 photos, no gap.
  assert res["splits"] == {"train_a": 24, "validation_a": 3, "train_b": 11, "validation_b": 1}
  assert res["built"] and 1 <= res["shards"] <= 4
  out = prepared["out"]
  train = data.open_split(out, "jaxswap_faces", "train", "a")
  val = data.open_split(out, "jaxswap_faces", "validation", "a")
  train_frames = sorted(int(train[i]["frame"]) for i in range(len(train)))
  val_frames = sorted(int(val[i]["frame"]) for i in range(len(val)))
  assert train_frames == list(range(24)) and val_frames == [27, 28, 29]


def test_records_match_the_extracted_faces(prepared):
  out = prepared["out"]
  folder = os.path.join(out, "extracted", "a", "astro")
  doc = alignments.load(os.path.join(folder, "alignments.json"))
  by_frame = {f["frame"]: f["faces"][0] for f in doc["frames"]}
  source = data.open_split(out, "jaxswap_faces", "train", "a")
  for i in (0, len(source) - 1):
    rec = source[i]
    face = by_frame[int(rec["frame"])]
    assert rec["source"].decode() == prepared["video"] and rec["identity"] == 0
    crop = cv2.imread(alignments.face_path(folder, doc, face))
    expected = cv2.cvtColor(cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(data.decode_png(rec["image"], 3), expected)
    mask = cv2.imread(alignments.mask_path(folder, doc, face, "components"), 0)
    np.testing.assert_array_equal(
        data.decode_png(rec["mask"], 1)[..., 0],
        cv2.resize(mask, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    # Landmarks: the frame points through the stored matrix, then the 256 -> 64 resize.
    aligned = g.transform_points(alignments.matrix(face), alignments.landmarks(face))
    np.testing.assert_allclose(rec["landmarks"], (aligned + 0.5) * SIZE / 256 - 0.5, atol=1e-3)
    priority = data.decode_png(rec["priority"], 1)[..., 0] > 0
    eyes = np.round(rec["landmarks"][[159, 386]]).astype(int)  # upper eyelid centres
    assert priority[eyes[:, 1], eyes[:, 0]].all()


def test_dataset_records_its_face_geometry(prepared):
  face = {"coverage": 0.85, "template": extract.TEMPLATE_ID, "size": SIZE}
  assert data.face_geometry(prepared["out"], "jaxswap_faces") == face
  assert data.face_geometry(prepared["out"], "jaxswap_faces:1.0.0") == face
  assert data.face_geometry(prepared["out"], "jaxswap_synthetic") is None
  spec = loader.StepLoader(prepared["out"], "jaxswap_faces", "train", 8, seed=0).spec
  assert spec.face == face and spec.image_size == SIZE


def test_folders_of_different_coverage_make_no_dataset(prepared, tmp_path, capsys):
  other = str(tmp_path / "other")
  extract.extract(prepared["photos"], other, extract.Settings(size=128, coverage=0.7,
                                                               faces="largest"), progress=False)
  dirs = prepare.extracted_dirs
  with pytest.raises(JaxswapError, match="coverage 0.85.*coverage 0.7|coverage 0.7.*coverage 0.85"):
    prepare.build_faces(str(tmp_path / "ds"), dirs(prepared["out"], "a", [prepared["video"]]),
                        [other], image_size=SIZE)


def test_unchanged_inputs_reuse_the_dataset(prepared):
  out = prepared["out"]
  dirs = prepare.extracted_dirs
  kwargs = dict(image_size=SIZE, min_face=SIZE / 2, min_blur=10.0)
  again = prepare.build_faces(out, dirs(out, "a", [prepared["video"]]),
                                 dirs(out, "b", [prepared["photos"]]), **kwargs)
  assert not again["built"] and again["splits"] == prepared["result"]["splits"]


def test_prepare_cli_prints_the_train_command(prepared, capsys):
  code = prepare.main(["--a", prepared["video"], "--b", prepared["photos"], "--output",
                               prepared["out"], "--quiet"])
  out = capsys.readouterr().out
  assert code == 0 and "unchanged, reused" in out
  # B is A's photo turned in the image plane only: no pose A lacks.
  assert "poses: A's faces span" in out and "0 % of B's 12 faces lie beyond" in out
  assert (f"python -m jaxswap.train --config configs/original.py --workdir runs/dataset "
          f"--config.data.dir={prepared['out']} --config.data.name=jaxswap_faces") in out


def test_same_person_twice_is_refused(prepared, capsys):
  code = prepare.main(["--a", prepared["video"], "--b", prepared["video"], "--output",
                               prepared["out"] + "_x", "--quiet"])
  assert code == 2 and "same input" in capsys.readouterr().err


def test_filters_that_leave_nothing_are_an_error(prepared, capsys):
  code = prepare.main(["--a", prepared["video"], "--b", prepared["photos"], "--output",
                               prepared["out"], "--min-face", "5000", "--quiet"])
  err = capsys.readouterr().err
  assert code == 2 and "no usable training faces of identity 'a'" in err and "small" in err


@pytest.mark.slow
def test_one_train_step_on_the_prepared_dataset(prepared, tmp_path):
  train = pytest.importorskip("jaxswap.train")
  from jaxswap.configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.dir = prepared["out"]
  config.data.name = "jaxswap_faces"
  config.image_size = SIZE
  config.steps = 1
  config.batch_size = 8
  config.compilation_cache = ""  # the session's, from the environment
  state = train.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  assert int(state.step) == 1
  assert os.path.exists(tmp_path / "run" / "metrics.jsonl")
  # The run knows the faces it learnt, without its dataset: config.json and the checkpoint.
  from jaxswap import swap  # pylint: disable=g-import-not-at-top
  from jaxswap.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  expected = {"coverage": 0.85, "template": extract.TEMPLATE_ID, "size": SIZE}
  os.rename(prepared["out"], prepared["out"] + "_moved")
  try:
    loaded, _, _ = swap.load_run(str(tmp_path / "run"))
    assert swap.run_face(loaded) == expected
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), every=1, keep=1, async_save=False)
    assert ckpt.meta(1)["face"] == expected
    ckpt.close()
  finally:
    os.rename(prepared["out"] + "_moved", prepared["out"])


def test_printed_train_command_is_valid_from_anywhere(tmp_path, monkeypatch):
  """Its --config opens from the directory it runs in, and names a model built for the size."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from jaxswap import models  # pylint: disable=g-import-not-at-top
  for where in (os.getcwd(), str(tmp_path)):  # the checkout, then somewhere else
    monkeypatch.chdir(where)
    for size in prepare.CONFIG_FOR_SIZE:
      command = prepare.train_command("data/ab", size, "runs/ab").split()
      path = command[command.index("--config") + 1]
      spec = importlib.util.spec_from_file_location("printed_config", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      config = module.get_config()
      assert config.image_size == size and models.create_model(config).spec.image_size == size
  assert prepare.train_command("data/ab", 96, "runs/ab") is None  # no model takes 96 px faces


def test_pretrain_pools_every_input_into_both_identities(prepared, tmp_path, capsys):
  out = str(tmp_path / "pool")
  code = prepare.main(["--pretrain", prepared["video"], prepared["photos"], "--output", out,
                       "--size", str(SIZE), "--quiet"])
  printed = capsys.readouterr().out
  assert code == 0 and "--config.init_from=runs/pool" in printed
  assert "poses:" not in printed  # A and B are the same pool: no coverage to report
  counts = {(split, ident): len(data.open_split(out, "jaxswap_faces", split, ident))
            for split in ("train", "validation") for ident in ("a", "b")}
  # Both people of the fixture, in A and in B alike (same contiguous splits as a pair).
  assert counts[("train", "a")] == counts[("train", "b")] == 24 + 11
  sources = {data.open_split(out, "jaxswap_faces", "train", "b")[i]["source"].decode()
             for i in range(35)}
  assert sources == {prepared["video"], prepared["photos"]}


def test_pretrain_and_a_pair_together_are_refused(prepared, tmp_path, capsys):
  code = prepare.main(["--pretrain", prepared["video"], "--a", prepared["photos"], "--output",
                       str(tmp_path / "x"), "--quiet"])
  assert code == 2 and "--pretrain" in capsys.readouterr().err


def posed_ref(identity: str, yaw: float, pitch: float, size: int = 256) -> prepare.FaceRef:
  """A face whose crop landmarks are the generic head turned by (yaw, pitch) degrees."""
  rvec = cv2.Rodrigues(cv2.Rodrigues(np.array([np.radians(pitch), 0.0, 0.0]))[0] @
                       cv2.Rodrigues(np.array([0.0, np.radians(yaw), 0.0]))[0])[0]
  proj, _ = cv2.projectPoints(np.array(list(pose.HEAD.values())), rvec,
                              np.array([0.0, -20.0, 300.0]), pose.camera(size, size), None)
  landmarks = np.full((g.NUM_LANDMARKS, 2), size / 2.0)
  landmarks[[pose.MEDIAPIPE478[k] for k in pose.HEAD]] = proj[:, 0]
  return prepare.FaceRef(identity, "f", "s", 0, "x.png", "m.png", landmarks, size)


def test_pose_coverage_counts_b_faces_beyond_a_and_says_which_way():
  a = [posed_ref("a", yaw, pitch) for yaw in (-10, 0, 10) for pitch in (-5, 0, 5)]
  b = [posed_ref("b", 0, 0), posed_ref("b", 5, 3), posed_ref("b", 0, 25), posed_ref("b", -30, 0)]
  cover = prepare.pose_coverage(a, b, margin=5.0, tail=0.0)
  assert cover["b_faces"] == 4 and cover["b_outside_a"] == pytest.approx(0.5)
  assert cover["a_span"]["pitch"] == pytest.approx([-10.0, 10.0], abs=0.5)
  assert cover["b_beyond"]["down"] == pytest.approx(0.25)  # pitch > 0 looks down
  assert cover["b_beyond"]["right"] == pytest.approx(0.25)  # yaw < 0: towards the image's right
  assert cover["b_beyond"]["up"] == 0.0 and cover["b_beyond"]["left"] == 0.0
  report = prepare.coverage_report(cover)
  assert "50 % of B's 4 faces lie beyond (looking down 25 %, turned to the image's right 25 %)" \
      in report and "Add footage of A" in report
  assert prepare.pose_coverage([], b) is None
