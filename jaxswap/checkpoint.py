"""The one module that talks to orbax.

A checkpoint holds two items: `state` (the TrainState pytree, sharded as it lives on the mesh) and
`meta` (JSON: what architecture and config wrote it, plus a checksum of every array), so a workdir
is never resumed with a different network and a damaged step is never trusted.

What survives what: a save is written to `STEP.orbax-checkpoint-tmp` and renamed when complete, so
a kill leaves at worst a temporary folder, which the next training run removes before saving. A
step whose files were damaged afterwards (a full disk, a crashed copy) fails validation on
restore; it is moved to `corrupt-STEP/` (never deleted) and the newest intact step is used.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxswap.errors import JaxswapError, write_failure

log = logging.getLogger("jaxswap.checkpoint")

TMP_MARK = ".orbax-checkpoint-tmp"
CORRUPT_PREFIX = "corrupt-"
# A save that has not finished in this long is broken (orbax's default waits 20 minutes).
SAVE_TIMEOUT_S = 600


class CheckpointError(JaxswapError):
  """A checkpoint could not be written or no intact one could be read."""


# --------------------------------------------------------------------------------------------
# Checksums: what was saved is what is restored
# --------------------------------------------------------------------------------------------


@jax.jit
def _leaf_sums(tree) -> list[jax.Array]:
  """Position-weighted uint32 sum of every leaf's bits: a bit flip or a swapped block changes it."""
  out = []
  for x in jax.tree_util.tree_leaves(tree):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    u = jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).ravel()
    weights = jnp.arange(u.size, dtype=jnp.uint32) * 2 + 1
    out.append(jnp.sum(u * weights, dtype=jnp.uint32))
  return out


