"""Eight simulated CPU devices, set before anything imports jax."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, subprocesses included: the many tiny
# training runs of the suite compile the same step, and compiling dominates their time on CPU.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxswap-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import pytest  # noqa: E402  (after XLA_FLAGS on purpose)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """A small synthetic two-identity TFDS dataset (64 px), built once per test session."""
  from jaxswap.data import datasets as data
  path = str(tmp_path_factory.mktemp("tfds"))
  data.build_synthetic(path, num_frames=96, image_size=64, num_shards=2)
  return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic_data_dir):
  """A briefly trained `tiny` run: two real training steps on the synthetic identities."""
  from jaxswap import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("run") / "tiny")
  train.train_and_evaluate(tiny_config(synthetic_data_dir, steps=2), workdir, progress=False)
  return workdir


def tiny_config(data_dir, **overrides):
  """configs/tiny.py shrunk for tests; overrides are dotted keys."""
  from jaxswap.configs import tiny
  config = tiny.get_config()
  config.data.dir = data_dir
  config.data.name = "jaxswap_synthetic"
  config.batch_size = 8
  config.steps = 4
  config.log_every = 2
  config.preview_every = 2
  config.checkpoint_every = 2
  config.preview_faces = 2
  config.compilation_cache = ""  # the session's, from the environment
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
