"""Tests of the terminal-only progress bars.

The tests draw on a pseudo-terminal in place of the user's terminal, so they
exercise tqdm's real drawing and `isatty` checks.
"""

import fcntl
import io
import logging
import os
import pty
import select
import struct
import sys
import termios

import pytest

from sutra_jax import progress
from sutra_jax.training import phases
from sutra_jax.training import trainer


def _open_terminal(rows: int, columns: int):
  """Returns (writable stream on a pseudo-terminal, reader, closer)."""
  leader, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ,
              struct.pack("HHHH", rows, columns, 0, 0))
  stream = os.fdopen(follower, "w", encoding="utf-8")

  def read_all() -> str:
    stream.flush()
    chunks = []
    while select.select([leader], [], [], 0.2)[0]:
      chunks.append(os.read(leader, 65536))
    return b"".join(chunks).decode("utf-8")

  def close():
    stream.close()
    os.close(leader)

  return stream, read_all, close


@pytest.fixture
def terminal():
  """Yields (stream, reader) of a 24 x 120 pseudo-terminal."""
  stream, read_all, close = _open_terminal(24, 120)
  yield stream, read_all
  close()


def test_bar_silent_without_terminal():
  stream = io.StringIO()
  handlers = list(logging.getLogger().handlers)

  with progress.ProgressBar(3, desc="work", unit="item",
                            stream=stream) as bar:
    assert not bar.active
    assert logging.getLogger().handlers == handlers
    bar.update(3)

  assert stream.getvalue() == ""


def test_bar_draws_on_terminal(terminal):
  stream, read_all = terminal

  with progress.ProgressBar(4, desc="work", unit="item",
                            stream=stream) as bar:
    assert bar.active
    bar.update(4)

  output = read_all()
  assert "work" in output
  assert "4/4" in output


def test_bar_draws_on_terminal_without_size():
  # A new pseudo-terminal reports 0 rows and 0 columns, as under `script`
  # without a parent terminal.
  stream, read_all, close = _open_terminal(0, 0)
  try:
    with progress.ProgressBar(4, desc="work", unit="item",
                              stream=stream) as bar:
      bar.update(4)
    output = read_all()
  finally:
    close()

  assert "work" in output
  assert "4/4" in output


def test_disabled_bar_stays_silent_on_terminal(terminal):
  stream, read_all = terminal

  with progress.ProgressBar(2, desc="work", unit="item", stream=stream,
                            enabled=False) as bar:
    bar.update(2)

  assert not bar.active
  assert read_all() == ""


def test_log_line_written_above_bar(terminal):
  stream, read_all = terminal
  root = logging.getLogger()
  handler = logging.StreamHandler(stream)
  handler.setFormatter(logging.Formatter("LOG %(message)s"))
  root.addHandler(handler)
  old_level = root.level
  root.setLevel(logging.INFO)
  try:
    with progress.ProgressBar(5, desc="work", unit="item",
                              stream=stream) as bar:
      bar.update(2)
      assert handler not in root.handlers  # Wrapped while the bar is open.
      logging.getLogger("sutra_jax.test").info("step 2 done")
      bar.update(3)
    assert handler in root.handlers
  finally:
    root.removeHandler(handler)
    root.setLevel(old_level)

  output = read_all()
  before, log_line, after = output.partition("LOG step 2 done")
  assert log_line
  # The bar was cleared to the start of its line before the record, so the
  # record starts a line of its own, and the bar was drawn again below it.
  assert before.endswith("\r")
  assert "2/5" in before
  assert "5/5" in after


def test_track_yields_every_item(terminal):
  stream, read_all = terminal

  items = list(progress.track(["a", "b", "c"], desc="letters", unit="item",
                              stream=stream))

  assert items == ["a", "b", "c"]
  assert "3/3" in read_all()


def test_trainer_bar_only_on_terminal(terminal, monkeypatch):
  stream, _ = terminal
  phase = phases.PhaseConfig(name="bar", mixture="unused", num_steps=4,
                             batch_size=8, sequence_length=8)

  monkeypatch.setattr(sys, "stderr", stream)
  with trainer._progress_bar(phase, start_step=1) as bar:
    on_terminal = bar.active
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  with trainer._progress_bar(phase, start_step=1) as bar:
    off_terminal = bar.active

  assert on_terminal
  assert not off_terminal
