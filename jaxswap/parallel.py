"""The device mesh, multi-host start-up and global batch assembly.

One 1-D mesh over every device of every process, axis "data": parameters are replicated (`P()`),
batches split along their leading axis (`P("data")`). The same code runs on 1 CPU, 8 GPUs or a pod.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxswap.errors import JaxswapError

DATA_AXIS = "data"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> None:
  """Joins a multi-process run.

  With explicit flags, connects to `coordinator` (HOST:PORT, process 0's address). With `auto`,
  lets `jax.distributed.initialize()` detect TPU pods / SLURM / Open MPI from the environment.
  Without either, the run is single-process and nothing happens.
  """
  if coordinator or num_processes or process_id is not None:
    if not (coordinator and num_processes and process_id is not None):
      raise JaxswapError("--coordinator, --num_processes and --process_id must be given together")
    if not 0 <= process_id < num_processes:
      raise JaxswapError(f"--process_id={process_id} is outside [0, {num_processes})")
    # Cross-process collectives of the CPU backend go through gloo (no effect on GPU/TPU). No
    # jax call that starts a backend may come before initialize().
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise JaxswapError(f"--config.batch_size={batch_size} (per identity) must be divisible by "
                       f"the {n} devices of the mesh")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Stitches every process's host-local slice into one array sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
