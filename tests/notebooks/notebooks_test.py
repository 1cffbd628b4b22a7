"""Executes the notebooks in notebooks/ with nbclient and a real kernel.

Each notebook runs in its own temporary working directory, so its run
directories start empty, and in a kernel with one CPU device, as on a
laptop or Colab. A cell that raises fails the test. The notebooks find the
shared evaluation data as the tests do; where it is absent they skip the
parts that need it and print why.
"""

import os
import pathlib

import nbclient
import nbformat
import pytest

from tests import conftest

NOTEBOOK_DIR = conftest.REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
# Limit on one cell, in seconds, so a hung kernel fails the test.
CELL_TIMEOUT_S = 600
# Limit on one notebook, in seconds (pytest-timeout).
NOTEBOOK_TIMEOUT_S = 900


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def test_notebooks_present():
  assert NOTEBOOKS == ["01_quickstart.ipynb", "02_tokenizer_fertility.ipynb",
                       "03_expert_routing.ipynb",
                       "04_plan_a_pod_run.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_stored_without_outputs(name):
  notebook = _read(name)
  nbformat.validate(notebook)

  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{name}: a cell has outputs"
      assert cell.execution_count is None, f"{name}: a cell was executed"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_starts_with_colab_setup(name):
  code_cells = [c for c in _read(name).cells if c.cell_type == "code"]

  first = code_cells[0].source
  assert "import google.colab" in first
  assert "if ON_COLAB:" in first


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
  # One CPU device, as on a laptop: the kernel inherits this environment.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("SUTRA_SHARED_DATA", str(conftest.shared_data_dir()))
  # The kernel imports this checkout's sutra_jax, as the test process does.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(conftest.REPO_ROOT), os.environ.get("PYTHONPATH", "")]).strip(
          os.pathsep))
  notebook = _read(name)
  client = nbclient.NotebookClient(
      notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})

  client.execute()

  errors = [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == "error"]
  assert not errors
