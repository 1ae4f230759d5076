"""benchmark.py runs end to end on tiny settings and prints its table."""

import os
import re
import subprocess
import sys

import pytest

from cli_util import ROOT, env_for_cli

pytestmark = pytest.mark.slow  # subprocess runs of the CLI


def test_benchmark_prints_its_tables():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmark.py"), "--batch-sizes", "16",
                           "--repeats", "2", "--startup-repeats", "1", "--device", "cpu", "--breakdown"],
                          cwd=ROOT, env=env_for_cli(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("batch |"))
    assert "step/floor" in lines[header]
    row = lines[header + 2].split(" | ")
    assert row[0] == "16"
    gflops, floor_ms, step_ms, ratio = (float(x) for x in row[1:5])
    assert gflops > 0 and floor_ms > 0 and step_ms > 0 and ratio > 0
    assert re.search(r"start-up .*: \d+\.\d+ s", proc.stdout)
    assert row[-1].endswith(" h")
    # --breakdown: every stage of the step, in ms and as a multiple of the floor.
    stage_header = lines.index("stage | ms | / floor")
    stages = {}
    for line in lines[stage_header + 2:]:
        name, ms, ratio = line.split(" | ")
        stages[name] = (float(ms), float(ratio))
    assert list(stages) == ["GEMM floor", "full step", "encoder matrix products alone", "encoder forward + backward",
                            "loss forward + backward", "sampler + mixing g", "Adam"]
    assert stages["GEMM floor"][1] == 1.0
    assert all(ms > 0 and ratio > 0 for ms, ratio in stages.values())


@pytest.mark.parametrize("args, flag", [
    (["--compile", "--precision", "bf16"], "--compile"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--startup-repeats", "0"], "--startup-repeats"),
    (["--device", "tpu"], "--device"),
])
def test_bad_input_is_one_line_and_exit_2(args, flag):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmark.py"), *args], cwd=ROOT,
                          env=env_for_cli(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmark.py: error:") and flag in lines[0]
    assert proc.stdout == ""
