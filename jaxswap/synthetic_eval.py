"""Swap quality against ground truth, on the synthetic identities.

For synthetic faces the right answer of a swap is known: B's face with pose/expression p, swapped to
A, should look exactly like `render("a", p)`. We report MAE, PSNR and SSIM of the swap against that
truth, over the whole crop and inside A's face mask, next to the same numbers for a trivial
baseline that returns the input face unchanged (what a swap that learnt nothing would give).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxswap import losses
from jaxswap.data import synthetic


def image_metrics(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """pred, truth float (N,H,W,3) in [0,1]; mask (N,H,W,1) in [0,1]."""
  err = np.abs(pred - truth)
  mse = float(np.mean((pred - truth) ** 2))
  ssim = losses.ssim(jnp.asarray(pred), jnp.asarray(truth))
  return {
      "mae": float(err.mean()),
      "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
      "ssim": float(jnp.mean(ssim)),
      "face_mae": float((err * mask).sum() / (mask.sum() * 3 + 1e-8)),
  }


def synthetic_swap_quality(swap_fn, params, *, image_size: int, num: int = 256, seed: int = 1234,
                           batch: int = 64) -> dict:
  """Swap B->A and A->B on held-out poses; compare with the true renders and with the baseline.

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
    out[f"{name}_baseline_identity"] = image_metrics(faces["image"].astype(np.float32) / 255.0, t, m)
  return out
