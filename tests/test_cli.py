"""The command line end to end, through subprocess: the README bimodal command on tiny settings.

The subprocess runs of this module start together (module fixture, a few at
a time) and the tests read what they printed and wrote. Each run gets its own
working directory and relative output paths, so two runs of the same command
have the same command line; their ``Arguments:`` blocks differ only in the
places they record (each its own absolute paths).
"""

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from test_encoders import REFERENCE_REPR
from cli_util import REFERENCE_KEYS, TINY_RUN, env_for_cli, parse_log, placed, run_cli, run_main

pytestmark = pytest.mark.slow  # subprocess runs of the CLI


# The README's bimodal command, shortened: --n-steps 4 (12 contrastive steps), one eval batch.
# Seed 9, not 3: g's search for well-conditioned layers (a matrix under the minimum
# condition number of 25,000 draws) has a heavy-tailed cost; at n = 10 seed 3 needs
# ~37 rounds of 25,000 candidates, seed 9 four.
README = ["--n", "10", "--batch-size", "64", "--space", "extended_sphere", "--c-p", "0", "--p", "0",
          "--only-unsupervised", "--gt-lambda-1", "5", "--gt-lambda-2", "25", "--n-steps", "4",
          "--n-log-steps", "5", "--seed", "9", "--num-eval-batches", "1"]
README_OUT = ["--device", "cpu", "--log-file", "run.log", "--metrics-file", "metrics.jsonl"]
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}
NO_SEED = ["--n-log-steps", "2", "--metrics-file", "metrics.jsonl", "--cond-thresh-ratio", "0.01"]
TINY = [*TINY_RUN, "--device", "cpu", "--n", "4"]  # n = 4: the tests' Λ has 4 entries

