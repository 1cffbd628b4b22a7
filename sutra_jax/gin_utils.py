"""Parsing gin files and bindings with clear errors."""

import os
import pathlib
from typing import Sequence

import gin

from sutra_jax.errors import ConfigError

# The repository's gin_configs/ folder, found next to the package in a source
# checkout or an editable install.
GIN_CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"


def search_path() -> list[str]:
  """Returns the folders searched for relative gin file names, in order."""
  return [os.getcwd(), str(GIN_CONFIG_DIR)]


def resolve_gin_file(name: str) -> str:
  """Finds a gin file by path or relative to the search path.

  Raises:
    ConfigError: the file exists nowhere on the search path.
  """
  candidates = [pathlib.Path(name)]
  if not os.path.isabs(name):
    candidates += [pathlib.Path(d) / name for d in search_path()[1:]]
    if name.startswith("gin_configs/"):
      candidates.append(GIN_CONFIG_DIR / name[len("gin_configs/"):])
  for path in candidates:
    if path.is_file():
      return str(path)
  raise ConfigError(f"gin file not found: {name!r} (searched "
                    f"{', '.join(search_path())}); check the --gin_file path")


def parse_config(gin_files: Sequence[str], bindings: Sequence[str],
                 finalize: bool = True) -> None:
  """Parses gin files and bindings, turning gin's errors into ConfigError.

  Args:
    gin_files: file names, absolute or relative to the search path.
    bindings: gin binding strings such as `"train.steps = 10"`.
    finalize: lock the config afterwards.

  Raises:
    ConfigError: a missing file, an unknown configurable or parameter, or a
      binding that does not parse.
  """
  # Register every configurable before gin reads the bindings.
  import sutra_jax.configurables  # pylint: disable=g-import-not-at-top,unused-import

  for directory in search_path():
    gin.add_config_file_search_path(directory)
  files = [resolve_gin_file(f) for f in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, list(bindings),
                                        finalize_config=finalize)
  except (ValueError, KeyError, SyntaxError, ImportError, IOError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ConfigError(f"invalid gin configuration: {message}; check the "
                      "--gin_file and --gin_bindings values") from None


def operative_config() -> str:
  """Returns the gin config that the run actually used."""
  return gin.operative_config_str()
