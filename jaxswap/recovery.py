"""What a resumed run must still match, how it stops when asked to, and GPU determinism.

A resumed run reproduces the uninterrupted one only if nothing that shapes the numbers changed:
the config (apart from cadence fields) and the dataset. Each checkpoint records both; on resume
they are compared and a difference is refused unless the user allows it (and then logged as the
end of exact resume).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
from typing import Any, Callable

import jax
import ml_collections

from jaxswap.errors import JaxswapError

log = logging.getLogger("jaxswap.recovery")

# Fields that cannot change the parameters a run ends with: how often it logs, previews and
# saves, how long it runs, where the cache is, how fast the input is read, and this module's own
# switches. Everything else (seed, batch, data, augmentation, model, loss, optimiser, dtype,
# determinism) breaks exact resume.
RESULT_NEUTRAL = frozenset({
    "steps", "log_every", "preview_every", "preview_faces", "checkpoint_every",
    "keep_checkpoints", "profile_steps", "compilation_cache", "resume", "init_from",
    "init_from_parts",
    "data.prefetch", "data.workers", "data.cache_mb", "data.dir", "data.skip_corrupt",
})


class ConfigDriftError(JaxswapError):
  """A resumed run whose config or dataset differs from the one that wrote the checkpoint."""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_differences(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
  """(differences that break exact resume, fields new since the record), as readable lines.

  A field missing from the record is a feature added to jaxswap since; it is listed, not refused.
  """
  old, new = flatten(recorded), flatten(current)
  breaking, added = [], []
  for key in sorted(set(old) | set(new)):
    if key in RESULT_NEUTRAL:
      continue
    if key not in old:
      added.append(f"{key} = {new[key]!r}")
    elif key not in new:
      breaking.append(f"{key}: {old[key]!r} -> (removed)")
    elif old[key] != new[key]:
      breaking.append(f"{key}: {old[key]!r} -> {new[key]!r}")
  return breaking, added


def dataset_dir(data_dir: str, name: str) -> str | None:
  """The TFDS version folder a loader of `name` reads (the newest version unless pinned)."""
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  base, _, version = name.partition(":")
  folder = os.path.join(root, base)
  if version:
    return os.path.join(folder, version)
  try:
    versions = [v for v in os.listdir(folder) if v.replace(".", "").isdigit()]
  except OSError:
    return None
  if not versions:
    return None
  return os.path.join(folder, max(versions, key=lambda v: tuple(int(p) for p in v.split("."))))


def dataset_fingerprint(data_dir: str, name: str) -> dict:
  """What identifies a built dataset cheaply: its info and metadata files (hashed), and the names
  and sizes of its array_record files. A rebuild from other videos or options changes it; moving
  the folder does not.
  """
  folder = dataset_dir(data_dir, name)
  if folder is None or not os.path.isdir(folder):
    return {}
  digest = hashlib.sha256()
  for meta in ("dataset_info.json", "metadata.json"):
    path = os.path.join(folder, meta)
    if os.path.isfile(path):
      with open(path, "rb") as f:
        digest.update(meta.encode() + b"\0" + f.read())
  files = {n: os.path.getsize(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
           if ".array_record" in n}
  return {"info_sha256": digest.hexdigest(), "files": files}


def fingerprint_differences(old: dict, new: dict) -> list[str]:
  if not old or not new or old == new:
    return []
  lines = []
  if old.get("info_sha256") != new.get("info_sha256"):
    lines.append("dataset: dataset_info.json/metadata.json differ (rebuilt with other inputs or "
                 "options)")
  of, nf = old.get("files", {}), new.get("files", {})
  changed = [n for n in sorted(set(of) | set(nf)) if of.get(n) != nf.get(n)]
  if changed:
    n = changed[0]
    lines.append(f"dataset: {len(changed)} array_record file(s) differ, e.g. {n}: "
                 f"{of.get(n, 'absent')} -> {nf.get(n, 'absent')} bytes")
  return lines


def check_resume(step: int, saved: dict, current: dict, *, allow: bool) -> None:
  """Refuses a resume whose config or dataset differ from the checkpoint's, unless `allow`.

  `saved` and `current` are checkpoint metas (see `record`).
  """
  if saved.get("config") is None:
    log.warning("checkpoint step %d records no config: cannot check it for changes", step)
    return
  processes = current.get("process_count")
  breaking, added = config_differences(
      _effective(saved["config"], saved.get("process_count", processes)),
      _effective(current["config"], processes))
  breaking += fingerprint_differences(saved.get("dataset", {}), current.get("dataset", {}))
  if added:
    log.info("config fields new since step %d was written: %s", step, "; ".join(added))
  if not breaking:
    return
  listing = "\n  ".join(breaking)
  if not allow:
    raise ConfigDriftError(
        f"the config or dataset differs from the one that wrote checkpoint step {step}:\n  "
        f"{listing}\nResuming would no longer reproduce the uninterrupted run. Rerun with the "
        "original settings, use a fresh --workdir, or pass --allow-config-change to continue "
        "anyway.")
  log.warning("--allow-config-change: resuming step %d with changes; from here on the run is "
              "no longer an exact continuation:\n  %s", step, listing)


def resume(ckpt, init: Callable[[], Any], meta: dict, *, strict: bool, allow_config_change: bool,
           fresh: Callable[[], Any] | None = None) -> Any:
  """The state of the newest intact checkpoint in `ckpt` (damaged ones moved aside), checked
  against this run's `meta` (architecture, config, dataset); `fresh()` (default `init()`) if
  there is none. `init` gives the state's shapes and shardings."""
  def same_network(step: int, saved: dict) -> None:
    theirs, ours = dict(saved.get("architecture") or {}), dict(meta["architecture"])
    disc = theirs.pop("code_discriminator", False), ours.pop("code_discriminator", False)
    if theirs == ours and disc[0] != disc[1]:
      raise JaxswapError(
          f"checkpoint {ckpt.directory}/{step} was trained with loss.true_face "
          f"{'on' if disc[0] else 'off'} and this run has it {'on' if disc[1] else 'off'}: its "
          "code discriminator is part of the saved state. Keep the setting, or start a fresh "
          "--workdir with --config.init_from=<this run> to carry the parameters over.")
    if saved.get("architecture") != meta["architecture"]:
      raise JaxswapError(f"checkpoint {ckpt.directory}/{step} was written by "
                         f"{saved.get('architecture')}, not {meta['architecture']}")

  found = ckpt.restore_latest_valid(jax.eval_shape(init), strict=strict, check_meta=same_network)
  if found is None:
    return (fresh or init)()
  step, state, saved = found
  check_resume(step, saved, meta, allow=allow_config_change)
  log.info("resumed from step %d", step)
  return state


