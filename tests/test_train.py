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
from jaxswap.step import discriminator_step
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
  config = tiny_config(synthetic_data_dir,
                       **{"optimizer.name": "sgd", "optimizer.learning_rate": 0.1})
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


def test_decoded_face_cache_gives_the_same_batches_and_stops_reading(synthetic_data_dir):
  plain = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=1)
  cached = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=1,
                           cache_mb=1024)
  reads = []
  for ident, parts in cached.sources.items():
    for src in parts:
      real = src.__getitems__
      src.__getitems__ = lambda idx, real=real, ident=ident: reads.append((ident, len(idx))) \
          or real(idx)
  n = max(cached.spec.num_examples.values())
  epoch = -(-n // 8)
  for step in range(epoch):  # the first epoch reads (and keeps) every face
    for key, value in plain.batch(step).items():
      np.testing.assert_array_equal(cached.batch(step)[key], value)
  assert len(cached.cache) == sum(cached.spec.num_examples.values())
  face = next(iter(cached.cache.values()))
  assert cached.cached_bytes == len(cached.cache) * sum(a.nbytes for a in face.values())
  reads.clear()
  for step in (epoch, epoch + 3, 5 * epoch + 1):  # later epochs: the same batches, no reads
    for key, value in plain.batch(step).items():
      np.testing.assert_array_equal(cached.batch(step)[key], value)
  assert reads == []
  # A budget of three faces keeps three; the others are decoded each time, batches unchanged.
  size = sum(a.nbytes for a in face.values())
  small = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=1,
                          cache_mb=(3 * size + size // 2) / 2**20)
  for step in range(3):
    np.testing.assert_array_equal(small.batch(step)["image_b"], plain.batch(step)["image_b"])
  assert len(small.cache) == 3 and small.cached_bytes == 3 * size
  with pytest.raises(JaxswapError, match="cache_mb must be >= 0"):
    data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=1, cache_mb=-1)


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
  r = _cli(_cli_args(tiny_config(synthetic_data_dir), workdir, 4)
           + ["--config.model.learn_mask=True"])
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


def test_warp_until_trains_unwarped_from_that_step_on(synthetic_data_dir, tmp_path, caplog):
  """augment.warp_until=2: steps 0-1 are the warped step, steps 2-3 the unwarped one, exactly."""
  config = tiny_config(synthetic_data_dir, **{"augment.warp_until": 2})
  with caplog.at_level("INFO", logger="jaxswap.train"):
    train.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  assert "inputs unwarped from step 2 on" in caplog.text
  _, _, trained = swap.load_run(str(tmp_path / "run"))

  mesh = parallel.make_mesh()
  loader = data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=config.seed)
  batches = [parallel.global_batch(loader.batch(s), mesh) for s in range(4)]
  assert [train.warp_phase(config, s) for s in range(4)] == [True, True, False, False]

  def run(phases):
    model = models.create_model(config)
    tx = train.make_optimizer(config.optimizer)
    state = jax.jit(lambda: train.create_state(model, tx, config.seed),
                    out_shardings=parallel.replicated(mesh))()
    steps = {True: train.make_train_step(model, tx, config, mesh),
             False: train.make_train_step(model, tx, train.unwarped_config(config), mesh)}
    for batch, warped in zip(batches, phases):
      state, _ = steps[warped](state, batch)
    return jax.tree_util.tree_leaves(state.params)

  by_hand = run([True, True, False, False])
  for a, b in zip(jax.tree_util.tree_leaves(trained), by_hand):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  warped_throughout = run([True] * 4)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(by_hand, warped_throughout))


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
  # Only the encoder (faceswap's --load-weights): the decoders are a fresh run's, bit for bit.
  enc = train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=1, init_from=tiny_run,
                                             init_from_parts="encoder",
                                             **{"optimizer.learning_rate": 0.0}),
                                 str(tmp_path / "enc"), progress=False)
  assert sorted(enc.params) == ["decoder_a", "decoder_b", "encoder"]
  for name, want in (("encoder", source), ("decoder_a", fresh.params),
                     ("decoder_b", fresh.params)):
    for got, ref in zip(jax.tree_util.tree_leaves(enc.params[name]),
                        jax.tree_util.tree_leaves(want[name])):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  with pytest.raises(JaxswapError, match="init_from_parts='decoders' is not one of all, encoder"):
    train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=1, init_from=tiny_run,
                                         init_from_parts="decoders"),
                             str(tmp_path / "bad"), progress=False)


