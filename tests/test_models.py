"""Model specs: parameter counts from the published layer lists, pixel-shuffle order, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswap import models


def conv(k, cin, cout):
  return k * k * cin * cout + cout


def dense(n_in, n_out):
  return n_in * n_out + n_out


def abstract_params(name, learn_mask=False, dtype=jnp.float32):
  m = models.FaceSwapAutoencoder(models.VARIANTS[name], learn_mask, dtype)
  return jax.eval_shape(lambda: models.init_params(m, jax.random.PRNGKey(0)))


def test_original_parameter_count_matches_2017_network():
  encoder = (conv(5, 3, 128) + conv(5, 128, 256) + conv(5, 256, 512) + conv(5, 512, 1024)
             + dense(4 * 4 * 1024, 1024) + dense(1024, 4 * 4 * 1024) + conv(3, 1024, 4 * 512))
  decoder = conv(3, 512, 4 * 256) + conv(3, 256, 4 * 128) + conv(3, 128, 4 * 64) + conv(5, 64, 3)
  p = abstract_params("original")
  assert models.count_params(p["encoder"]) == encoder == 69_662_976
  assert models.count_params(p["decoder_a"]) == models.count_params(p["decoder_b"]) == decoder
  assert models.count_params(p) == encoder + 2 * decoder
  assert round(models.count_params(p) / 1e6, 1) == 82.1


def test_lightweight_parameter_count():
  encoder = (conv(5, 3, 128) + conv(5, 128, 256) + conv(5, 256, 512)
             + dense(8 * 8 * 512, 512) + dense(512, 4 * 4 * 512) + conv(3, 512, 4 * 256))
  decoder = conv(3, 256, 4 * 512) + conv(3, 512, 4 * 256) + conv(3, 256, 4 * 128) + conv(5, 128, 3)
  p = abstract_params("lightweight")
  assert models.count_params(p["encoder"]) == encoder
  assert models.count_params(p) == encoder + 2 * decoder


def test_learned_mask_branch_mirrors_the_rgb_branch():
  p = abstract_params("original", learn_mask=True)
  d = p["decoder_a"]
  rgb = sum(models.count_params(v) for k, v in d.items() if k.startswith("rgb"))
  mask = sum(models.count_params(v) for k, v in d.items() if k.startswith("mask"))
  assert mask == rgb - conv(5, 64, 3) + conv(5, 64, 1)


def test_pixel_shuffle_channel_order_is_rh_rw_c():
  # One pixel, 2x2 blocks of 2 channels: channel index = (i * r + j) * C + c.
  x = jnp.arange(8, dtype=jnp.float32).reshape(1, 1, 1, 8)
  y = models.pixel_shuffle(x, 2)
  expected = np.array([[[0, 1], [2, 3]], [[4, 5], [6, 7]]], np.float32)  # [i][j][c]
  np.testing.assert_array_equal(np.asarray(y[0]), expected)
  # And on a larger map, block (h, w) holds input pixel (h, w).
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 12))
  y = models.pixel_shuffle(x, 2)
  for i in range(2):
    for j in range(2):
      np.testing.assert_array_equal(np.asarray(y[:, i::2, j::2, :]),
                                    np.asarray(x[..., (i * 2 + j) * 3:(i * 2 + j + 1) * 3]))


@pytest.mark.parametrize("name", sorted(models.VARIANTS))
def test_forward_shapes_every_variant(name):
  spec = models.VARIANTS[name]
  m = models.autoencoder(spec, learn_mask=True)
  s = spec.image_size
  x = jnp.zeros((2, s, s, 3))
  params = jax.eval_shape(lambda: models.init_params(m, jax.random.PRNGKey(0)))
  out_a, out_b = jax.eval_shape(lambda p: m.apply({"params": p}, x, x), params)
  for out in (out_a, out_b):
    assert out["rgb"].shape == (2, s, s, 3) and out["mask"].shape == (2, s, s, 1)
    assert out["rgb"].dtype == jnp.float32


def test_tiny_outputs_are_images_and_decoders_differ():
  m = models.FaceSwapAutoencoder(models.VARIANTS["tiny"], learn_mask=True)
  params = models.init_params(m, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
  to_a = m.apply({"params": params}, x, 0, method=m.swap)["rgb"]
  to_b = m.apply({"params": params}, x, 1, method=m.swap)["rgb"]
  assert float(to_a.min()) >= 0 and float(to_a.max()) <= 1
  assert float(jnp.abs(to_a - to_b).mean()) > 1e-4  # independent decoders
  own_a, own_b = m.apply({"params": params}, x, x)
  np.testing.assert_allclose(own_a["rgb"], to_a, atol=1e-6)
  np.testing.assert_allclose(own_b["rgb"], to_b, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  m = models.FaceSwapAutoencoder(models.VARIANTS["tiny"], dtype=jnp.bfloat16)
  params = models.init_params(m, jax.random.PRNGKey(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
  out, _ = m.apply({"params": params}, x, x)
  ref, _ = models.FaceSwapAutoencoder(models.VARIANTS["tiny"]).apply({"params": params}, x, x)
  assert out["rgb"].dtype == jnp.float32
  np.testing.assert_allclose(out["rgb"], ref["rgb"], atol=0.05)


@pytest.mark.parametrize("n,k,s", [(8, 5, 2), (4, 5, 2), (16, 5, 2), (7, 5, 2), (6, 3, 2),
                                   (5, 3, 1)])
def test_patches_conv_equals_the_conv(n, k, s):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, n, n, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 3, 4))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = models.patches_conv(x, w, s)
  np.testing.assert_allclose(np.asarray(got), np.asarray(conv(x, w)), rtol=1e-5, atol=1e-5)
  # Gradients too: the point of the rewrite is the backward pass.
  f = lambda conv: jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)
  for g1, g2 in zip(f(lambda x, w: models.patches_conv(x, w, s)), f(conv)):
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-4, atol=1e-4)


def test_cpu_model_matches_the_plain_convs():
  """The CPU form (patches) changes no parameter and ~nothing of the loss or its gradients."""
  spec = models.VARIANTS["original"]
  cpu = models.autoencoder(spec, conv=models.cpu_conv_general_dilated)
  plain = models.autoencoder(spec)
  params = models.init_params(plain, jax.random.PRNGKey(0))
  assert (jax.tree_util.tree_structure(params) ==
          jax.tree_util.tree_structure(models.init_params(cpu, jax.random.PRNGKey(0))))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
  loss = lambda m: lambda p: jnp.mean(m.apply({"params": p}, x, x)[0]["rgb"] ** 2)
  (l1, g1), (l2, g2) = (jax.value_and_grad(loss(m))(params) for m in (cpu, plain))
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3,
                               atol=1e-4 * float(jnp.max(jnp.abs(b))))


def _config(name, **kw):
  from jaxswap.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.name, c.image_size = name, models.VARIANTS[name].image_size
  for k, v in kw.items():
    setattr(c.model, k, v)
  return c


def test_liae_has_two_inters_one_decoder_and_swaps_through_inter_ab():
  m = models.create_model(_config("liae128", learn_mask=True))
  assert isinstance(m, models.LIAEAutoencoder)
  params = models.init_params(m, jax.random.PRNGKey(0))
  assert set(params) == {"encoder", "inter_ab", "inter_b", "decoder"}
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 128, 128, 3))
  to_a = m.apply({"params": params}, x, 0, method=m.swap)
  to_b = m.apply({"params": params}, x, 1, method=m.swap)
  assert to_a["rgb"].shape == (2, 128, 128, 3) and to_a["mask"].shape == (2, 128, 128, 1)
  # A is drawn from [AB, AB], B from [B, AB]: zeroing inter_b changes B's face, never A's.
  cut = dict(params, inter_b=jax.tree_util.tree_map(jnp.zeros_like, params["inter_b"]))
  np.testing.assert_array_equal(m.apply({"params": cut}, x, 0, method=m.swap)["rgb"],
                                to_a["rgb"])
  assert float(jnp.abs(m.apply({"params": cut}, x, 1, method=m.swap)["rgb"]
                       - to_b["rgb"]).max()) > 1e-4
  own_a, own_b = m.apply({"params": params}, x, x)
  np.testing.assert_allclose(own_a["rgb"], to_a["rgb"], atol=1e-6)
  np.testing.assert_allclose(own_b["rgb"], to_b["rgb"], atol=1e-6)


def test_half_resolution_decoder_ends_in_depth_to_space():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  spec = models.VARIANTS["quick128"]
  m = models.create_model(_config("quick128"))
  params = models.init_params(m, jax.random.PRNGKey(0))
  # The last upscale leaves 64 px; the output conv emits 4 x 3 channels for the 2x2 blocks.
  assert params["decoder_a"]["rgb_out"]["kernel"].shape == (3, 3, spec.decoder_filters[-1], 12)
  raw = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.name == "rgb_out" and context.method_name == "__call__":
      raw["x"] = out
    return out

  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 128, 128, 3))
  with nn.intercept_methods(capture):
    out = m.apply({"params": params}, x, 0, method=m.swap)["rgb"]
  assert raw["x"].shape == (1, 64, 64, 12) and out.shape == (1, 128, 128, 3)
  np.testing.assert_allclose(out, jax.nn.sigmoid(models.pixel_shuffle(raw["x"], 2)), atol=1e-6)


@pytest.mark.parametrize("init,fan", [("glorot_uniform", "avg"), ("he_uniform", "in")])
def test_initialisers_follow_the_references(init, fan):
  m = models.create_model(_config("tiny", init=init))
  params = models.init_params(m, jax.random.PRNGKey(0))
  k = np.asarray(params["encoder"]["Conv_1"]["kernel"])  # 5x5, 32 -> 64
  fan_in, fan_out = 25 * 32, 25 * 64
  limit = np.sqrt(6 / (fan_in + fan_out)) if fan == "avg" else np.sqrt(6 / fan_in)
  assert np.abs(k).max() <= limit and np.abs(k).max() > 0.95 * limit  # uniform up to the limit
  np.testing.assert_allclose(k.std(), limit / np.sqrt(3), rtol=0.05)


def test_auto_init_is_the_variant_reference_and_bad_names_fail():
  assert models.create_model(_config("original")).initializer == "glorot_uniform"
  assert models.create_model(_config("lightweight")).initializer == "he_uniform"
  assert models.create_model(_config("tiny", init="lecun_normal")).initializer == "lecun_normal"
  with pytest.raises(models.JaxswapError, match="model.init"):
    models.create_model(_config("tiny", init="orthogonal"))


def test_cpu_model_goes_through_patches_and_other_backends_do_not(monkeypatch):
  offered, patched = [], []
  for name, seen in (("cpu_conv_general_dilated", offered), ("patches_conv", patched)):
    monkeypatch.setattr(models, name, lambda x, w, *a, real=getattr(models, name), seen=seen, **k:
                        seen.append(x.shape[1:]) or real(x, w, *a, **k))
  assert models.uses_cpu_conv_rewrite("cpu") and not models.uses_cpu_conv_rewrite("gpu")
  cpu = models.create_model(_config("original"), backend="cpu")
  jax.eval_shape(lambda: models.init_params(cpu, jax.random.PRNGKey(0)))
  # Every conv is offered to it: per person 4 in the encoder and 1 in the inter block, then 3
  # upscales and the output conv in each decoder.
  assert len(offered) == 2 * 5 + 2 * 4
  # Only the 8x8 -> 4x4 one (output smaller than the kernel) takes the patches form.
  assert patched == [(8, 8, 512)] * 2
  offered.clear()
  gpu = models.create_model(_config("original"), backend="gpu")
  jax.eval_shape(lambda: models.init_params(gpu, jax.random.PRNGKey(0)))
  assert gpu.conv is None and not offered
