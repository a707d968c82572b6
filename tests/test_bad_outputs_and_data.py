"""Full disks while writing videos, files and datasets; damaged records inside a dataset."""

import errno
import json
import os
import shutil
import stat

import numpy as np
import pytest

from jaxswap import provenance, train, video
from jaxswap.data import datasets, loader
from jaxswap.errors import JaxswapError, WriteError
from tests.conftest import tiny_config

# ----------------------------------------------------------------------------------------------
# Full disk / unwritable outputs
# ----------------------------------------------------------------------------------------------


def test_video_writer_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
  fake = tmp_path / "ffmpeg"  # an ffmpeg whose disk fills up: reads the frames, then fails
  fake.write_text("#!/bin/sh\ncat > /dev/null\n"
                  "echo 'av_interleaved_write_frame(): No space left on device' >&2\nexit 1\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(fake))
  out = tmp_path / "out" / "swapped.mp4"
  writer = video.Mp4Writer(str(out), 32, 24, 25.0, provenance.provenance("video"))
  for _ in range(3):
    writer.write(np.zeros((24, 32, 3), np.uint8))
  with pytest.raises(WriteError) as e:
    writer.close()
  assert str(out) in str(e.value) and "no space left on device" in str(e.value)
  assert "free" in str(e.value)
  assert os.listdir(out.parent) == []  # neither the video nor a temporary file


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "alignments.json"
  path.write_text("old")

  def full(src, dst):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(provenance.os, "replace", full)
  with pytest.raises(WriteError, match=r"alignments.json: no space left on device \(.* free\)"):
    provenance.write_bytes(str(path), b"new")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["alignments.json"]


def test_dataset_build_on_a_full_disk_is_a_clear_error(tmp_path):
  class Builder:  # what TFDS raises when array_record cannot write a shard
    name = "jaxswap_faces"

    def download_and_prepare(self, **_):
      raise RuntimeError('Failed to finalize writing of split "train_a": write() failed: No '
                         "space left on device; writing .../incomplete.X/...array_record-00000")

  with pytest.raises(WriteError) as e:
    datasets.prepare(Builder(), str(tmp_path), records=1000, image_size=64)
  msg = str(e.value)
  assert os.path.join(str(tmp_path), "jaxswap_faces") in msg
  assert "no space left on device" in msg and "7.8 MiB needed" in msg


# ----------------------------------------------------------------------------------------------
# Damaged records inside a dataset
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def damaged_data_dir(synthetic_data_dir, tmp_path):
  """A copy of the session dataset whose second train_a shard lost its second half."""
  dst = str(tmp_path / "tfds")
  shutil.copytree(synthetic_data_dir, dst)
  folder = os.path.join(dst, "jaxswap_synthetic", "1.0.0")
  shard = [n for n in os.listdir(folder) if "train_a.array_record-00001" in n][0]
  path = os.path.join(folder, shard)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return dst, shard


@pytest.mark.slow
def test_truncated_shard_names_file_and_record_or_is_skipped_and_counted(damaged_data_dir,
                                                                       tmp_path):
  data_dir, shard = damaged_data_dir
  with pytest.raises(loader.CorruptRecordError) as e:  # at the first batch, before compiling
    train.train_and_evaluate(tiny_config(data_dir, steps=4), str(tmp_path / "run"),
                             progress=False)
  assert shard in str(e.value) and "record" in str(e.value) and "skip_corrupt" in str(e.value)
  # Skipped: training runs, the damaged records are counted in the metrics.
  workdir = str(tmp_path / "skip")
  config = tiny_config(data_dir, steps=2, log_every=1, **{"data.skip_corrupt": True})
  train.train_and_evaluate(config, workdir, progress=False)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(r.get("data_skipped", 0) for r in rows) > 0


def test_damaged_png_names_the_record_or_is_replaced_deterministically(synthetic_data_dir):
  def make(skip):
    l = loader.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=0,
                        skip_corrupt=skip)
    l.sources["b"] = [_BadPng(src, bad=int(l.indices("b", 3)[2])) for src in l.sources["b"]]
    return l

  strict = make(False)
  strict.batch(2)  # steps that do not touch the record are unaffected
  with pytest.raises(JaxswapError, match=r"record \d+ of .*train_b.array_record.*not a valid PNG"):
    strict.batch(3)
  lenient, again = make(True), make(True)
  a, b = lenient.batch(3), again.batch(3)
  np.testing.assert_array_equal(a["image_b"], b["image_b"])
  assert len(lenient.damaged) == 1


class _BadPng:
  """A data source whose record `bad` holds bytes that are not an image."""

  def __init__(self, src, bad: int):
    self.src, self.bad, self.data_source = src, bad, src.data_source

  def __len__(self):
    return len(self.src)

  def __getitem__(self, i):
    record = dict(self.src[i])
    if i == self.bad:
      record["image"] = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
    return record

  def __getitems__(self, indices):
    return [self[i] for i in indices]
