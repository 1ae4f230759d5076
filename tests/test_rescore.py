"""rescore.py: a finished run's save-dir scored anew, with every metric of disentanglement_utils.METRICS."""

import json

import pytest

import disentanglement_utils as du
import main_mlp
from cli_util import TINY, assert_refused, run_main, run_tool_main


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny bimodal run (n 4: two groups of equal λ), trained to its end with a --save-dir."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("rescore")
    argv = [*TINY, "--n", "4", "--n-steps", "60", "--n-log-steps", "30", "--num-eval-batches", "4", "--seed", "3",
            "--batch-size", "256", "--save-dir", str(root / "sd"), "--metrics-file", str(root / "m.jsonl"),
            "--log-file", str(root / "r.log")]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main_mlp.main(argv) == 0
    return root


def _rescore(root, *extra):
    result = run_tool_main("tools.rescore", root / "sd", "--seed", "5", "-o", root / "out.jsonl", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_trained_models_score_as_the_run_did(finished):
    final = json.loads((finished / "m.jsonl").read_text().splitlines()[-1])
    record = _rescore(finished)
    assert record["type"] == "rescore" and record["samples"] == main_mlp.N_EVAL_SAMPLES
    # Fresh samples, the same h: the run's own final scores up to sampling error.
    for key in ("lin_mean", "perm_mean", "block_orthogonal_r2_mean", "block_linear_r2_mean"):
        assert record[key] == pytest.approx(final[key], abs=0.03), key
    # latent by latent too: this h, not another one that scores alike on average
    assert record["lin_dims"] == pytest.approx(final["lin_dims"], abs=0.05)
    assert _rescore(finished) == record  # a seed repeats it


def test_a_metric_added_later_reaches_a_finished_run(finished, monkeypatch):
    def toy(z, hz, groups):
        return {"toy": float(len(groups))}

    toy_metric = du.Metric(toy, fields=(du.Field("toy", "toy", spread=True),))
    monkeypatch.setattr(du, "METRICS", du.METRICS + (toy_metric,))
    record = _rescore(finished, "--batches", "2")
    assert record["toy_mean"] == 2.0 and record["toy_std"] == 0.0 and record["batches"] == 2


def test_a_save_dir_without_its_checkpoint_reads_the_metrics_file(finished, tmp_path):
    import shutil

    shutil.copytree(finished / "sd", tmp_path / "sd")
    (tmp_path / "sd" / "checkpoint.pth").unlink()
    result = run_tool_main("tools.rescore", tmp_path / "sd", "--seed", "5", "-o", tmp_path / "o.jsonl")
    assert_refused(result.returncode, result.stderr, "SAVE_DIR", "--config", prog="tools.rescore")
    result = run_tool_main("tools.rescore", tmp_path / "sd", "--seed", "5", "-o", tmp_path / "o.jsonl",
                           "--config", finished / "m.jsonl")
    assert result.returncode == 0 and json.loads(result.stdout) == {**_rescore(finished), "save_dir":
                                                                     str(tmp_path / "sd")}
    (tmp_path / "sd" / "unsup_f.pth").write_bytes(b"not a model")
    result = run_tool_main("tools.rescore", tmp_path / "sd", "--seed", "5", "-o", tmp_path / "o.jsonl",
                           "--config", finished / "m.jsonl")
    assert_refused(result.returncode, result.stderr, "unsup_f.pth", prog="tools.rescore")


def test_an_output_that_is_not_a_file_of_rescore_records_is_refused(finished, tmp_path):
    """-o appends: a run's metrics file (or its log, or any other file) named there by mistake is refused,
    unchanged, instead of taking a record its readers refuse; a file of rescore records takes one more."""
    for name in ("m.jsonl", "r.log"):
        before = (finished / name).read_bytes()
        result = run_tool_main("tools.rescore", finished / "sd", "--seed", "5", "-o", finished / name)
        assert_refused(result.returncode, result.stderr, "-o/--output", prog="tools.rescore")
        assert (finished / name).read_bytes() == before
    out = tmp_path / "o.jsonl"
    for _ in range(2):
        result = run_tool_main("tools.rescore", finished / "sd", "--seed", "5", "-o", out)
        assert result.returncode == 0, result.stderr
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == ["rescore", "rescore"]
