"""benchmark.py: its tables end to end on tiny settings (subprocess), its flags and its arithmetic."""

import os
import re
import subprocess
import sys

import pytest
import torch

import benchmark
from cli_util import ROOT, env_for_cli


def run_benchmark(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmark.py"), *args], cwd=ROOT,
                          env=env_for_cli(), capture_output=True, text=True, timeout=180)


def table(lines, header):
    """The rows of the markdown table whose header line starts with ``header``, split into cells."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split(" | "))
    return lines[start].split(" | "), rows


@pytest.mark.slow
def test_benchmark_prints_its_tables():
    proc = run_benchmark("--batch-sizes", "16", "24", "--precision", "float32", "bf16", "--repeats", "2",
                         "--warmup", "1", "--startup-repeats", "1", "--device", "cpu", "--breakdown",
                         "--sync-count", "--sync-steps", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: cpu (CPU)") and "timer: wall clock, 1 warm-up calls" in lines[0]
    header, rows = table(lines, "precision | batch |")
    assert header[4] == "step ms" and header[5] == "step/floor" and header[-1] == "projected 300,003 steps"
    # One row per precision and batch, in that order.
    assert [(r[0], r[1]) for r in rows] == [("float32", "16"), ("float32", "24"), ("bf16", "16"), ("bf16", "24")]
    for row in rows:
        gflops, floor_ms, step_ms, ratio = (float(x) for x in row[2:6])
        assert gflops > 0 and floor_ms > 0 and step_ms > 0 and ratio > 0
        assert re.fullmatch(r"\d+\.\d\d h", row[-1])
    assert re.search(r"start-up .*: \d+\.\d+ s", proc.stdout)
    # --sync-count: the README step syncs once per round of the positive sampler, at least once.
    header, rows = table(lines, "precision | batch | syncs/step")
    assert [(r[0], r[1]) for r in rows] == [("float32", "16"), ("float32", "24"), ("bf16", "16"), ("bf16", "24")]
    for row in rows:
        mean, low, high = float(row[2]), int(row[3]), int(row[4])
        assert 1 <= low <= mean <= high
    # --breakdown: every stage of the step, in ms and as a multiple of the floor.
    _, rows = table(lines, "stage | ms | / floor")
    stages = {name: (float(ms), float(ratio)) for name, ms, ratio in rows}
    assert list(stages) == ["GEMM floor", "full step", "encoder matrix products alone", "encoder forward + backward",
                            "loss forward + backward", "sampler + mixing g", "Adam"]
    assert stages["GEMM floor"][1] == 1.0
    assert all(ms > 0 and ratio > 0 for ms, ratio in stages.values())


@pytest.mark.slow
@pytest.mark.parametrize("args, flag", [
    (["--compile", "--precision", "bf16"], "--compile"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--startup-repeats", "0"], "--startup-repeats"),
    (["--device", "tpu"], "--device"),
])
def test_bad_input_is_one_line_and_exit_2(args, flag):
    proc = run_benchmark(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmark.py: error:") and flag in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("args, flag", [
    (["--device", "cpu", "--precision", "tf32"], "--precision"),
    (["--precision", "float32", "fp16"], "--precision"),
    (["--compile", "--precision", "float32", "bf16"], "--compile"),
    (["--warmup", "-1"], "--warmup"),
    (["--sync-steps", "0"], "--sync-steps"),
    (["--batch-sizes", "1000", "1"], "--batch-sizes"),
])
def test_bad_flags_are_refused_in_one_line(args, flag, capsys):
    if "tf32" in args and torch.cuda.is_available():
        pytest.skip("tf32 is refused only without CUDA")
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_options(args)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmark.py: error:") and flag in lines[0]


def test_the_floor_counts_the_encoders_matmul_flops():
    # n = 10: widths 10, 100, 500, 500, 500, 500, 100, 10, so 852,000 multiply-adds a sample
    # forward; 2 FLOPs each, backward twice the forward, 2B samples.
    assert benchmark.encoder_step_flops(10, 1000) == 3 * 2 * 852_000 * 2000
    assert benchmark.gemm_shape(10, 1000) == (2000, 500, 500)  # the widest layer at B = 1000
    op, flops = benchmark.floor_op(torch.device("cpu"), 10, 16)
    assert flops == 2 * 32 * 500 * 500 * round(benchmark.encoder_step_flops(10, 16) / (2 * 32 * 500 * 500))
    op()


def test_the_wall_clock_times_a_call():
    seconds = benchmark.time_call(lambda: torch.ones(8).sum(), torch.device("cpu"))
    assert 0 < seconds < 1
