"""jaxswap.xla_flags: the CPU XLA defaults are set only when absent, supported and on a CPU run.

Every test but the subprocess ones passes its own environment dict: os.environ (with the suite's
XLA_FLAGS from conftest) is never changed.
"""

import os
import subprocess
import sys

import pytest

from jaxswap import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = " ".join(xla_flags.CPU_DEFAULT_FLAGS)


@pytest.fixture
def cpu_host(monkeypatch):
  """A jaxlib in the verified range, no accelerator plugin, backends not yet created."""
  monkeypatch.setattr(xla_flags, "jaxlib_version", lambda: (0, 10, 2))
  monkeypatch.setattr(xla_flags, "installed_accelerators", lambda: [])
  monkeypatch.setattr(xla_flags, "backends_initialised", lambda: False)
  monkeypatch.setattr(xla_flags, "_configured_platforms", lambda: "")
  monkeypatch.setattr(xla_flags, "_last", None)


def test_set_when_absent(cpu_host):
  env = {"PATH": "/bin"}
  decision = xla_flags.apply_cpu_defaults(env)
  assert decision.applied
  assert env["XLA_FLAGS"] == DEFAULTS == "--xla_cpu_experimental_ynn_fusion_type="
  assert xla_flags.last_decision() is decision
  record = xla_flags.describe(env)
  assert record == {"xla_flags": DEFAULTS, "xla_flags_set_by_jaxswap": True,
                    "xla_flags_reason": decision.reason}
  assert "set by jaxswap" in decision.log_line()


@pytest.mark.parametrize("user", ["--xla_force_host_platform_device_count=8", "", "  "])
def test_user_flags_left_alone(cpu_host, user):
  """Any XLA_FLAGS of the user's, even an empty one (the opt-out), is kept byte for byte."""
  env = {"XLA_FLAGS": user}
  decision = xla_flags.apply_cpu_defaults(env)
  assert not decision.applied
  assert env == {"XLA_FLAGS": user}
  assert xla_flags.describe(env)["xla_flags_set_by_jaxswap"] is False


@pytest.mark.parametrize("version", [(0, 9, 9), (0, 11, 0), (1, 0, 0), None])
def test_never_set_on_other_jax_versions(cpu_host, monkeypatch, version):
  monkeypatch.setattr(xla_flags, "jaxlib_version", lambda: version)
  env = {}
  decision = xla_flags.apply_cpu_defaults(env)
  assert not decision.applied and "XLA_FLAGS" not in env
  assert "jaxlib" in decision.reason


@pytest.mark.parametrize("platforms", ["cuda", "gpu", "tpu", "rocm", "cuda,cpu", "TPU"])
def test_not_set_for_accelerator_platforms(cpu_host, platforms):
  env = {"JAX_PLATFORMS": platforms}
  decision = xla_flags.apply_cpu_defaults(env)
  assert not decision.applied and "XLA_FLAGS" not in env
  assert "not cpu" in decision.reason


def test_installed_accelerator_plugin_means_not_cpu(cpu_host, monkeypatch):
  """Without JAX_PLATFORMS, an installed CUDA/TPU plugin may be the default backend: hands off."""
  monkeypatch.setattr(xla_flags, "installed_accelerators", lambda: ["jax-cuda12-plugin"])
  env = {}
  assert not xla_flags.apply_cpu_defaults(env).applied and "XLA_FLAGS" not in env
  env = {"JAX_PLATFORMS": "cpu"}  # ... unless the run asks for the CPU
  assert xla_flags.apply_cpu_defaults(env).applied and env["XLA_FLAGS"] == DEFAULTS


def test_platform_set_in_jax_config(cpu_host, monkeypatch):
  monkeypatch.setattr(xla_flags, "_configured_platforms", lambda: "tpu")
  env = {}
  assert not xla_flags.apply_cpu_defaults(env).applied and "XLA_FLAGS" not in env


def test_not_set_once_backends_exist(cpu_host, monkeypatch):
  """XLA reads XLA_FLAGS once: setting it later would claim a setting that never applied."""
  monkeypatch.setattr(xla_flags, "backends_initialised", lambda: True)
  env = {}
  decision = xla_flags.apply_cpu_defaults(env)
  assert not decision.applied and "XLA_FLAGS" not in env


def test_disabled_by_caller(cpu_host):
  env = {}
  assert not xla_flags.apply_cpu_defaults(env, enabled=False).applied and "XLA_FLAGS" not in env


def test_version_parsing(monkeypatch):
  for raw, want in [("0.10.2", (0, 10, 2)), ("0.10.2.dev20261101", (0, 10, 2)),
                    ("0.10.0rc1", (0, 10, 0))]:
    monkeypatch.setattr(xla_flags.importlib.metadata, "version", lambda _, raw=raw: raw)
    assert xla_flags.jaxlib_version() == want
  assert xla_flags.version_supported((0, 10, 7)) and not xla_flags.version_supported((0, 11))


def _clean_env() -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return env


def test_entry_points_apply_before_the_backend_exists():
  """In a real process: importing train/demo creates no backend, so run()'s hook takes effect."""
  if not xla_flags.version_supported(xla_flags.jaxlib_version()):
    pytest.skip("installed jaxlib is outside the verified range")
  code = (
      "import os, jaxswap.train, jaxswap.demo\n"
      "from jax._src import xla_bridge\n"
      "assert not xla_bridge.backends_are_initialized(), 'importing jaxswap made the backend'\n"
      "from jaxswap import xla_flags\n"
      "d = xla_flags.apply_cpu_defaults()\n"
      "import jax, jax.numpy as jnp\n"
      "assert float(jax.jit(lambda x: (x * 2).sum())(jnp.ones(3))) == 6.0\n"
      "print(d.applied, repr(os.environ['XLA_FLAGS']))\n")
  proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == f"True {DEFAULTS!r}"


def test_this_jaxlib_accepts_the_flags_and_the_probe_rejects_unknown_ones():
  if not xla_flags.version_supported(xla_flags.jaxlib_version()):
    pytest.skip("installed jaxlib is outside the verified range")
  ok, err = xla_flags.flags_accepted(DEFAULTS)
  assert ok, err
  ok, _ = xla_flags.flags_accepted("--xla_jaxswap_no_such_flag=1")
  assert not ok