# The fields that fix the parameter shapes: a workdir never resumes with different ones, not even
# with --allow-config-change.
ARCHITECTURE_KEYS = ("model.name", "model.learn_mask", "image_size")


def field(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def architecture(config) -> dict:
  return {k: field(config, k) for k in ARCHITECTURE_KEYS}


def check_workdir(config, workdir: str) -> None:
  """Refuses (before writing anything) a workdir that belongs to a different network."""
  path = os.path.join(workdir, "config.json")
  if os.path.isfile(path):
    try:
      with open(path) as f:
        saved = ml_collections.ConfigDict(json.load(f))
      old = {k: field(saved, k) for k in ARCHITECTURE_KEYS}
    except (ValueError, KeyError) as e:
      raise JaxswapError(f"{path} is not a jaxswap config ({e}); use a fresh --workdir") from None
    new = architecture(config)
    if old != new:
      diff = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if old[k] != new[k])
      raise JaxswapError(f"--workdir={workdir} holds a run of a different architecture ({diff}); "
                         "use a fresh --workdir or the original config")


# --------------------------------------------------------------------------------------------
# Stopping on request (Ctrl-C, SIGTERM from a scheduler or a TPU preemption notice)
# --------------------------------------------------------------------------------------------


class StopRequest:
  """Set by SIGINT/SIGTERM; the loop checks it between steps, then saves and returns.

  A signal never interrupts the loop mid-step or mid-save: further signals while stopping are
  acknowledged and ignored, so a save in progress is never torn (a kill -9 still works, and
  leaves at worst a temporary folder that the next run removes).
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signal: str | None = None
    self.saving = False
    self._previous: dict = {}

  @classmethod
  def install(cls) -> "StopRequest":
    """A request wired to SIGINT/SIGTERM (main thread only; elsewhere signals keep theirs)."""
    request = cls()
    if threading.current_thread() is threading.main_thread():
      request._previous = {s: signal.signal(s, request._handle) for s in cls.SIGNALS}
    return request

  def uninstall(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def __bool__(self) -> bool:
    return self.signal is not None

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal is None:
      self.signal = name
      log.warning("%s: stopping after this step and saving a checkpoint", name)
    else:
      log.warning("%s again: %s; please wait", name,
                  "saving the checkpoint" if self.saving else "already stopping")


# --------------------------------------------------------------------------------------------
# Determinism on GPU
# --------------------------------------------------------------------------------------------

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


def wants_deterministic_flag(deterministic: bool, platforms: str, gpu_plugin: bool) -> bool:
  """Whether XLA's deterministic-ops flag must be set: on, and the backend will be a GPU.

  `platforms` is JAX_PLATFORMS ("" = jax's choice, which is the GPU when a GPU plugin is
  installed); CPU and TPU reductions are already deterministic, so the flag is left out there.
  """
  if not deterministic:
    return False
  wanted = [p.strip().lower() for p in platforms.split(",") if p.strip()]
  if wanted:
    return wanted[0] in ("cuda", "gpu", "rocm")
  return gpu_plugin


def with_flag(xla_flags: str, flag: str) -> str:
  name = flag.split("=")[0]
  kept = [f for f in xla_flags.split() if f.split("=")[0] != name]
  return " ".join(kept + [flag])


def _gpu_plugin_installed() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  for mod in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
              "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13"):
    try:
      if importlib.util.find_spec(mod) is not None:
        return True
    except (ImportError, ValueError):
      continue
  return False


def apply_determinism(deterministic: bool) -> bool:
  """Sets the deterministic-ops flag in XLA_FLAGS if wanted; must run before jax picks a backend.

  Returns whether the flag is in effect. Called after initialisation (e.g. from a notebook that
  already ran jax code) it can only warn.
  """
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if not wants_deterministic_flag(deterministic, platforms, _gpu_plugin_installed()):
    return False
  flags = os.environ.get("XLA_FLAGS", "")
  if DETERMINISTIC_FLAG in flags.split():
    return True
  if _backends_initialized():
    log.warning("config.deterministic: jax already started, so %s cannot be set; resume on GPU "
                "is exact only up to floating-point reordering. Set it in XLA_FLAGS yourself.",
                DETERMINISTIC_FLAG)
    return False
  os.environ["XLA_FLAGS"] = with_flag(flags, DETERMINISTIC_FLAG)
  return True


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  check = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(check()) if check else bool(getattr(xla_bridge, "_backends", {}))


def record(config: dict, fingerprint: dict, process_count: int) -> dict:
  """The part of a checkpoint's meta that check_resume compares against (JSON-safe)."""
  return {"config": json.loads(json.dumps(config)), "dataset": fingerprint,
          "process_count": process_count}


def _effective(config: dict, process_count: int | None) -> dict:
  """data.shards=0 means "one part per process": the data order depends on the process count."""
  config = json.loads(json.dumps(config))
  data = config.get("data", {})
  if not data.get("shards") and process_count:
    data["shards"] = process_count
  return config
