"""Training that survives kill -9, damaged checkpoints, full disks, SIGTERM and config drift."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxswap import checkpoint, errors, recovery, swap, train
from tests.conftest import ROOT, tiny_config

STEPS = 8  # the straight run: checkpoints at 4, 6 and 8 (every 2, the last 3 kept)


def _params(workdir):
  return [np.asarray(p) for p in jax.tree_util.tree_leaves(swap.load_run(workdir)[2])]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(synthetic_data_dir, tmp_path_factory):
  """An uninterrupted run of STEPS steps: (workdir, its final parameters)."""
  workdir = str(tmp_path_factory.mktemp("straight") / "run")
  train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=STEPS), workdir, progress=False)
  return workdir, _params(workdir)


def _copy(src, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst


def _args(data_dir, workdir, steps, *extra):
  return ["--config", "configs/tiny.py", "--workdir", workdir, f"--config.data.dir={data_dir}",
          "--config.data.name=jaxswap_synthetic", "--config.batch_size=8",
          f"--config.steps={steps}", "--config.log_every=1", "--config.preview_every=100",
          "--config.checkpoint_every=2", "--config.preview_faces=2", "--config.compilation_cache=",
          *extra]


def _start(args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, "-m", "jaxswap.train", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args):
  proc = _start(args)
  out, err = proc.communicate(timeout=600)
  return proc.returncode, err


def _wait_for(predicate, proc, timeout=300.0):
  end = time.monotonic() + timeout
  while time.monotonic() < end and proc.poll() is None:
    if predicate():
      return True
    time.sleep(0.01)
  return False


def _metric_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(l)["step"] for l in open(path) if l.strip().endswith("}")]


def _truncate_newest(workdir, step):
  """Half of the largest array file of `step` goes missing, as a full disk or a crashed copy
  leaves it."""
  folder = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


# ----------------------------------------------------------------------------------------------
# kill -9, SIGTERM
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_inside_an_async_save_and_mid_training_then_resume_is_exact(
    synthetic_data_dir, straight, tmp_path):
  workdir = str(tmp_path / "run")
  ckpts = os.path.join(workdir, "checkpoints")
  # 1. Killed while the first asynchronous save is being written.
  proc = _start(_args(synthetic_data_dir, workdir, STEPS))
  saving = _wait_for(lambda: any(checkpoint.TMP_MARK in n for n in _ls(ckpts)), proc)
  proc.kill()
  proc.communicate()
  left = [n for n in _ls(ckpts) if checkpoint.TMP_MARK in n]
  # 2. Rerun, killed mid-training a few steps later.
  proc = _start(_args(synthetic_data_dir, workdir, STEPS))
  seen = len(_metric_steps(workdir))
  _wait_for(lambda: len(_metric_steps(workdir)) >= seen + 3, proc)
  proc.kill()
  _, err2 = proc.communicate()
  if saving and left:
    assert "removing unfinished checkpoint saves" in err2
  # 3. Rerun to the end: exit 0 promptly, no traceback, the uninterrupted run's parameters.
  rc, err3 = _run(_args(synthetic_data_dir, workdir, STEPS))
  assert rc == 0, err3[-3000:]
  assert "Traceback" not in err3 and "error:" not in err3, err3[-3000:]
  _assert_same(_params(workdir), straight[1])


def _ls(path):
  try:
    return os.listdir(path)
  except OSError:
    return []


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_0_and_resume_is_exact(
    synthetic_data_dir, straight, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start(_args(synthetic_data_dir, workdir, 400, "--config.checkpoint_every=100"))
  assert _wait_for(lambda: _metric_steps(workdir), proc)
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)  # a scheduler that insists: must not tear the save
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "Traceback" not in err
  saved = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, keep=1,
                                  writer=False)
  steps = saved.all_steps()
  saved.close()
  assert len(steps) == 1 and steps[0] >= max(_metric_steps(workdir)), (steps, err[-2000:])
  assert f"SIGTERM: saved step {steps[0]}" in err
  assert steps[0] < STEPS, "stopped too late to compare with the straight run"
  # Resumed (with other result-neutral cadence fields) to STEPS: bit-identical.
  config = tiny_config(synthetic_data_dir, steps=STEPS)
  train.train_and_evaluate(config, workdir, progress=False)
  _assert_same(_params(workdir), straight[1])


def test_a_second_signal_while_stopping_is_acknowledged_not_fatal(caplog):
  before = signal.getsignal(signal.SIGINT)
  stop = recovery.StopRequest.install()
  try:
    with caplog.at_level(logging.WARNING, "jaxswap.recovery"):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.05)
      assert stop and stop.signal == "SIGTERM"
      stop.saving = True
      os.kill(os.getpid(), signal.SIGINT)  # would be KeyboardInterrupt without the request
      time.sleep(0.05)
  finally:
    stop.uninstall()
  assert stop.signal == "SIGTERM"
  assert "SIGINT again: saving the checkpoint" in caplog.text
  assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_or_strict_refuses(
    synthetic_data_dir, straight, tmp_path, caplog):
  workdir = _copy(straight[0], tmp_path)
  _truncate_newest(workdir, STEPS)
  rc, err = _run(_args(synthetic_data_dir, workdir, STEPS, "--config.resume=strict"))
  assert rc == 2, err[-3000:]
  assert f"checkpoint step {STEPS}" in err and "damaged" in err and "Traceback" not in err
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6", "8"]
  # auto: step 8 is moved aside (kept), step 6 is resumed, and the run ends where it would have.
  with caplog.at_level(logging.WARNING, "jaxswap.checkpoint"):
    train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=STEPS), workdir,
                             progress=False)
  assert f"checkpoint step {STEPS} is damaged" in caplog.text and "corrupt-8" in caplog.text
  names = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert "corrupt-8" in names and "8" in names
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt-8", "state"))
  _assert_same(_params(workdir), straight[1])


def test_flipped_bytes_fail_the_checksum_and_no_intact_step_is_a_clear_error(
    synthetic_data_dir, straight, tmp_path, monkeypatch):
  workdir = _copy(straight[0], tmp_path)
  # Silent damage (files readable, values wrong) is caught by the checksums recorded at save.
  real = checkpoint.Checkpointer.meta

  def tampered(self, step):
    meta = real(self, step)
    return dict(meta, checksums={k: v + 1 for k, v in meta["checksums"].items()})

  monkeypatch.setattr(checkpoint.Checkpointer, "meta", tampered)
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=STEPS), workdir,
                             progress=False)
  msg = str(e.value)
  assert "no intact checkpoint" in msg and "checksum mismatch" in msg and "backup" in msg
  assert all(f"{s} (" in msg for s in (4, 6, 8))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "corrupt-4", "corrupt-6", "corrupt-8"]


# ----------------------------------------------------------------------------------------------
# Full disk
# ----------------------------------------------------------------------------------------------


def test_full_disk_while_saving_is_one_clear_error_and_keeps_the_last_checkpoint(
    synthetic_data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  real = checkpoint.ocp.CheckpointManager.save

  def full_disk_at_4(self, step, *a, **kw):
    if step != 4:
      return real(self, step, *a, **kw)
    partial = os.path.join(str(self.directory), f"4{checkpoint.TMP_MARK}", "state")
    os.makedirs(partial)
    open(os.path.join(partial, "half_written"), "wb").write(b"\0" * 1000)
    raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "state/d/x": No space left '
                     "on device [os_error_code='28']")

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", full_disk_at_4)
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=6), workdir, progress=False)
  msg = str(e.value)
  assert os.path.join(workdir, "checkpoints", "4") in msg
  assert "no space left on device" in msg and "free" in msg and "MiB needed" in msg
  assert "last good checkpoint (step 2) is intact" in msg
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]  # nothing torn left behind
  monkeypatch.undo()
  assert swap.load_run(workdir)[2] is not None


def test_disk_errors_are_recognised_in_any_wording():
  assert errors.disk_error(OSError(errno.ENOSPC, "x")) == errno.ENOSPC
  assert errors.disk_error(ValueError("Failed writing: Permission denied")) == errno.EACCES
  try:
    try:
      raise OSError(errno.EDQUOT, "quota")
    except OSError as inner:
      raise RuntimeError("wrapper") from inner
  except RuntimeError as outer:
    assert errors.disk_error(outer) == errno.EDQUOT
  assert errors.disk_error(ValueError("shape mismatch")) is None


# ----------------------------------------------------------------------------------------------
# Config drift
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_changed_seed_or_batch_is_refused_changed_cadence_accepted(
    synthetic_data_dir, straight, tmp_path):
  workdir = _copy(straight[0], tmp_path)
  rc, err = _run(_args(synthetic_data_dir, workdir, STEPS + 2, "--config.seed=1",
                       "--config.batch_size=16"))
  assert rc == 2, err[-3000:]
  assert "seed: 0 -> 1" in err and "batch_size: 8 -> 16" in err and "Traceback" not in err
  assert "--allow-config-change" in err
  # log/preview cadence and total steps cannot change the result: accepted.
  config = tiny_config(synthetic_data_dir, steps=STEPS, log_every=1, preview_every=4)
  train.train_and_evaluate(config, workdir, progress=False)
  # Allowed explicitly: resumes, saying so.
  train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=STEPS + 1, seed=1), workdir,
                           progress=False, allow_config_change=True)


def test_config_differences_list_what_breaks_exact_resume():
  old = {"seed": 0, "steps": 10, "log_every": 5, "data": {"dir": "a", "workers": 2, "shards": 0},
         "augment": {"warp": True}}
  new = {"seed": 0, "steps": 99, "log_every": 1, "data": {"dir": "b", "workers": 4, "shards": 0},
         "augment": {"warp": False}, "loss": {"adversarial": 0.0}}
  breaking, added = recovery.config_differences(old, new)
  assert breaking == ["augment.warp: True -> False"]
  assert added == ["loss.adversarial = 0.0"]
  # shards=0 means one part per process: resuming on another process count changes the data.
  saved = {"config": old, "dataset": {}, "process_count": 2}
  with pytest.raises(recovery.ConfigDriftError, match="data.shards: 2 -> 1"):
    recovery.check_resume(4, saved, {"config": old, "dataset": {}, "process_count": 1},
                          allow=False)


def test_a_rebuilt_dataset_is_a_difference(tmp_path):
  folder = tmp_path / "jaxswap_faces" / "1.0.0"
  folder.mkdir(parents=True)
  (folder / "metadata.json").write_text('{"fingerprint": "videos-1"}')
  (folder / "jaxswap_faces-train_a.array_record-00000-of-00001").write_bytes(b"x" * 10)
  before = recovery.dataset_fingerprint(str(tmp_path), "jaxswap_faces")
  assert before == recovery.dataset_fingerprint(str(tmp_path), "jaxswap_faces:1.0.0")
  (folder / "metadata.json").write_text('{"fingerprint": "videos-2"}')
  after = recovery.dataset_fingerprint(str(tmp_path), "jaxswap_faces")
  diff = recovery.fingerprint_differences(before, after)
  assert len(diff) == 1 and "metadata.json" in diff[0]
  moved = tmp_path / "elsewhere"
  shutil.copytree(tmp_path / "jaxswap_faces", moved / "jaxswap_faces")
  assert recovery.dataset_fingerprint(str(moved), "jaxswap_faces") == after


# ----------------------------------------------------------------------------------------------
# Determinism on GPU
# ----------------------------------------------------------------------------------------------


def test_deterministic_flag_only_for_gpu_backends():
  want = recovery.wants_deterministic_flag
  assert want(True, "cuda", gpu_plugin=False)
  assert want(True, "gpu,cpu", gpu_plugin=False)
  assert not want(True, "cpu", gpu_plugin=True)  # JAX_PLATFORMS=cpu wins over the plugin
  assert not want(True, "tpu", gpu_plugin=False)
  assert want(True, "", gpu_plugin=True)  # jax's default picks the GPU when its plugin is there
  assert not want(True, "", gpu_plugin=False)
  assert not want(False, "cuda", gpu_plugin=True)
  flags = recovery.with_flag("--xla_gpu_deterministic_ops=false --foo=1",
                             recovery.DETERMINISTIC_FLAG)
  assert flags == "--foo=1 --xla_gpu_deterministic_ops=true"


def test_determinism_leaves_cpu_runs_alone(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert recovery.apply_determinism(True) is False
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
  # On a GPU backend that jax already started, it can only warn.
  jax.devices()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert recovery.apply_determinism(True) is False
  assert "deterministic" not in os.environ["XLA_FLAGS"]


def test_orbax_background_echoes_are_dropped_and_others_kept():
  """A read left in flight when a damaged step is refused must not print a traceback later."""
  from jaxswap import checkpoint  # pylint: disable=g-import-not-at-top
  namespace: dict = {}
  exec(compile("def read():\n  raise ValueError('byte range not valid')\n",  # noqa: S102
               os.path.join(os.sep, "site", "orbax", "serialization.py"), "exec"), namespace)
  try:
    namespace["read"]()
  except ValueError as e:
    orbax_error = e
  try:
    raise ValueError("ours")
  except ValueError as e:
    other_error = e
  drop = checkpoint._BackgroundEchoes()  # pylint: disable=protected-access

  def record(exc):
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception was never "
                             "retrieved", None, (type(exc), exc, exc.__traceback__))

  assert not drop.filter(record(orbax_error))
  assert drop.filter(record(other_error))
  try:
    raise RuntimeError("wrapper") from orbax_error
  except RuntimeError as e:
    assert checkpoint._from_orbax(e)  # pylint: disable=protected-access
