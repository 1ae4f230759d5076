"""benchmark.py: its tables end to end on tiny settings (subprocess), its flags and its arithmetic."""

import functools
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from tools import benchmark
import invertible_network_utils
from cli_util import ROOT, env_for_cli, parse_log


def run_benchmark(*args):
    return subprocess.run([sys.executable, "-m", "tools.benchmark", *args], cwd=ROOT,
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
def test_bad_input_is_one_line_and_exit_2():
    # The script's own refusal, once through the CLI; each flag's refusal is checked in-process below.
    proc = run_benchmark("--compile", "--precision", "bf16")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tools.benchmark: error:") and "--compile" in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("args, flag", [
    (["--compile", "--precision", "bf16"], "--compile"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--startup-repeats", "0"], "--startup-repeats"),
    (["--device", "tpu"], "--device"),
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
    assert len(lines) == 1 and lines[0].startswith("tools.benchmark: error:") and flag in lines[0]


def test_the_floor_counts_the_encoders_matmul_flops():
    # n = 10: widths 10, 100, 500, 500, 500, 500, 100, 10, so 852,000 multiply-adds a sample
    # forward; 2 FLOPs each, backward twice the forward, 2B samples.
    assert benchmark.encoder_step_flops(10, 1000) == 3 * 2 * 852_000 * 2000
    assert benchmark.gemm_shape(10, 1000) == (2000, 500, 500)  # the widest layer at B = 1000
    op, flops = benchmark.floor_op(torch.device("cpu"), 10, 16)
    assert flops == 2 * 32 * 500 * 500 * round(benchmark.encoder_step_flops(10, 16) / (2 * 32 * 500 * 500))
    op()


def test_the_timer_times_each_function_in_turns():
    fast, slow = benchmark.turn_times([lambda: torch.ones(8).sum(), lambda: time.sleep(0.002)], 3, warmup=1)
    assert len(fast) == len(slow) == 3
    assert all(0 < seconds < 1 for seconds in fast) and all(seconds >= 0.002 for seconds in slow)


def test_without_sync_count_the_speed_table_stands_alone(monkeypatch, capsys):
    # g's threshold from 1,000 condition numbers instead of 25,000: the same kind of mixing, sooner.
    monkeypatch.setattr(invertible_network_utils, "construct_invertible_mlp",
                        functools.partial(invertible_network_utils.construct_invertible_mlp, n_iter_cond_thresh=1000))
    benchmark.main(["--device", "cpu", "--batch-sizes", "8", "--repeats", "1", "--warmup", "0",
                    "--startup-repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    header, rows = table(lines, "precision | batch | GEMM")
    assert [(r[0], r[1]) for r in rows] == [("float32", "8")] and len(rows[0]) == len(header) == 10
    assert not any(line.startswith("precision | batch | syncs/step") for line in lines)


# ------------------------------------------------------------ gpu_check.sh

STAGES = ["environment", "CUDA tests", "README run", "benchmark", "benchmark --compile"]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_stage_and_its_summary(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", os.path.join(ROOT, "gpu_check.sh"), str(out), "--device", "cpu", "--dry"],
                          cwd=tmp_path, env=env_for_cli(PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("env.txt", "cuda_tests.txt", "readme_run.log", "readme_run.jsonl", "readme_run.err",
                 "benchmark.txt", "benchmark_compile.txt", "summary.md"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert proc.stdout == summary  # printed at the end
    lines = summary.splitlines()
    assert "mode dry, device cpu" in lines[2]
    _, rows = table(lines, "| stage | status |")
    assert [r[0].strip("| ") for r in rows] == STAGES
    assert all(r[1] == "ok" for r in rows), rows
    assert "gpu: none (CUDA not available)" in (out / "env.txt").read_text()
    # The CUDA tests are collected and, without CUDA, all skipped.
    assert re.search(r"^pytest: \d+ skipped in ", summary, re.M) and "failed" not in summary
    # The README run: its log in the reference format, its last Step line and final scores in the summary.
    log = parse_log((out / "readme_run.log").read_text())
    last = log["phases"][0]["steps"][-1]["step"]
    assert [s["step"] for s in log["phases"][0]["steps"]] == [1, 4, 6, 11]  # 12 steps, logged every 5
    assert re.search(rf"^Step: {last} \t Loss: ", summary, re.M)
    assert re.search(r"^linear mean: ", summary, re.M) and re.search(r"^perm mean: ", summary, re.M)
    # The speed tables: each precision at batch 16, eager and compiled, and their host syncs.
    _, rows = table(lines, "precision | batch | GEMM")
    assert [(r[0], r[1]) for r in rows] == [("float32", "16"), ("bf16", "16"), ("float32 compiled", "16")]
    _, rows = table(lines, "precision | batch | syncs/step")
    assert [(r[0], r[1]) for r in rows] == [("float32", "16"), ("bf16", "16"), ("float32 compiled", "16")]
    assert all(int(r[3]) >= 1 for r in rows)  # at least the sampler's one
    assert re.search(r"^projected 300,003-step README run, from the benchmark \(float32, batch 16\): "
                     r"\d+\.\d\d h$", summary, re.M)
    assert re.search(r"^projected 300,003-step README run, from the README run's rate \([\d.]+ steps/s over "
                     r"its 12 steps, logging included\): \d+\.\d\d h$", summary, re.M)
    # benchmark.py's own output: its header, the start-up time, and --breakdown's stages of a step.
    bench = (out / "benchmark.txt").read_text().splitlines()
    assert bench[0].startswith("device: cpu (CPU)") and "timer: wall clock, 1 warm-up calls" in bench[0]
    assert any(re.search(r"start-up .*: \d+\.\d+ s", line) for line in bench)
    header, rows = table(bench, "precision | batch |")
    assert header[4] == "step ms" and header[5] == "step/floor" and header[-1] == "projected 300,003 steps"
    for row in rows:
        gflops, floor_ms, step_ms, ratio = (float(x) for x in row[2:6])
        assert gflops > 0 and floor_ms > 0 and step_ms > 0 and ratio > 0
    _, rows = table(bench, "stage | ms | / floor")
    stages = {name: (float(ms), float(ratio)) for name, ms, ratio in rows}
    assert list(stages) == ["GEMM floor", "full step", "encoder matrix products alone", "encoder forward + backward",
                            "loss forward + backward", "sampler + mixing g", "Adam"]
    assert stages["GEMM floor"][1] == 1.0
    assert all(ms > 0 and ratio > 0 for ms, ratio in stages.values())


@pytest.mark.parametrize("args, flag", [
    ([], "OUTDIR"),
    (["out", "--device", "tpu"], "--device"),
    (["out", "--budget", "30"], "--budget"),
    (["out", "--budget", "ten"], "--budget"),
    (["out", "--repeat"], "--repeat"),
    (["out", "other"], "other"),
])
def test_gpu_check_refuses_bad_arguments_in_one_line(args, flag, tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "gpu_check.sh"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.sh: error:") and flag in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything is written