# The encoder's repr for n = 10, exactly as in the reference logs: its module lines.
REFERENCE_F = REFERENCE_REPR.splitlines()[1:-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every run of this module together; returns {name: (CompletedProcess, its directory)}.

    The run without --seed goes first; as soon as it has ended, the same command
    with the seed it drew ("seeded_again") joins the runs still going.
    """
    specs = {
        "no_seed": (TINY + NO_SEED, None),
        "readme": (README + README_OUT, NO_CUDA),
        "readme_again": (README + README_OUT, NO_CUDA),
    }
    dirs = {name: tmp_path_factory.mktemp(name) for name in [*specs, "seeded_again"]}
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(run_cli, args, cwd=dirs[name], env=env_for_cli(**(env or {})))
                   for name, (args, env) in specs.items()}
        m = re.search(r"drew seed (\d+)", futures["no_seed"].result().stderr)
        if m:
            futures["seeded_again"] = pool.submit(run_cli, TINY + NO_SEED + ["--seed", m.group(1)],
                                                  cwd=dirs["seeded_again"])
        return {name: (future.result(), dirs[name]) for name, future in futures.items()}


def ok(run):
    res, _ = run
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res


def test_readme_command_prints_every_line_type_in_order(runs):
    res = ok(runs["readme"])
    log = parse_log(res.stdout)  # strict: every line is a known type, in the reference order

    keys = list(log["args"])
    assert keys[:len(REFERENCE_KEYS)] == REFERENCE_KEYS
    assert log["args"]["space_type"] == "extended_sphere"  # --space is the prefix of --space-type
    assert log["args"]["seed"] == "9" and log["args"]["p"] == "0" and log["args"]["c_p"] == "0"

    assert len(log["lambda_init"]) == 10
    assert all(abs(v) < 0.5 for v in log["lambda_init"])  # θ ~ N(0, 0.1²)
    assert log["gt_lambda"] == [25.0] * 5 + [5.0] * 5

    assert len(log["layer_conds"]) == 3
    assert all(1.0 <= c <= log["cond_threshold"] for c in log["layer_conds"])
    assert 0.0 <= log["id_lin"] <= 1.0 and 0.0 <= log["id_perm"] <= 1.0

    (phase,) = log["phases"]
    assert phase["supervised"] is False
    assert phase["f"] == REFERENCE_F
    # 4 * 3 = 12 contrastive steps, logged (the reference's rule) at step % 5 == 1 and at step == --n-steps
    assert [s["step"] for s in phase["steps"]] == [1, 4, 6, 11]
    for s in phase["steps"]:
        assert len(s["lambda"]) == 10
        assert all(0.3 < v < 1.2 for v in s["lambda"])  # softplus(θ) ≈ 0.7 after a few steps
        assert 0.0 <= s["perm"] <= 1.0
    assert log["final"] is not None

    # At initialisation the loss is about ln(2B - 1).
    assert abs(phase["steps"][0]["loss"] - math.log(2 * 64 - 1)) < 0.05
    assert phase["steps"][0]["mean_loss"] == phase["steps"][0]["loss"]


def test_same_seed_gives_identical_stdout(runs):
    first, second = ok(runs["readme"]), ok(runs["readme_again"])
    assert placed(first.stdout, runs["readme"][1]) == placed(second.stdout, runs["readme_again"][1])
    assert first.stdout != second.stdout  # each records the absolute paths of its files


def test_log_file_is_stdout(runs):
    res, cwd = runs["readme"]
    ok(runs["readme"])
    assert (cwd / "run.log").read_text() == res.stdout


def test_metrics_file_records_config_and_every_logged_step(runs):
    res, cwd = runs["readme"]
    ok(runs["readme"])
    records = [json.loads(line) for line in (cwd / "metrics.jsonl").read_text().splitlines()]
    config = records[0]
    assert config["type"] == "config"
    assert config["seed"] == 9 and config["device"] == "cpu"
    assert config["torch"] and config["numpy"]
    assert config["args"]["n"] == 10 and config["args"]["batch_size"] == 64

    steps = [r for r in records if r.get("type") == "step"]
    printed = parse_log(res.stdout)["phases"][0]["steps"]
    assert [r["step"] for r in steps] == [s["step"] for s in printed]
    for rec, line in zip(steps, printed):
        assert {"step", "loss", "mean_loss", "lin", "perm", "lambda"} <= set(rec)
        for key in ("loss", "mean_loss", "lin", "perm"):
            assert f"{rec[key]:.4f}" == f"{line[key]:.4f}"  # the printed value is the recorded one
        assert [round(v, 1) for v in rec["lambda"]] == line["lambda"]
        # The block scores of the two groups of equal λ (content 25, style 5), held out: at most 1, the
        # block-linear score the mean of its two groups' values (five latents each).
        assert rec["block_orthogonal_r2"] <= 1 and rec["block_linear_r2"] <= 1
        assert len(rec["block_linear_groups"]) == 2
        assert abs(sum(rec["block_linear_groups"]) / 2 - rec["block_linear_r2"]) < 1e-12
    assert records.index(steps[0]) == 1  # the config record comes first
    final = records[-1]
    assert final["type"] == "final" and {"block_orthogonal_r2_mean", "block_orthogonal_r2_std", "block_linear_r2_mean",
                                         "block_linear_r2_std", "block_linear_groups"} <= set(final)


def test_linspace_infonce_symmetric_every_step_logged(capsys):
    """--linearly-spaced-lambda, --loss infonce, --negatives symmetric and --n-log-steps 1 in one run.

    In-process (``main_mlp.main``), to spare an interpreter start-up.
    """
    argv = TINY + ["--seed", "0", "--n-log-steps", "1", "--linearly-spaced-lambda",
                   "--loss", "infonce", "--negatives", "symmetric"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    log = parse_log(out)
    assert log["gt_lambda"] == pytest.approx([5.0, 5.0 + 20 / 3, 5.0 + 40 / 3, 25.0], abs=1e-4)
    assert log["args"]["loss"] == "infonce" and log["args"]["negatives"] == "symmetric"
    steps = log["phases"][0]["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]  # --n-log-steps 1: every step
    assert [s["mean_loss"] for s in steps] == [s["loss"] for s in steps]  # the mean of the last 1 loss
    for s in steps:
        assert len(s["lambda"]) == 4 and len(set(s["lambda"])) == 1  # one shared λ: the isotropic baseline
    assert abs(steps[0]["loss"] - math.log(2 * 32 - 1)) < 0.05


def test_drawn_seed_is_reported_and_repeats_the_run(runs):
    res, cwd = runs["no_seed"]
    ok(runs["no_seed"])
    m = re.search(r"drew seed (\d+)", res.stderr)
    assert m, res.stderr
    seed = int(m.group(1))
    config = json.loads((cwd / "metrics.jsonl").read_text().splitlines()[0])
    assert config["seed"] == seed
    assert "\tseed: None\n" in res.stdout and "drew" not in res.stdout  # stdout: reference format only

    again = ok(runs["seeded_again"])  # the same command with --seed <the drawn seed>
    assert "drew seed" not in again.stderr
    assert placed(again.stdout, runs["seeded_again"][1]) == placed(res.stdout, cwd).replace(
        "\tseed: None\n", f"\tseed: {seed}\n")


def test_all_lambda_distinct_blocks_are_the_latents_and_exp_lambda_starts_alike(tmp_path, capsys):
    """--linearly-spaced-lambda: every group one latent, so the block-linear score has one value per latent;
    --lambda-param exp starts from the same Λ̂ as softplus (one Adam step later they still agree)."""
    lam = {}
    for param in ("softplus", "exp"):
        metrics = tmp_path / f"{param}.jsonl"
        argv = TINY + ["--seed", "0", "--n-log-steps", "1", "--linearly-spaced-lambda",
                       "--lambda-param", param, "--metrics-file", str(metrics)]
        code, out, err = run_main(argv, capsys)
        assert code == 0, err
        log = parse_log(out)
        assert log["args"]["lambda_param"] == param
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        steps = [r for r in records if r["type"] == "step"]
        for rec in steps:
            assert len(rec["block_linear_groups"]) == len(rec["perm_dims"])
            assert rec["block_linear_r2"] == pytest.approx(np.mean(rec["block_linear_groups"]), abs=1e-12)
        lam[param] = steps[0]["lambda"]
    assert lam["exp"] == pytest.approx(lam["softplus"], abs=5e-3)


def test_lambda_init_starts_lambda_at_its_scale_and_is_named_only_when_given(tmp_path, capsys):
    """--lambda-init 10: the first logged Λ̂ is near 10 (one Adam step of lr 1e-3 in θ from 10 · Λ̂₀ / ln 2), and
    the Arguments block and config record name it; a run without it names no lambda_init."""
    metrics = tmp_path / "metrics.jsonl"
    code, out, err = run_main(TINY + ["--seed", "0", "--n-log-steps", "1", "--lambda-init", "10",
                                      "--metrics-file", str(metrics)], capsys)
    assert code == 0, err
    assert parse_log(out)["args"]["lambda_init"] == "10.0"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records[0]["args"]["lambda_init"] == 10.0
    first = next(r for r in records if r["type"] == "step")["lambda"]
    assert len(first) == 4 and 7 < np.mean(first) < 13 and min(first) > 5
    code, out, err = run_main(TINY + ["--seed", "0", "--n-steps", "1"], capsys)
    assert code == 0, err
    assert "lambda_init" not in out and 0.5 < np.mean(parse_log(out)["phases"][0]["steps"][0]["lambda"]) < 1


@pytest.mark.parametrize("argv, code, stream", [(["--help"], 0, "stdout"), (["--n", "three"], 2, "stderr")])
def test_help_and_a_malformed_command_line_end_before_torch_loads(argv, code, stream):
    """``main_mlp.py --help`` (and argparse's own refusals) import no torch: they answer in a fraction of a second."""
    import subprocess
    import sys

    from cli_util import ROOT, SCRIPT
    result = subprocess.run([sys.executable, "-X", "importtime", SCRIPT, *argv], cwd=ROOT, capture_output=True,
                            text=True, env=env_for_cli(), timeout=60)
    assert result.returncode == code and "main_mlp.py" in getattr(result, stream)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "command_line" in imported and not [name for name in imported if name.split(".")[0] == "torch"]
