"""Static checks of the shell scripts in launch/: syntax, shellcheck, and
that they take every cloud name from flags or the environment."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def test_scripts_exist():
  names = {path.name for path in SCRIPTS}
  assert {"tpu_vm.sh", "tpu_multislice.sh", "local_multihost.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", str(script)], capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install "
                    "shellcheck)")
def test_shellcheck():
  result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)],
                          capture_output=True, text=True, cwd=LAUNCH.parent)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_hard_coded_cloud_names(script):
  code = [line for line in script.read_text().splitlines()
          if not line.lstrip().startswith("#")]
  for line in code:
    # Project, zone and bucket values always come from a variable.
    assert not re.search(r"gs://", line), line
    assert not re.search(r"--(project|zone)[ =][^\"$ ]", line), line


@pytest.mark.parametrize("script", ["tpu_vm.sh", "tpu_multislice.sh"])
def test_missing_settings_fail_before_any_cloud_call(script, tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  # A gcloud that records any call, so the test sees none happened.
  fake = tmp_path / "gcloud"
  fake.write_text("#!/bin/sh\ntouch \"$0.called\"\n")
  fake.chmod(0o755)
  env["GCLOUD"] = str(fake)
  result = subprocess.run(["bash", str(LAUNCH / script), "--",
                           "--run_dir=x"], capture_output=True, text=True,
                          env=env)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: TPU_PROJECT is not set")
  assert not (tmp_path / "gcloud.called").exists()