def checksums(tree) -> dict[str, int]:
  """{leaf path: checksum} of a (replicated) pytree of device arrays."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  sums = [int(np.asarray(s.addressable_data(0))) for s in _leaf_sums(tree)]
  return dict(zip(paths, sums))


# --------------------------------------------------------------------------------------------
# The checkpointer
# --------------------------------------------------------------------------------------------


class Checkpointer:
  """Async saves every `every` steps, the last `keep` kept, validated restore with fallback.

  `writer=False` (inference) opens the folder read-only: it neither cleans up nor moves anything,
  since a training run may be writing into it at the same time.
  """

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True,
               writer: bool = True):
    self.directory = os.path.abspath(directory)
    self.writer = writer
    _quiet_orbax()
    if writer:
      leftovers = sorted(n for n in _listdir(self.directory) if TMP_MARK in n)
      if leftovers:
        log.warning("removing unfinished checkpoint saves of an earlier run: %s",
                    ", ".join(leftovers))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, every) if writer else 0, max_to_keep=keep if writer else None,
        create=writer,
        read_only=not writer, cleanup_tmp_directories=writer,
        enable_async_checkpointing=async_save,
        # Directories created in save() itself: a failure there is raised at once, instead of a
        # background thread waiting for a signal that never comes (a hang at exit).
        async_options=ocp.AsyncOptions(timeout_secs=SAVE_TIMEOUT_S,
                                       create_directories_asynchronously=False))
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "meta"))
    except OSError as e:
      raise write_failure(self.directory, e, None, "checkpoint folder") from None
    self._need = None  # bytes of the last save, for "free space needed"
    self._in_flight: int | None = None  # step of the async save not yet known to be on disk

  # Reading -----------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def meta(self, step: int) -> dict:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def _check_layout(self, step: int, target: Any) -> None:
    """Refuses (as a user error, not damage) a step whose arrays have other shapes than `target`.

    Raises ValueError-free: unreadable metadata surfaces as damage in the caller.
    """
    md = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / "state")
    stored = sorted((tuple(m.shape), str(np.dtype(m.dtype)))
                    for m in jax.tree_util.tree_leaves(getattr(md, "tree", md)))
    wanted = sorted((tuple(t.shape), str(np.dtype(t.dtype)))
                    for t in jax.tree_util.tree_leaves(target))
    if stored != wanted:
      raise JaxswapError(f"checkpoint {self.directory}/{step} does not match this model "
                         f"({len(stored)} stored arrays vs {len(wanted)} in the model, or other "
                         "shapes); use the config it was trained with or a fresh --workdir")

  def restore(self, step: int, abstract_state: Any, meta: dict | None = None) -> Any:
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`, validated.

    JaxswapError: the step belongs to another model. DamagedCheckpoint: its files are damaged.
    """
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      self._check_layout(step, target)
    except JaxswapError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (unreadable metadata: damage)
      raise DamagedCheckpoint(step, f"array metadata unreadable: {_short(e)}") from None
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as e:  # pylint: disable=broad-except  (TensorStore raises many kinds)
      raise DamagedCheckpoint(step, _short(e)) from None
    state = restored["state"]
    expected = (meta or {}).get("checksums")
    if expected:
      got = checksums(state)
      bad = [k for k, v in expected.items() if got.get(k) != v]
      if bad:
        raise DamagedCheckpoint(step, f"checksum mismatch in {len(bad)} array(s), e.g. {bad[0]}")
    return state

  def restore_latest_valid(self, abstract_state: Any, *, strict: bool = False,
                           check_meta: Callable[[int, dict], None] | None = None
                           ) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest intact step, or None if there is no checkpoint.

    A damaged step is moved to `corrupt-STEP/` with a warning and the next older one tried;
    `strict` refuses instead. `check_meta` may raise JaxswapError (e.g. another architecture):
    that is the user's mistake, not damage, so it propagates and nothing is moved.
    """
    tried = []
    for step in reversed(self.all_steps()):
      try:
        try:
          meta = self.meta(step)
        except Exception as e:  # pylint: disable=broad-except
          raise DamagedCheckpoint(step, f"meta unreadable: {_short(e)}") from None
        if check_meta is not None:
          check_meta(step, meta)
        return step, self.restore(step, abstract_state, meta), meta
      except DamagedCheckpoint as e:
        tried.append(f"{step} ({e.reason})")
        if strict:
          raise CheckpointError(
              f"checkpoint step {step} in {self.directory} is damaged: {e.reason}. "
              "--config.resume=strict refuses to fall back; rerun without it to move the step "
              f"aside (to {CORRUPT_PREFIX}{step}/) and resume from the newest intact step.") \
              from None
        moved = self.quarantine(step)
        log.warning("checkpoint step %d is damaged (%s); moved to %s, trying an older step",
                    step, e.reason, moved)
    if tried:
      raise CheckpointError(
          f"no intact checkpoint in {self.directory}: tried steps {'; '.join(tried)}. They "
          f"were moved to {CORRUPT_PREFIX}STEP/. Copy an intact step back from a backup, or "
          "rerun to start from step 0 (the damaged steps are kept).")
    return None

  def quarantine(self, step: int) -> str:
    """Moves a damaged step out of orbax's sight, never deleting it; returns the new path."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"{CORRUPT_PREFIX}{step}")
    n = 1
    while os.path.exists(dst):
      n += 1
      dst = os.path.join(self.directory, f"{CORRUPT_PREFIX}{step}-{n}")
    if jax.process_index() == 0:
      os.replace(src, dst)
    self._manager.reload()
    return dst

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
      if "does not match" in str(e) or isinstance(e, (KeyError, TypeError)):
        raise JaxswapError(f"checkpoint {self.directory}/{step} does not match this model: "
                           f"{_short(e)}") from None
      raise DamagedCheckpoint(step, _short(e)) from None
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpoint(step, _short(e)) from None
    return restored["state"]["params"]

  # Writing -----------------------------------------------------------------------------------

  def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    """Starts a save (async); a disk that is full or unwritable is a CheckpointError."""
    if not force and not self._manager.should_save(step):
      return False
    self.wait()  # a failure of the previous save is reported as that step's, not this one's
    meta = dict(meta, checksums=checksums(state))
    self._need = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
    self._in_flight = step
    try:
      saved = self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(step, e) from None
    if not saved:
      self._in_flight = None
    return saved

  def wait(self) -> None:
    """Blocks until the running save is on disk; its failure is a CheckpointError."""
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(self._in_flight, e) from None
    self._in_flight = None

  def close(self, raise_errors: bool = True) -> None:
    """Waits for the running save, then releases orbax's threads; never hangs on a failed save."""
    try:
      self.wait()
    except CheckpointError as e:
      if raise_errors:
        raise
      log.warning("%s", e)
    finally:
      try:
        self._manager.close()
      except Exception as e:  # pylint: disable=broad-except  (already reported by wait())
        log.debug("closing the checkpoint manager: %s", e)

  def _failure(self, step: int | None, exc: BaseException) -> CheckpointError:
    """The error to report; the failed save's temporary folder is removed to give the space back."""
    self._in_flight = None
    if step is not None and self.writer and jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.directory, f"{step}{TMP_MARK}"), ignore_errors=True)
    self._manager.reload()
    kept = [s for s in self.all_steps() if s != step]
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    err = write_failure(where, exc, self._need, "checkpoint")
    last = f"step {kept[-1]}" if kept else "none"
    return CheckpointError(f"{err} The last good checkpoint ({last}) is intact; rerunning "
                           "resumes from it.")


