"""The one module that talks to orbax.

A checkpoint holds two items: `state` (the TrainState pytree, sharded as it lives on the mesh) and
`meta` (JSON: what architecture wrote it), so a workdir is never resumed with a different network.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxswap.errors import JaxswapError


class Checkpointer:
  """Async saves every `every` steps, the last `keep` kept, restore of the latest on start."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, every), max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def meta(self, step: int) -> dict:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`."""
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except (ValueError, KeyError, TypeError) as e:
      raise JaxswapError(f"checkpoint {self.directory}/{step} does not match this model: {e}") \
          from None
    return restored["state"]

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the parameters (inference): the optimizer state is never read."""
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_params)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item={"params": target},
              restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
              partial_restore=True)))
    except (ValueError, KeyError, TypeError) as e:
      raise JaxswapError(f"checkpoint {self.directory}/{step} does not match this model: {e}") \
          from None
    return restored["state"]["params"]

  def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
