"""benchmarks/profile_ops.py: HLO categories and a real trace summed per op (on the CPU)."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import profile_ops  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize("line,category", [
    ('  %cudnn-conv-bw-filter.9 = (bf16[5,5,64,128]{3,2,1,0}, u8[0]{0}) custom-call(bf16[64,8,8,64]'
     '{3,2,1,0} %a, bf16[64,4,4,128]{3,2,1,0} %b), window={size=5x5}, '
     'custom_call_target="__cudnn$convBackwardFilter"', "conv backward-filter (cuDNN)"),
    ('  %cudnn-conv.1 = (f32[8,4,4,16]{3,2,1,0}, u8[0]{0}) custom-call(f32[8,8,8,3]{3,2,1,0} %x), '
     'custom_call_target="__cudnn$convForward"', "conv forward (cuDNN)"),
    ("  ROOT %loop_add_fusion = f32[8,64]{1,0} fusion(f32[8,64]{1,0} %p0), kind=kLoop, "
     "calls=%fused_add", "elementwise fusion"),
    ("  %input_reduce_fusion.3 = f32[8]{0} fusion(f32[8,64]{1,0} %p0), kind=kInput, calls=%r",
     "reduction fusion"),
    ("  %copy.4 = f32[64,8]{0,1} copy(f32[64,8]{1,0} %p)", "copy / transpose"),
    ("  %all-reduce.1 = f32[10]{0} all-reduce(f32[10]{0} %g), to_apply=%add", "collective"),
    ("not an instruction", "other"),
])
def test_categorise_hlo_lines(line, category):
  assert profile_ops.categorise(line) == category


def test_trace_of_a_compiled_step_is_summed_per_op(tmp_path):
  def step(state, batch):
    w = state
    y = jax.lax.conv_general_dilated(batch, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return w - 1e-3 * jnp.mean(y), jnp.sum(y)

  w = jnp.ones((3, 3, 8, 8))
  x = jnp.ones((4, 32, 32, 8))
  compiled = jax.jit(step).lower(w, x).compile()
  summary, state = profile_ops.profile_compiled(compiled, w, x, steps=2,
                                                trace_dir=str(tmp_path / "trace"))
  assert state.shape == w.shape
  assert summary["steps"] == 2 and summary["device_ms_per_step"] > 0
  assert 0 < summary["device_busy"] <= 1.0 + 1e-6
  shares = [c["share"] for c in summary["by_category"]]
  assert abs(sum(shares) - 1.0) < 1e-6
  names = {o["op"] for o in summary["top_ops"]}
  hlo = profile_ops.hlo_categories(compiled.as_text())
  assert names and names <= set(hlo)  # every traced op is an instruction of the program
  assert "convolution" in {c["category"] for c in summary["by_category"]}