class DamagedCheckpoint(Exception):
  """A step whose files cannot be read back as they were written."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"step {step}: {reason}")
    self.step, self.reason = step, reason


def _short(e: BaseException) -> str:
  """First line of the innermost cause: TensorStore's own words ("Requested byte range ... is not
  valid for value of size ..."), not orbax's wrapper."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  return (lines[0] if lines else type(e).__name__)[:300]


_LATE_IO_ERRORS = ("Event loop is closed", "Encountered error while reading array index")


class _OrbaxErrors(logging.Filter):
  """Drops orbax's own error logs (tracebacks from its background threads): every failure they
  describe reaches the caller as one CheckpointError, which is what the user should read."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if record.levelno >= logging.ERROR:
      return False
    return not str(record.msg).startswith("Given directory is read only")  # we asked for it


def _from_orbax(exc: BaseException | None) -> bool:
  """Whether an exception (or one it chains from) was raised inside orbax's code."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    tb = exc.__traceback__
    while tb is not None:
      if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
        return True
      tb = tb.tb_next
    exc = exc.__cause__ or exc.__context__
  return False


class _BackgroundEchoes(logging.Filter):
  """Drops asyncio's "exception was never retrieved" logs of orbax reads left in flight."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and _from_orbax(record.exc_info[1]))


def _quiet_orbax() -> None:
  """A failed read or write leaves TensorStore operations in flight; when they finish, their
  callbacks find orbax's event loop closed and print tracebacks (at random moments, often at
  exit), and orbax logs each failing thread. The failure is reported once, by us; those echoes
  are dropped. Any other error still prints."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _OrbaxErrors) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxErrors())
  asyncio_logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _BackgroundEchoes) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_BackgroundEchoes())
  if getattr(sys.excepthook, "_jaxswap", False):
    return
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
  thread_hook = threading.excepthook

  def late(exc) -> bool:
    return exc is not None and any(m in str(exc) for m in _LATE_IO_ERRORS)

  def on_exception(kind, value, tb):
    if not late(value):
      excepthook(kind, value, tb)

  def on_unraisable(info):
    if not late(info.exc_value):
      unraisablehook(info)

  def on_thread_exception(args):
    if not (late(args.exc_value) or _from_orbax(args.exc_value)):
      thread_hook(args)

  on_exception._jaxswap = True  # type: ignore[attr-defined]
  sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
  threading.excepthook = on_thread_exception


def _listdir(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []
