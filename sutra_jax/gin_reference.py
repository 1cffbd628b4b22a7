r"""Generates the Markdown reference of every sutra_jax gin configurable.

  python -m sutra_jax.gin_reference --output docs/gin_reference.md

The reference has one table per configurable registered by the modules that
`sutra_jax.configurables` imports: each parameter with its default and the
description from the `Args:` or `Attributes:` section of the docstring
(Google style). tests/docs/gin_reference_test.py checks that the checked-in
file matches the code, so rerun the command after changing a configurable.
"""

import argparse
import dataclasses
import inspect
import re
from typing import Callable, Sequence

import gin
from gin import config as gin_config

from sutra_jax import configurables  # pylint: disable=unused-import

GENERATE_COMMAND = ("python -m sutra_jax.gin_reference "
                    "--output docs/gin_reference.md")
_SECTIONS = ("Args", "Attributes")
# `name: text` or `name (type): text` at the start of a section entry.
_ENTRY = re.compile(r"^\*{0,2}(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")


@dataclasses.dataclass(frozen=True)
class Parameter:
  """One row of a configurable's table."""

  name: str
  default: str
  description: str


def sutra_configurables() -> list[tuple[str, Callable]]:
  """Returns (selector, function or class) of each sutra_jax configurable.

  Sorted by selector. Only configurables defined in the modules that
  `sutra_jax.configurables` imports count. That leaves out gin's own
  (`gin.macro`, ...) and any that another imported module registers, so the
  output does not depend on what else the process imported.
  """
  modules = {value.__name__ for value in vars(configurables).values()
             if inspect.ismodule(value)}
  # NOTE: gin-config 0.5.0 has no public way to list registered
  # configurables, so this reads its private registry.
  found = []
  for selector, configurable in gin_config._REGISTRY.items():  # pylint: disable=protected-access
    if configurable.module in modules:
      found.append((selector, configurable.wrapped))
  return sorted(found)


def parse_docstring_entries(docstring: str | None) -> dict[str, str]:
  """Parses the `Args:` and `Attributes:` entries of a Google-style docstring.

  Args:
    docstring: the docstring, possibly None.

  Returns:
    {name: description}, each description joined into one line. Leading
    asterisks (`**overrides`) are dropped from names.
  """
  entries: dict[str, str] = {}
  lines = inspect.cleandoc(docstring or "").splitlines()
  index = 0
  while index < len(lines):
    header = lines[index].strip().rstrip(":")
    index += 1
    if header not in _SECTIONS or not lines[index - 1].rstrip().endswith(":"):
      continue
    section_indent = _indent(lines[index - 1])
    entry_indent = None
    name = None
    while index < len(lines):
      line = lines[index]
      if not line.strip():
        index += 1
        continue
      indent = _indent(line)
      if indent <= section_indent:
        break
      if entry_indent is None:
        entry_indent = indent
      match = _ENTRY.match(line.strip())
      if indent == entry_indent and match:
        name = match.group(1)
        entries[name] = match.group(2).strip()
      elif name is not None:
        entries[name] = f"{entries[name]} {line.strip()}".strip()
      index += 1
  return entries


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def parameters_of(fn_or_cls: Callable) -> list[Parameter]:
  """Lists the parameters of a configurable with defaults and descriptions.

  A class is described by its `__init__` signature and its class docstring,
  which for a dataclass documents the fields under `Attributes:`.
  """
  descriptions = parse_docstring_entries(fn_or_cls.__doc__)
  if inspect.isclass(fn_or_cls):
    descriptions = {
        **parse_docstring_entries(fn_or_cls.__init__.__doc__),
        **descriptions,
    }
  factories = _default_factories(fn_or_cls)
  rows = []
  for name, parameter in inspect.signature(fn_or_cls).parameters.items():
    if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
      continue
    rows.append(Parameter(
        name=name,
        default=_format_default(parameter.default, factories.get(name)),
        description=descriptions.get(name, "")))
  return rows


def _default_factories(fn_or_cls: Callable) -> dict[str, Callable]:
  if not dataclasses.is_dataclass(fn_or_cls):
    return {}
  return {field.name: field.default_factory
          for field in dataclasses.fields(fn_or_cls)
          if field.default_factory is not dataclasses.MISSING}


def _format_default(default, factory: Callable | None) -> str:
  if factory is not None:
    return f"`{factory.__name__}()`"
  if default is inspect.Parameter.empty or default is gin.REQUIRED:
    return "required"
  return f"`{default!r}`"


def _escape(text: str) -> str:
  """Escapes the characters that would break a Markdown table cell."""
  return text.replace("|", "\\|").replace("\n", " ")


def render_reference() -> str:
  """Renders the Markdown reference of every sutra_jax configurable."""
  lines = [
      "# Gin reference",
      "",
      "Every gin configurable of sutra_jax, with its parameters, defaults and",
      "descriptions. Bind a parameter as `Name.parameter = value` in a gin",
      "file or with `--gin_bindings`.",
      "",
      "This file is generated from the docstrings, so edit those instead.",
      f"Regenerate it with `{GENERATE_COMMAND}`.",
  ]
  for selector, fn_or_cls in sutra_configurables():
    name = selector.rsplit(".", 1)[-1]
    summary = inspect.cleandoc(fn_or_cls.__doc__ or "").split("\n\n")[0]
    lines += ["", f"## {name}", "", f"`{selector}`", ""]
    if summary:
      lines += [" ".join(summary.split()), ""]
    lines += ["| Parameter | Default | Description |", "| --- | --- | --- |"]
    for row in parameters_of(fn_or_cls):
      lines.append(f"| `{row.name}` | {_escape(row.default)} | "
                   f"{_escape(row.description)} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
  # argparse rather than absl flags, because `sutra_jax.cli.tokenizer`
  # already defines an absl --output flag and both may be imported together.
  parser = argparse.ArgumentParser(
      prog="python -m sutra_jax.gin_reference",
      description="Write the Markdown reference of the gin configurables.")
  parser.add_argument("--output", required=True,
                      help="Markdown file to write, such as "
                      "docs/gin_reference.md.")
  args = parser.parse_args(argv)
  with open(args.output, "w", encoding="utf-8") as f:
    f.write(render_reference())


if __name__ == "__main__":
  main()
