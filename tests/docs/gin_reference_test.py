"""Tests that docs/gin_reference.md matches the gin configurables."""

from sutra_jax import gin_reference
from tests.conftest import REPO_ROOT

REFERENCE = REPO_ROOT / "docs" / "gin_reference.md"


def test_checked_in_reference_is_current():
  expected = gin_reference.render_reference()
  assert REFERENCE.read_text(encoding="utf-8") == expected, (
      "docs/gin_reference.md is out of date; run "
      f"`{gin_reference.GENERATE_COMMAND}`")


def test_every_parameter_has_description():
  undocumented = [
      f"{selector}.{row.name}"
      for selector, fn_or_cls in gin_reference.sutra_configurables()
      for row in gin_reference.parameters_of(fn_or_cls)
      if not row.description
  ]
  assert not undocumented, (
      "add these parameters to the Args: or Attributes: section of the "
      f"docstring: {', '.join(undocumented)}")


def test_docstring_entries_parsed():
  docstring = """Does a thing.

  Args:
    alpha: first line
      continued here.
    beta (int): typed.
    **overrides: extra fields.

  Returns:
    gamma: not a parameter.
  """
  entries = gin_reference.parse_docstring_entries(docstring)
  assert entries == {"alpha": "first line continued here.",
                     "beta": "typed.", "overrides": "extra fields."}
