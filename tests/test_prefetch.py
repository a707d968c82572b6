"""The background iterator behind the loader and the video reader."""

import threading

import pytest

from jaxswap.prefetch import background


def test_yields_everything_in_order():
  assert list(background(range(100), depth=3)) == list(range(100))


def test_producer_error_reaches_the_consumer():
  def items():
    yield 1
    raise ValueError("bad frame 2")

  it = background(items())
  assert next(it) == 1
  with pytest.raises(ValueError, match="bad frame 2"):
    next(it)


def test_stopping_early_closes_the_producer():
  closed = threading.Event()

  def items():
    try:
      for i in range(10**9):
        yield i
    finally:
      closed.set()

  it = background(items(), depth=2)
  assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
  it.close()
  assert closed.wait(5.0)
