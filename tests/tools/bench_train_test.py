"""Tests of the train-step and MoE-overhead benchmarks."""

import subprocess
import sys

import pytest

from sutra_jax.errors import ConfigError
from sutra_jax.models import flops
from sutra_jax.tools import bench_train

# A preset small enough to compile in seconds, with the same structure as
# the MaxText presets (core only, untied head).
_TINY_CORE = dict(bench_train.PRESETS["maxtext_tiny_moe"].model,
                  vocab_size=128, d_model=32, num_heads=2, num_kv_heads=1,
                  head_dim=16, expert_mlp_dim=32, mlp_dim=32,
                  num_core_layers=1)


@pytest.fixture
def tiny_presets(monkeypatch):
  for name, mlp in (("tiny_dense", "dense"), ("tiny_moe", "moe")):
    monkeypatch.setitem(
        bench_train.PRESETS, name,
        bench_train.Preset(name, dict(_TINY_CORE, core_mlp=mlp),
                           batch_size=2, sequence_length=16))
  monkeypatch.setitem(bench_train.PRESETS, "maxtext_tiny_dense",
                      bench_train.PRESETS["tiny_dense"])
  monkeypatch.setitem(bench_train.PRESETS, "maxtext_tiny_moe",
                      bench_train.PRESETS["tiny_moe"])


def test_maxtext_presets_match_the_anchor_flop_counts():
  # 28.31 and 37.80 MFLOP per token (6 * N_active + causal attention),
  # which is also what MaxText reports for these shapes.
  dense = bench_train.model_config(bench_train.PRESETS["maxtext_tiny_dense"])
  moe = bench_train.model_config(bench_train.PRESETS["maxtext_tiny_moe"])
  assert flops.active_matmul_params(dense) == 4_456_448
  assert flops.active_matmul_params(moe) == 6_037_504
  assert flops.flops_per_token(dense, 256) == 6 * 4_456_448 + 1_572_864
  assert flops.flops_per_token(moe, 256) == 6 * 6_037_504 + 1_572_864


def test_unknown_preset_names_the_choices():
  with pytest.raises(ConfigError, match="maxtext_tiny_dense"):
    bench_train.get_preset("maxtext_tiny")


def test_train_benchmark_reports_the_interface(tiny_presets):
  report = bench_train.train_benchmark("tiny_moe", steps=2,
                                       peak_flops_per_second=1e11,
                                       moe_dispatch="capacity")

  for key in ("preset", "tokens_per_step", "step_seconds_median",
              "tokens_per_second", "model_flops_per_token", "mfu",
              "peak_flops_per_second"):
    assert key in report, key
  assert report["tokens_per_step"] == 32
  assert report["tokens_per_second"] == pytest.approx(
      32 / report["step_seconds_median"])
  assert report["mfu"] == pytest.approx(
      report["tokens_per_second"] * report["model_flops_per_token"] / 1e11)
  assert report["moe_dispatch"] == "capacity"
  assert report["peak_rss_bytes"] > 0


def test_moe_overhead_is_per_flop_ratio(tiny_presets):
  report = bench_train.moe_overhead(steps=2)

  per_flop = {
      key: report[key]["step_seconds_median"] /
      (report[key]["tokens_per_step"] * report[key]["model_flops_per_token"])
      for key in ("dense", "moe")}
  assert report["dense_seconds_per_flop"] == pytest.approx(per_flop["dense"])
  assert report["moe_seconds_per_flop"] == pytest.approx(per_flop["moe"])
  assert report["overhead"] == pytest.approx(per_flop["moe"] /
                                             per_flop["dense"])


def test_matmul_peak_is_positive_and_finite():
  peak = bench_train.measure_matmul_peak(size=128, repeats=2)
  assert 0 < peak < 1e15


@pytest.mark.parametrize("args,message", [
    (["train", "--preset=nope"], "unknown preset 'nope'"),
    (["train", "--dispatch=sorted"], "invalid --dispatch 'sorted'"),
    (["moe", "--dtype=float16"], "invalid --dtype 'float16'"),
    (["train", "--steps=0"], "invalid --steps 0"),
])
def test_cli_rejects_bad_flags_in_one_line(args, message):
  result = subprocess.run(
      [sys.executable, "-m", "sutra_jax.cli.bench", *args],
      capture_output=True, text=True, check=False)

  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, result.stderr
  assert message in errors[0], result.stderr
  assert "Traceback" not in result.stderr
