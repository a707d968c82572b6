"""Analytic FLOPs of a training step, from jaxswap.models.ModelSpec (both families).

Dense counting: every kernel tap, padding included, so the figure is the network's nominal work
(XLA's HloCostAnalysis counts only taps inside the unpadded input, plus elementwise ops; the two
agree within a few per cent on 64-128 px maps, see benchmarks/README.md).

Per training pair (one face of A and one of B):
  df    2 x (encoder + inter + decoder)                 (inter = Dense, Dense, Upscale)
  liae  2 x encoder + 3 x inter + 2 x decoder, the decoder fed [code, code] (2 x channels):
        A needs inter_AB once, B needs inter_B and inter_AB.
`half_res_decoder` (DeepFaceLab "-d"): the decoder stops at half size (its upscales already say
so) and its output conv emits 4x the channels, which depth-to-space turns into the full face.
"""

from __future__ import annotations

import dataclasses


def _conv(size: int, cin: int, cout: int, k: int, stride: int = 1) -> int:
  """Multiply-adds of a SAME conv producing a size x size x cout map (stride: for checks)."""
  del stride  # dense count: the output size already says everything
  return size * size * cout * k * k * cin


@dataclasses.dataclass(frozen=True)
class Macs:
  """Forward multiply-adds of one face through each part."""
  encoder: int  # the strided convs
  first_conv: int  # conv 1 (its input gradient is never computed)
  inter: int  # one dense block: Dense, Dense, Upscale
  decoder: int  # one decoder, mask branch included when learnt
  arch: str

  @property
  def pair(self) -> int:
    """One face of A and one of B through the training objective."""
    inters = 3 if self.arch == "liae" else 2
    return 2 * self.encoder + inters * self.inter + 2 * self.decoder


def model_macs(spec, learn_mask: bool = False) -> Macs:
  size, ch, enc, first = spec.image_size, 3, 0, 0
  for f in spec.encoder_filters:
    size //= 2
    enc += _conv(size, ch, f, 5, stride=2)
    first = first or enc
    ch = f
  flat = size * size * ch
  latent = spec.latent_res ** 2 * spec.latent_ch
  inter = flat * spec.dense + spec.dense * latent
  inter += _conv(spec.latent_res, spec.latent_ch, 4 * spec.encoder_upscale, 3)
  z_size = spec.latent_res * 2
  z_ch = spec.encoder_upscale * (2 if spec.arch == "liae" else 1)
  r2 = 4 if spec.half_res_decoder else 1
  branches = [(spec.decoder_filters, 3)]
  if learn_mask:
    branches.append((spec.mask_filters or spec.decoder_filters, 1))
  dec = 0
  for filters, out_ch in branches:
    size, ch = z_size, z_ch
    for f in filters:
      dec += _conv(size, ch, 4 * f, 3)
      size, ch = size * 2, f
      if spec.residual:
        dec += 2 * _conv(size, ch, ch, 3)
    dec += _conv(size, ch, out_ch * r2, spec.out_kernel)
  return Macs(enc, first, inter, dec, spec.arch)


def model_train_flops(spec, learn_mask: bool, batch: int) -> float:
  """Analytic FLOPs of one training step on `batch` faces per identity (2 x batch faces).

  2 FLOPs per multiply-add; backward = 2 x forward, minus conv 1's input gradient.
  """
  m = model_macs(spec, learn_mask)
  return 2.0 * (3 * m.pair - 2 * m.first_conv) * batch


def model_forward_flops(spec, learn_mask: bool, batch: int) -> float:
  """Forward only, for checking against XLA's count of `model.apply` (2 x batch faces)."""
  return 2.0 * model_macs(spec, learn_mask).pair * batch
