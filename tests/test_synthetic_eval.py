"""The demo's gate: swaps are scored against the exact truth and must beat two baselines."""

import numpy as np
import pytest

from jaxswap import synthetic_eval
from jaxswap.data import synthetic

N, SEED = 32, 5


def _params():
  return synthetic.sample_params(np.random.default_rng(SEED), N)


def _quality(swap_fn):
  return synthetic_eval.synthetic_swap_quality(swap_fn, None, image_size=64, num=N, seed=SEED,
                                               batch=N)


def test_an_oracle_is_perfect_and_passes_the_gate():
  def oracle(params, faces, to):  # knows the truth: renders the other identity exactly
    del params, faces
    return synthetic.render(to, _params(), 64)["image"].astype(np.float32) / 255.0

  q = _quality(oracle)
  for k in ("b_to_a", "a_to_b"):
    assert q[k]["mae"] == 0 and q[k]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert q[k]["face_ssim"] == pytest.approx(1.0, abs=1e-5)
    base = q[f"{k}_baseline_identity"]
    assert base["mae"] > 0.05 and base["ssim"] < 0.9 and base["face_mae"] > 0.05
    blind = q[f"{k}_baseline_pose_blind"]
    assert blind["face_mae"] > 0.02 and blind["face_ssim"] < 0.95
  assert synthetic_eval.gate(q) == []


def test_a_pose_blind_decoder_fails_the_gate_though_it_beats_doing_nothing():
  def average_face(params, faces, to):  # the right person, always at the mean pose
    del params, faces
    blind = synthetic_eval.mean_params(_params())
    return synthetic.render(to, blind, 64)["image"].astype(np.float32) / 255.0

  q = _quality(average_face)
  for k in ("b_to_a", "a_to_b"):
    base = q[f"{k}_baseline_identity"]
    assert q[k]["face_mae"] < base["face_mae"]  # the old gate would have passed it
  failures = synthetic_eval.gate(q)
  for k in ("b_to_a", "a_to_b"):  # it IS the pose-blind baseline, so it cannot beat it
    expected = f"{k}: face SSIM {q[k]['face_ssim']:.3f} is not above the pose_blind"
    assert expected in "\n".join(failures)


def test_face_ssim_only_looks_inside_the_mask():
  rng = np.random.default_rng(0)
  truth = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  pred = truth.copy()
  mask = np.zeros((2, 32, 32, 1), np.float32)
  mask[:, 8:24, 8:24] = 1
  pred[:, :3] = 1 - pred[:, :3]  # damage outside the face, beyond the window's reach
  m = synthetic_eval.image_metrics(pred, truth, mask)
  assert m["face_ssim"] == pytest.approx(1.0, abs=1e-3) and m["face_mae"] == 0
  assert m["ssim"] < m["face_ssim"] - 1e-3 and m["mae"] > 0  # the whole crop sees it


def test_a_swap_in_the_right_pose_but_with_a_larger_error_than_the_average_face_fails():
  """The gate asks for MAE below the pose-blind baseline's too: blur alone cannot pass it."""
  def oracle(params, faces, to):
    del params, faces
    return synthetic.render(to, _params(), 64)["image"].astype(np.float32) / 255.0

  q = _quality(oracle)
  blind = q["b_to_a_baseline_pose_blind"]["face_mae"]
  q["b_to_a"] = dict(q["b_to_a"], face_mae=blind + 0.01)  # posed right, colours off
  assert synthetic_eval.gate(q) == [
      f"b_to_a: face MAE {blind + 0.01:.4f} is not below the pose_blind baseline's {blind:.4f}"]
