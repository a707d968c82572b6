"""Running an iterator ahead in a background thread (decoding, I/O, host-to-device copies)."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

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
