"""Two JAX processes on loopback (gloo CPU collectives) train as one process with their devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from jaxswap import models, swap
from tests.conftest import ROOT, tiny_config

ARGS = ["--config", "configs/tiny.py", "--config.data.name=jaxswap_synthetic",
        "--config.batch_size=8", "--config.data.shards=2", "--config.optimizer.name=sgd",
        "--config.optimizer.learning_rate=0.1", "--config.log_every=2", "--config.preview_every=2",
        "--config.checkpoint_every=2", "--config.preview_faces=2", "--config.compilation_cache="]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, data_dir, steps, devices, extra=()):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, "-m", "jaxswap.train", *ARGS, "--workdir", workdir,
         f"--config.data.dir={data_dir}", f"--config.steps={steps}", *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(procs):
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def test_two_processes_match_one_and_resume_in_one(synthetic_data_dir, tmp_path):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  port = _free_port()
  procs = [_start(multi, synthetic_data_dir, 4, 2,
                  ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                   "--process-id", str(i)]) for i in range(2)]
  procs.append(_start(single, synthetic_data_dir, 4, 4))
  _wait(procs)

  config = tiny_config(synthetic_data_dir)
  init = models.init_params(models.create_model(config),
                            jax.random.split(jax.random.PRNGKey(config.seed))[0])
  _, _, p_multi = swap.load_run(multi)
  _, _, p_single = swap.load_run(single)
  for p0, a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (init, p_single, p_multi))):
    update = np.linalg.norm(np.asarray(a) - np.asarray(p0))
    assert update > 0
    assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 1e-2 * update
  # Only process 0 wrote the logs: one JSONL line per logged step, not two.
  steps = [l for l in open(os.path.join(multi, "metrics.jsonl")) if '"loss"' in l]
  assert len(steps) == 2

  # The 2-process checkpoint resumes in one process with another device count.
  out = _wait([_start(multi, synthetic_data_dir, 6, 4)])[0]
  assert "resumed from step 4" in out
  _, _, resumed = swap.load_run(multi)
  assert not np.array_equal(np.asarray(jax.tree_util.tree_leaves(resumed)[0]),
                            np.asarray(jax.tree_util.tree_leaves(p_multi)[0]))
