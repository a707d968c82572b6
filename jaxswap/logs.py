"""Where training reports go: JSONL + tensorboardX metrics, a tqdm bar, log set-up.

Only process 0 writes; every other process gets no-op writers, so the loop need not ask.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("jaxswap.train")


class MetricWriter:
  """JSONL + tensorboardX, written by process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(workdir)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def log_memory(compiled) -> None:
  try:
    mem = compiled.memory_analysis()
  except NotImplementedError:
    return
  if mem is not None:
    log.info("step memory: arguments %.1f MiB, outputs %.1f MiB, temporaries %.1f MiB",
             mem.argument_size_in_bytes / 2**20, mem.output_size_in_bytes / 2**20,
             mem.temp_size_in_bytes / 2**20)


class _NoBar:
  def update(self, n):
    pass

  def set_postfix(self, **kw):
    pass

  def close(self):
    pass


def progress(start: int, total: int, enabled: bool):
  if not enabled:
    return _NoBar()
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def setup_logging() -> None:
  """jaxswap's own messages at INFO; libraries (orbax's per-save chatter) at WARNING."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
  root = logging.getLogger("jaxswap")
  root.handlers[:] = [handler]
  root.setLevel(logging.INFO)
  root.propagate = False
