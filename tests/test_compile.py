"""--compile computes what the eager run computes (up to floating-point reordering).

torch.compile on CPU builds C++ kernels, so the test needs a C++ compiler;
without one it is skipped.
"""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from cli_util import env_for_cli, parse_log, run_cli
from test_cli import README

pytestmark = pytest.mark.slow  # subprocess runs of the CLI

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                    reason="torch.compile on CPU needs a C++ compiler")


@needs_compiler
def test_compiled_run_matches_the_eager_run(tmp_path):
    args = README + ["--device", "cpu"]
    env = env_for_cli(CUDA_VISIBLE_DEVICES="")
    dirs = [tmp_path / "eager", tmp_path / "compiled"]
    for d in dirs:
        d.mkdir()
    with ThreadPoolExecutor(2) as pool:
        eager, compiled = pool.map(lambda a: run_cli(a[0], cwd=a[1], env=env, timeout=600),
                                   [(args, dirs[0]), (args + ["--compile"], dirs[1])])
    for res in (eager, compiled):
        assert res.returncode == 0, res.stderr
    (e_phase,), (c_phase,) = parse_log(eager.stdout)["phases"], parse_log(compiled.stdout)["phases"]
    e_steps, c_steps = e_phase["steps"], c_phase["steps"]
    assert [s["step"] for s in c_steps] == [s["step"] for s in e_steps] == [1, 4, 6, 11]
    for e, c in zip(e_steps, c_steps):
        # Same data, same initial weights: only the order of the float32 sums differs.
        assert c["loss"] == pytest.approx(e["loss"], abs=2e-4)
        assert c["mean_loss"] == pytest.approx(e["mean_loss"], abs=2e-4)
        assert c["lin"] == pytest.approx(e["lin"], abs=5e-3)
        assert c["lambda"] == pytest.approx(e["lambda"], abs=0.11)  # printed to one decimal
