"""--compile computes what the eager run computes (up to floating-point reordering).

torch.compile on CPU builds C++ kernels, so the test needs a C++ compiler;
without one it is skipped.
"""

import os
import shutil

import pytest

from cli_util import env_for_cli, finish, parse_log, run_main, start_cli
from test_cli import README

pytestmark = pytest.mark.slow  # a subprocess run of the CLI

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                    reason="torch.compile on CPU needs a C++ compiler")


@needs_compiler
def test_compiled_run_matches_the_eager_run(tmp_path, capsys, monkeypatch):
    args = README + ["--device", "cpu"]
    monkeypatch.chdir(tmp_path)
    # The compiled run in a subprocess; the eager one meanwhile in this process, where torch is imported.
    compiled = start_cli(args + ["--compile"], cwd=tmp_path, env=env_for_cli(CUDA_VISIBLE_DEVICES=""))
    eager_code, eager_out, eager_err = run_main(args, capsys)
    compiled_code, compiled_out, compiled_err = finish(compiled, timeout=600)
    assert eager_code == 0, eager_err
    assert compiled_code == 0, compiled_err
    (e_phase,), (c_phase,) = parse_log(eager_out)["phases"], parse_log(compiled_out)["phases"]
    e_steps, c_steps = e_phase["steps"], c_phase["steps"]
    assert [s["step"] for s in c_steps] == [s["step"] for s in e_steps] == [1, 4, 6, 11]
    for e, c in zip(e_steps, c_steps):
        # Same data, same initial weights: only the order of the float32 sums differs.
        assert c["loss"] == pytest.approx(e["loss"], abs=2e-4)
        assert c["mean_loss"] == pytest.approx(e["mean_loss"], abs=2e-4)
        assert c["lin"] == pytest.approx(e["lin"], abs=5e-3)
        assert c["lambda"] == pytest.approx(e["lambda"], abs=0.11)  # printed to one decimal
