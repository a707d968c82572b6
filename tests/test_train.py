"""The training step and loop: data parallelism, single compilation, exact resume, bad input."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswap import models, parallel, swap, train
from jaxswap.data import loader as data
from jaxswap.errors import JaxswapError
from tests.conftest import ROOT, tiny_config


def _run_steps(config, mesh, batches):
  model = models.create_model(config)
  tx = train.make_optimizer(config.optimizer)
  state = jax.jit(lambda: train.create_state(model, tx, config.seed),
                  out_shardings=parallel.replicated(mesh))()
  step = train.make_train_step(model, tx, config, mesh)
  losses = []
  for b in batches:
    state, m = step(state, parallel.global_batch(b, mesh))
    losses.append((float(m["loss"]), float(m["grad_norm"])))
  return state, np.array(losses), step


def test_eight_devices_match_one_device_and_compile_once(synthetic_data_dir):
  # Plain SGD: Adam divides by sqrt(v) and so magnifies float noise in near-zero gradients,
  # which would hide a real difference behind a loose tolerance.
  config = tiny_config(synthetic_data_dir, **{"optimizer.name": "sgd", "optimizer.learning_rate": 0.1})
  loader = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=0)
  batches = [loader.batch(s) for s in range(3)]
  assert len(jax.devices()) == 8
  s1, l1, step1 = _run_steps(config, parallel.make_mesh(jax.devices()[:1]), batches)
  s8, l8, step8 = _run_steps(config, parallel.make_mesh(), batches)
  # float32 sums over 8 shards vs 1 differ in order: ~1e-5 relative on the gradient norm.
  np.testing.assert_allclose(l1[:, 0], l8[:, 0], rtol=1e-5)
  np.testing.assert_allclose(l1[:, 1], l8[:, 1], rtol=2e-4)
  # Per tensor, the two runs' parameter updates agree to within 1% of their size.
  init = _run_steps(config, parallel.make_mesh(jax.devices()[:1]), [])[0].params
  for p0, a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (init, s1.params, s8.params))):
    update = np.linalg.norm(np.asarray(a) - np.asarray(p0))
    assert update > 0
    assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 1e-2 * update
  assert step8._cache_size() == 1 and step1._cache_size() == 1  # three steps, one compilation
  assert int(s8.step) == 3
  assert l1[-1, 0] != l1[0, 0]  # the parameters moved


def test_batches_depend_only_on_seed_and_step(synthetic_data_dir):
  a = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=3)
  b = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=3)
  c = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=4)
  np.testing.assert_array_equal(a.batch(5)["image_a"], b.batch(5)["image_a"])
  assert not np.array_equal(a.batch(5)["image_a"], c.batch(5)["image_a"])
  # From the background iterator, resumed mid-way: the same batches as direct calls.
  got = list(a.iterate(4, 7))
  assert [s for s, _ in got] == [4, 5, 6]
  np.testing.assert_array_equal(got[1][1]["image_b"], b.batch(5)["image_b"])
  # Every example of an epoch is visited once before any repeats.
  n = len(a.sources["a"][0])
  per_epoch = np.concatenate([a.indices("a", s) for s in range(n // 8)])
  assert len(set(per_epoch.tolist())) == len(per_epoch)


def test_processes_read_disjoint_shards_of_the_same_global_batch(synthetic_data_dir):
  kw = dict(seed=0, shards=2)
  one = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, **kw)
  parts = [data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, process_index=p,
                           process_count=2, **kw) for p in range(2)]
  for step in (0, 7, 30):  # 30 crosses an epoch boundary of a 43-face shard
    full = one.batch(step)
    halves = [p.batch(step) for p in parts]
    for key in full:
      np.testing.assert_array_equal(full[key], np.concatenate([h[key] for h in halves]))
  frames = [{int(r["frame"]) for r in p.sources["a"][0]} for p in parts]
  assert frames[0] and frames[1] and not frames[0] & frames[1]
  assert len(frames[0] | frames[1]) == one.spec.num_examples["a"]
  with pytest.raises(JaxswapError, match="multiple of the 2 processes"):
    data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=0, shards=3,
                    process_count=2)


def _cli(args, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "jaxswap.train", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, **kw)


def _cli_args(config, workdir, steps):
  return ["--config", "configs/tiny.py", "--workdir", workdir,
          f"--config.data.dir={config.data.dir}", "--config.data.name=jaxswap_synthetic",
          "--config.batch_size=8", f"--config.steps={steps}", "--config.log_every=2",
          "--config.preview_every=2", "--config.checkpoint_every=2", "--config.preview_faces=2",
          "--config.compilation_cache="]


def test_interrupted_and_resumed_run_is_bit_identical(synthetic_data_dir, tmp_path):
  config = tiny_config(synthetic_data_dir, steps=6)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight, progress=False)
  resumed = str(tmp_path / "resumed")
  first = _cli(_cli_args(config, resumed, 3))
  assert first.returncode == 0, first.stderr[-2000:]
  second = _cli(_cli_args(config, resumed, 6))
  assert second.returncode == 0, second.stderr[-2000:]
  assert "resumed from step 3" in second.stderr
  _, _, p_straight = swap.load_run(straight)
  _, _, p_resumed = swap.load_run(resumed)
  for a, b in zip(jax.tree_util.tree_leaves(p_straight), jax.tree_util.tree_leaves(p_resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The workdir has what the docs promise.
  names = set(os.listdir(resumed))
  assert {"config.json", "checkpoints", "metrics.jsonl", "previews"} <= names
  assert any(n.startswith("events.") for n in names)
  assert sorted(os.listdir(os.path.join(resumed, "previews"))) == [
      "step_000002.png", "step_000003.png", "step_000004.png", "step_000006.png"]
  steps = [json.loads(l)["step"] for l in open(os.path.join(resumed, "metrics.jsonl"))]
  assert 6 in steps and 2 in steps


def test_unknown_config_key_is_a_clear_error(tmp_path):
  r = _cli(["--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
            "--config.optimizer.learning_rat=0.1"])
  assert r.returncode == 2
  assert "learning_rat" in r.stderr and "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w")


def test_missing_dataset_dir_is_a_clear_error(tmp_path):
  r = _cli(["--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
            f"--config.data.dir={tmp_path / 'nope'}"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert "nope" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_workdir_of_another_architecture_is_refused_untouched(synthetic_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=2), workdir, progress=False)
  before = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}
  config_text = open(os.path.join(workdir, "config.json")).read()
  r = _cli(_cli_args(tiny_config(synthetic_data_dir), workdir, 4) + ["--config.model.learn_mask=True"])
  assert r.returncode == 2
  assert "different architecture" in r.stderr and "learn_mask" in r.stderr
  assert open(os.path.join(workdir, "config.json")).read() == config_text
  assert before == {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}
  # Without config.json, the checkpoint's own record still refuses it.
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(JaxswapError, match="was written by"):
    train.train_and_evaluate(tiny_config(synthetic_data_dir, **{"model.learn_mask": True}),
                             workdir, progress=False)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(synthetic_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=2), workdir, progress=False)
  _, _, good = swap.load_run(workdir)
  bad = tiny_config(synthetic_data_dir, steps=6, **{"optimizer.learning_rate": float("inf")})
  with pytest.raises(JaxswapError, match="diverged at step 3.*last good checkpoint is step 2"):
    train.train_and_evaluate(bad, workdir, progress=False, allow_config_change=True)
  _, _, kept = swap.load_run(workdir)
  for a, b in zip(jax.tree_util.tree_leaves(good), jax.tree_util.tree_leaves(kept)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _learning_curve(data_dir, steps, **overrides):
  config = tiny_config(data_dir, **overrides)
  config.augment.warp = False
  loader = data.StepLoader(data_dir, "jaxswap_synthetic", "train", 8, seed=0)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state, losses, _ = _run_steps(config, mesh, (loader.batch(s) for s in range(steps)))
  return state, losses[:, 0]


def test_tiny_learns_the_synthetic_faces(synthetic_data_dir):
  """150 steps on one device: the reconstruction loss falls well below its start."""
  _, losses = _learning_curve(synthetic_data_dir, 150, **{"optimizer.learning_rate": 1e-3})
  start, end = np.mean(losses[:10]), np.mean(losses[-10:])
  assert end < 0.6 * start, (start, end)


def test_bfloat16_compute_trains_with_float32_params(synthetic_data_dir):
  state, losses = _learning_curve(synthetic_data_dir, 24, dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(state.params))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(state.opt_state)
             if hasattr(p, "dtype") and p.ndim)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < 0.95 * np.mean(losses[:4]), losses


def test_step_without_augmentation_trains_on_the_faces_as_they_are(synthetic_data_dir):
  """augment=False (what benchmarks time as "model-only"): its loss is the clean-face loss."""
  config = tiny_config(synthetic_data_dir)
  mesh = parallel.make_mesh()
  model = models.create_model(config)
  tx = train.make_optimizer(config.optimizer)
  state = jax.jit(lambda: train.create_state(model, tx, config.seed),
                  out_shardings=parallel.replicated(mesh))()
  batch = parallel.global_batch(
      data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=0).batch(0), mesh)
  clean = jax.jit(functools.partial(train.eval_losses, model=model, config=config))(
      state.params, batch)
  expected = {k: float(v) for k, v in clean.items()}
  augmented = train.make_train_step(model, tx, config, mesh)
  plain = train.make_train_step(model, tx, config, mesh, augment=False)
  _, m_aug = augmented(jax.tree_util.tree_map(jnp.copy, state), batch)
  new, m = plain(state, batch)
  assert float(m["loss_a"]) == pytest.approx(expected["val_loss_a"], rel=1e-5)
  assert float(m["loss_b"]) == pytest.approx(expected["val_loss_b"], rel=1e-5)
  assert abs(float(m_aug["loss_a"]) - expected["val_loss_a"]) > 1e-4  # augmentation does differ
  assert int(new.step) == 1


def test_init_from_starts_a_fresh_run_from_another_runs_parameters(synthetic_data_dir, tiny_run,
                                                                    tmp_path):
  """DeepFaceLab's pretraining: a pair run begins with a pretrained run's weights, at step 0."""
  _, _, source = swap.load_run(tiny_run)
  workdir = str(tmp_path / "pair")
  config = tiny_config(synthetic_data_dir, steps=1, init_from=tiny_run,
                       **{"optimizer.learning_rate": 0.0})
  state = train.train_and_evaluate(config, workdir, progress=False)
  assert int(state.step) == 1  # its own count, from 0
  for got, want in zip(jax.tree_util.tree_leaves(state.params),
                       jax.tree_util.tree_leaves(source)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # lr 0: unchanged
  fresh = train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=1,
                                               **{"optimizer.learning_rate": 0.0}),
                                   str(tmp_path / "fresh"), progress=False)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(fresh.params),
                                                       jax.tree_util.tree_leaves(source)))
  with pytest.raises(JaxswapError, match="init_from.*cannot carry over"):
    train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=1, init_from=tiny_run,
                                         **{"model.learn_mask": True}),
                             str(tmp_path / "other"), progress=False)
