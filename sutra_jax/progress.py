"""Progress bars for long work, drawn only on a terminal.

A bar appears only when its stream is a terminal, so output that goes to a
file, a pipe or a notebook (CI logs, pod workers, Jupyter) stays exactly as
it was. While a bar is open, records of the root logger's handlers (absl's
handler among them) are written above the bar, so a log line never shares a
terminal line with it.
"""

import logging
import os
import sys
from typing import Iterable, Iterator, TextIO, TypeVar

import tqdm

T = TypeVar("T")
# (columns, rows) assumed for a terminal that reports no size.
_DEFAULT_SIZE = (80, 24)


def is_terminal(stream: TextIO | None) -> bool:
  """Returns whether `stream` is an open terminal."""
  isatty = getattr(stream, "isatty", None)
  if isatty is None:
    return False
  try:
    return bool(isatty())
  except ValueError:  # A closed stream.
    return False


def _terminal_size(stream: TextIO) -> tuple[int, int]:
  """Returns (columns, rows) of the terminal of `stream`, 0 when unknown."""
  try:
    return tuple(os.get_terminal_size(stream.fileno()))
  except (AttributeError, OSError, ValueError):
    return 0, 0


class _AboveBarHandler(logging.Handler):
  """Passes records to `handler`, clearing the bars of `stream` meanwhile."""

  def __init__(self, handler: logging.Handler, stream: TextIO):
    super().__init__(level=handler.level)
    self.wrapped = handler
    self._stream = stream

  def handle(self, record: logging.LogRecord) -> bool:
    with tqdm.tqdm.external_write_mode(file=self._stream):
      return self.wrapped.handle(record)

  def emit(self, record: logging.LogRecord) -> None:
    self.wrapped.emit(record)


def _wrap_root_handlers(stream: TextIO) -> list[tuple[logging.Handler,
                                                       logging.Handler]]:
  """Routes the root logger's handlers through `_AboveBarHandler`.

  Returns:
    (original, wrapper) pairs, for `_unwrap_root_handlers`.
  """
  root = logging.getLogger()
  pairs = [(h, _AboveBarHandler(h, stream)) for h in list(root.handlers)]
  for original, wrapper in pairs:
    root.removeHandler(original)
    root.addHandler(wrapper)
  return pairs


def _unwrap_root_handlers(pairs) -> None:
  root = logging.getLogger()
  for original, wrapper in pairs:
    root.removeHandler(wrapper)
    root.addHandler(original)


class ProgressBar:
  """A tqdm bar that is drawn only when its stream is a terminal.

  Use it as a context manager, or call `close` when the work ends.
  """

  def __init__(self, total: int | None = None, *, desc: str, unit: str,
               initial: int = 0, enabled: bool = True,
               stream: TextIO | None = None):
    """Opens the bar.

    Args:
      total: the count at completion; None draws a counter without a bar.
      desc: the label in front of the bar.
      unit: the name of one counted item, such as "step".
      initial: the count to start from, for resumed work.
      enabled: False never draws, for callers that draw on one process
        only.
      stream: where the bar is drawn; None means `sys.stderr` at call time.
    """
    stream = stream if stream is not None else sys.stderr
    self.active = enabled and is_terminal(stream)
    # A terminal of unknown size (a new pseudo-terminal, `script` without a
    # parent terminal) reports 0 columns and 0 rows, in which tqdm (4.70)
    # draws nothing, so such a terminal gets a fixed size.
    known_size = self.active and min(_terminal_size(stream)) > 0
    self._bar = tqdm.tqdm(
        total=total, initial=initial, desc=desc, unit=unit, file=stream,
        disable=not self.active, dynamic_ncols=known_size,
        ncols=None if known_size else _DEFAULT_SIZE[0],
        nrows=None if known_size else _DEFAULT_SIZE[1])
    self._handlers = _wrap_root_handlers(stream) if self.active else []

  def update(self, count: int = 1) -> None:
    self._bar.update(count)

  def set_postfix(self, **values) -> None:
    """Shows `name=value` pairs after the bar, such as the latest loss."""
    self._bar.set_postfix(values)

  def close(self) -> None:
    """Draws the final state and restores the log handlers, once."""
    _unwrap_root_handlers(self._handlers)
    self._handlers = []
    self._bar.close()

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def track(iterable: Iterable[T], *, desc: str, unit: str,
          total: int | None = None,
          stream: TextIO | None = None) -> Iterator[T]:
  """Yields the items of `iterable` while counting them on a progress bar.

  Args:
    iterable: the items.
    desc: the label in front of the bar.
    unit: the name of one item.
    total: the number of items; None takes `len(iterable)` when it has one.
    stream: where the bar is drawn; None means `sys.stderr`.
  """
  if total is None and hasattr(iterable, "__len__"):
    total = len(iterable)
  with ProgressBar(total, desc=desc, unit=unit, stream=stream) as bar:
    for item in iterable:
      yield item
      bar.update(1)
