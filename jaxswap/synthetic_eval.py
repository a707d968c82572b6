"""Swap quality against ground truth, on the synthetic identities.

For synthetic faces the right answer of a swap is known: B's face with pose/expression p, swapped to
A, should look exactly like `render("a", p)`. We report MAE, PSNR and SSIM of the swap against that
truth, over the whole crop and inside the true face's mask, next to two baselines that a swap must
beat to count as one:

  identity   the input face unchanged (a swap that learnt nothing);
  pose_blind the target person at the mean pose and expression of the test set, whatever the
             input (a decoder that learnt the person's average face and ignores the encoder).

The face-region numbers decide (`gate`): outside the face the crops share a background.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from jaxswap import losses
from jaxswap.data import synthetic

BASELINES = ("identity", "pose_blind")
_SSIM_WINDOW = 11


def image_metrics(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """pred, truth float (N,H,W,3) in [0,1]; mask (N,H,W,1) in [0,1]."""
  err = np.abs(pred - truth)
  mse = float(np.mean((pred - truth) ** 2))
  ssim_map = np.asarray(pix.ssim(
      jnp.asarray(pred), jnp.asarray(truth), filter_size=_SSIM_WINDOW, return_map=True,
      filter_fn=losses.gaussian_filter(_SSIM_WINDOW, 1.5))).mean(-1)  # (N, H-10, W-10)
  half = _SSIM_WINDOW // 2  # the map's pixel (i, j) is centred on image pixel (i+5, j+5)
  inner = mask[:, half:-half, half:-half, 0]
  return {
      "mae": float(err.mean()),
      "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
      "ssim": float(ssim_map.mean()),
      "face_mae": float((err * mask).sum() / (mask.sum() * 3 + 1e-8)),
      "face_ssim": float((ssim_map * inner).sum() / (inner.sum() + 1e-8)),
  }


def mean_params(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every face at the set's mean pose, expression and lighting."""
  return {k: np.full_like(v, v.mean()) for k, v in params.items()}


def synthetic_swap_quality(swap_fn, params, *, image_size: int, num: int = 256, seed: int = 1234,
                           batch: int = 64) -> dict:
  """Swap B->A and A->B on held-out poses; compare with the true renders and the baselines.

  swap_fn(params, uint8 faces, to) -> float32 [0,1] faces.
  """
  rng = np.random.default_rng(seed)
  p = synthetic.sample_params(rng, num)
  out = {}
  for src, dst, to in (("b", "a", 0), ("a", "b", 1)):
    faces = synthetic.render(src, p, image_size)
    truth = synthetic.render(dst, p, image_size)
    preds = []
    for i in range(0, num, batch):
      preds.append(np.asarray(jax.device_get(swap_fn(params, faces["image"][i:i + batch], to))))
    pred = np.concatenate(preds)
    t = truth["image"].astype(np.float32) / 255.0
    m = truth["mask"].astype(np.float32) / 255.0
    name = f"{src}_to_{dst}"
    out[name] = image_metrics(pred, t, m)
    out[f"{name}_baseline_identity"] = image_metrics(faces["image"].astype(np.float32) / 255.0,
                                                     t, m)
    blind = synthetic.render(dst, mean_params(p), image_size)["image"].astype(np.float32) / 255.0
    out[f"{name}_baseline_pose_blind"] = image_metrics(blind, t, m)
  return out


def gate(quality: dict) -> list[str]:
  """Why the swaps do not count as swaps (empty when they pass, both ways).

  Each swap must have a lower face MAE and a higher face SSIM than both baselines: the input
  unchanged, and the person's average face at the mean pose (a decoder that ignores its input).
  SSIM compares local structure, where pose and expression show; MAE asks for the right colours
  as well, and a sharp average face is hard to beat on it: a blurry face in the right pose does
  not (the demo's swap did not until `augment.input_hsv` and `loss.true_face`).
  """
  failures = []
  for k in ("b_to_a", "a_to_b"):
    for base in BASELINES:
      ref, got = quality[f"{k}_baseline_{base}"], quality[k]
      if not got["face_mae"] < ref["face_mae"]:
        failures.append(f"{k}: face MAE {got['face_mae']:.4f} is not below the {base} "
                        f"baseline's {ref['face_mae']:.4f}")
      if not got["face_ssim"] > ref["face_ssim"]:
        failures.append(f"{k}: face SSIM {got['face_ssim']:.3f} is not above the {base} "
                        f"baseline's {ref['face_ssim']:.3f}")
  return failures
