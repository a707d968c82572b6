"""Background threads: an iterator run ahead (decoding, host-to-device copies), ordered writing."""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def background(items: Iterable[T], depth: int = 2, name: str = "jaxswap-prefetch") -> Iterator[T]:
  """Yields `items`, produced `depth` ahead by a daemon thread.

  An exception in the producer is raised in the consumer. When the consumer stops early, the
  producer stops too, and a generator producer is closed (its `finally` blocks run).
  """
  q: queue.Queue = queue.Queue(maxsize=max(1, depth))
  done = object()
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    it = iter(items)
    try:
      for item in it:
        if not put(item):
          return
    except BaseException as e:  # surfaced in the consumer's thread
      put(e)
      return
    finally:
      close = getattr(it, "close", None)
      if close is not None:
        close()
    put(done)

  thread = threading.Thread(target=produce, daemon=True, name=name)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


class OrderedWriter:
  """A writer thread: takes futures of frames in order, waits for each, writes it to the sink.

  A bounded queue gives back-pressure; an error in the thread is re-raised by `put`/`close`.
  """

  def __init__(self, sink, depth: int = 32, on_write: Callable[[float], None] | None = None):
    self.sink, self.on_write = sink, on_write
    self._q: queue.Queue = queue.Queue(maxsize=depth)
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, daemon=True, name="jaxswap-writer")
    self._thread.start()

  def _run(self) -> None:
    while True:
      item = self._q.get()
      if item is None:
        return
      if self._error is not None:
        continue  # drain so `put` never blocks forever
      try:
        rgb = item.result() if hasattr(item, "result") else item
        t0 = time.perf_counter()
        self.sink.write(rgb)
        if self.on_write is not None:
          self.on_write(time.perf_counter() - t0)
      except BaseException as e:  # pylint: disable=broad-except
        self._error = e

  def put(self, item) -> None:
    if self._error is not None:
      raise self._error
    self._q.put(item)

  def abort(self) -> None:
    """Stops after the frame being written; drops the rest (the caller removes the output)."""
    self._error = self._error or RuntimeError("aborted")
    while self._thread.is_alive():
      try:
        self._q.put(None, timeout=0.1)
        break
      except queue.Full:
        continue
    self._thread.join()

  def close(self) -> None:
    """Waits for every queued frame; re-raises the thread's error."""
    self._q.put(None)
    self._thread.join()
    if self._error is not None:
      raise self._error