def _true_face_state(config, mesh):
  model = models.create_model(config)
  tx = train.make_optimizer(config.optimizer)
  disc = train.make_discriminator(model, config)
  state = jax.jit(lambda: train.create_state(model, tx, config.seed, disc),
                  out_shardings=parallel.replicated(mesh))()
  return state, train.make_train_step(model, tx, config, mesh)


def test_true_face_moves_only_the_encoder_and_trains_its_discriminator(synthetic_data_dir):
  """DeepFaceLab's true_face_power: the fooling term reaches the encoder, not the decoders."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  overrides = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1}
  batch = parallel.global_batch(
      data.StepLoader(synthetic_data_dir, "jaxswap_synthetic", "train", 8, seed=0).batch(0), mesh)
  off, step_off = _true_face_state(tiny_config(synthetic_data_dir, **overrides), mesh)
  on, step_on = _true_face_state(
      tiny_config(synthetic_data_dir, **overrides, **{"loss.true_face": 1.0}), mesh)
  assert off.disc_params is None and on.disc_params is not None
  for a, b in zip(jax.tree_util.tree_leaves(off.params), jax.tree_util.tree_leaves(on.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same start
  disc_before = jax.tree_util.tree_map(np.asarray, on.disc_params)
  off, m_off = step_off(off, batch)
  on, m_on = step_on(on, batch)
  assert 0.0 < float(m_on["true_face"]) and 0.0 < float(m_on["true_face_d"])
  assert "true_face" not in m_off
  np.testing.assert_allclose(float(m_on["loss"]), float(m_off["loss"]) + float(m_on["true_face"]),
                             rtol=1e-5)
  for name in ("decoder_a", "decoder_b"):
    for a, b in zip(jax.tree_util.tree_leaves(off.params[name]),
                    jax.tree_util.tree_leaves(on.params[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
           zip(jax.tree_util.tree_leaves(off.params["encoder"]),
               jax.tree_util.tree_leaves(on.params["encoder"]))]
  assert max(moved) > 0
  assert any(np.abs(np.asarray(a) - b).max() > 0 for a, b in
             zip(jax.tree_util.tree_leaves(on.disc_params), jax.tree_util.tree_leaves(disc_before)))


def test_code_discriminator_learns_to_tell_two_code_sets_apart():
  config = tiny_config("", **{"loss.true_face": 1.0, "optimizer.learning_rate": 1e-3})
  model = models.create_model(config)
  disc = train.make_discriminator(model, config)
  state = train.create_state(model, train.make_optimizer(config.optimizer), 0, disc)
  rng = np.random.default_rng(0)
  code_a = jnp.asarray(rng.normal(0.3, 1.0, (16, 8, 8, 128)), jnp.float32)
  code_b = jnp.asarray(rng.normal(-0.3, 1.0, (16, 8, 8, 128)), jnp.float32)
  step = jax.jit(lambda s: discriminator_step(s, disc, code_a, code_b))
  state, first = step(state)
  for _ in range(20):
    state, last = step(state)
  assert 0.6 < float(first) < 0.8  # about log 2 at the start: it cannot tell them apart yet
  assert float(last) < 0.3 * float(first), (first, last)


def test_true_face_resumes_and_refuses_to_be_toggled(synthetic_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  with_disc = lambda steps: tiny_config(synthetic_data_dir, steps=steps, **{"loss.true_face": 0.1})
  first = train.train_and_evaluate(with_disc(2), workdir, progress=False)
  resumed = train.train_and_evaluate(with_disc(2), workdir, progress=False)  # nothing left to do
  for a, b in zip(jax.tree_util.tree_leaves(first.disc_opt_state),
                  jax.tree_util.tree_leaves(resumed.disc_opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(JaxswapError, match="trained with loss.true_face on.*init_from"):
    train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=4), workdir, progress=False,
                             allow_config_change=True)


def test_levers_outside_their_range_are_refused(synthetic_data_dir):
  with pytest.raises(JaxswapError, match="warp_until=-1 must be >= 0"):
    train.validate(tiny_config(synthetic_data_dir, **{"augment.warp_until": -1}))
  with pytest.raises(JaxswapError, match="input_hsv=1.5 must lie in"):
    train.validate(tiny_config(synthetic_data_dir, **{"augment.input_hsv": 1.5}))
  with pytest.raises(JaxswapError, match="true_face=0.1 needs a df model"):
    train.validate(tiny_config(synthetic_data_dir, **{"loss.true_face": 0.1,
                                                      "model.name": "liae128",
                                                      "image_size": 128}))
