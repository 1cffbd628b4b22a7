"""Test set-up: 8 simulated CPU devices, no TPU probing, quiet TensorFlow."""

import os

# These must be set before JAX or TensorFlow is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pathlib  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
  """The evaluation data folder: $SUTRA_SHARED_DATA or ../shared/data."""
  return pathlib.Path(os.environ.get("SUTRA_SHARED_DATA",
                                     REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> pathlib.Path:
  path = shared_data_dir()
  if not path.is_dir():
    pytest.skip(f"shared evaluation data not found at {path}; set "
                "SUTRA_SHARED_DATA to run this test")
  return path


@pytest.fixture(autouse=True)
def _clear_gin():
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()
