"""Bad input: a one-line error naming the flag (exit 2); a hopeless sampler and a diverging run stop early.

The bad inputs run in-process through ``main_mlp.main(argv)`` (argument
checking needs no subprocess, and 30 interpreter start-ups would cost a
minute); two representative cases go through the real CLI in subprocess
to check what a shell sees: the exit status, stderr, no traceback.
"""

import contextlib
import os
import re

import pytest
import torch

import main_mlp
from cli_util import STEP_RE, TINY, assert_refused, env_for_cli, restore_signal_handlers, run_main, run_many
from plumbing.checkpoint import read_checkpoint
from plumbing.files import CHECKPOINT_NAME


# (flags, text the one-line error must contain)
BAD_INPUTS = [
    (["--n", "1"], "--n"),
    (["--n", "abc"], "--n"),
    (["--batch-size", "1"], "--batch-size"),
    (["--n-steps", "0"], "--n-steps"),
    (["--n-log-steps", "0"], "--n-log-steps"),
    (["--num-eval-batches", "0"], "--num-eval-batches"),
    (["--more-unsupervised", "-1"], "--more-unsupervised"),
    (["--n-mixing-layer", "-1"], "--n-mixing-layer"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-4"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr-lambda", "0"], "--lr-lambda"),
    (["--tau", "0"], "--tau"),
    (["--tau", "inf"], "--tau"),
    (["--c-param", "-1"], "--c-param"),
    (["--m-param", "0"], "--m-param"),
    (["--sphere-r", "0"], "--sphere-r"),
    (["--sphere-r", "nan"], "--sphere-r"),
    (["--gt-lambda-1", "0"], "--gt-lambda-1"),
    (["--gt-lambda-2", "-25"], "--gt-lambda-2"),
    (["--threshold", "0"], "--threshold"),
    (["--threshold", "inf"], "--threshold"),
    (["--threshold", "nan"], "--threshold"),
    (["--p", "-1"], "--p"),
    (["--p", "1e30"], "--p"),
    (["--box-min", "1", "--box-max", "0"], "--box-min"),
    (["--box-min", "0.5", "--box-max", "0.5"], "--box-max"),
    (["--only-supervised", "--only-unsupervised"], "--only-unsupervised"),
    (["--sphere-norm", "--box-norm"], "--box-norm"),
    (["--space-type", "unbounded", "--m-p", "0"], "--m-p"),
    (["--space-type", "cube"], "--space-type"),
    (["--space-type", "box", "--c-p", "0"], "--c-p"),
    (["--loss", "infonce"], "--loss"),  # the default box space with --p 1 has no Λ̂
    (["--negatives", "symmetric"], "--negatives"),
    (["--act-fct", "gelu"], "--act-fct"),
    (["--device", "tpu"], "--device"),
    (["--seed", "-1"], "--seed"),
    (["--resume-training"], "--resume-training"),  # needs --save-dir
    (["--hn-beta", "1"], "--hn-beta"),  # the default box space with --p 2: the Lp loss
    ([*TINY, "--p", "2", "--hn-beta", "1"], "the lp loss"),
    (["--space-type", "sphere", "--c-p", "0", "--p", "0", "--hn-beta", "1"], "the dot loss"),
    ([a for a in TINY if a != "--only-unsupervised"] + ["--only-supervised", "--hn-beta", "1"], "--only-supervised"),
    ([*TINY, "--hn-beta", "-0.5"], "--hn-beta"),
    ([*TINY, "--hn-beta", "nan"], "--hn-beta"),
    ([*TINY, "--hn-beta", "inf"], "--hn-beta"),
    ([*TINY, "--hn-beta", "1e39"], "--hn-beta"),  # beyond float32
    (["--lambda-init", "10"], "--lambda-init: the lp loss"),  # the default box space with --p 2
    ([*TINY, "--p", "1", "--lambda-init", "10"], "--lambda-init: the lp loss"),
    (["--space-type", "sphere", "--c-p", "0", "--p", "0", "--lambda-init", "10"], "--lambda-init: the dot loss"),
    ([*TINY, "--loss", "infonce-fixed", "--lambda-init", "10"], "--lambda-init: the infonce-fixed loss"),
    ([a for a in TINY if a != "--only-unsupervised"] + ["--only-supervised", "--lambda-init", "10"],
     "--lambda-init: --only-supervised trains no contrastive loss"),
    # A flag of a loss where the run's loss does not read it: refused, not silently ignored.
    (["--lambda-param", "exp"], "--lambda-param: the lp loss does not read it"),  # the default box space, --p 2
    ([*TINY, "--loss", "infonce-fixed", "--lambda-param", "exp"], "--lambda-param: the infonce-fixed loss"),
    ([a for a in TINY if a != "--only-unsupervised"] + ["--only-supervised", "--lambda-param", "exp"],
     "--lambda-param: --only-supervised trains no contrastive loss"),
    ([a for a in TINY if a != "--only-unsupervised"] + ["--only-supervised", "--negatives", "symmetric"],
     "--negatives: --only-supervised trains no contrastive loss"),
    ([*TINY, "--lambda-init", "0"], "--lambda-init"),
    ([*TINY, "--lambda-init", "-1"], "--lambda-init"),
    ([*TINY, "--lambda-init", "nan"], "--lambda-init"),
    ([*TINY, "--lambda-init", "inf"], "--lambda-init"),
    ([*TINY, "--lambda-init", "1e5"], "--lambda-init"),  # beyond the largest Λ̂ the loss is tested finite for
    ([*TINY, "--lambda-init", "1e-40"], "--lambda-init"),  # below float32's normal numbers
]


def _accepted(run, survival):
    raise AssertionError(f"accepted, it would train: {vars(run.args)}")


@pytest.mark.parametrize("flags, flag", BAD_INPUTS, ids=[" ".join(f) for f, _ in BAD_INPUTS])
def test_bad_input_is_one_line_error(flags, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(main_mlp, "train", _accepted)  # an input that is not refused fails now, not after hours
    code, out, err = run_main(flags, capsys)
    assert_refused(code, err, flag, out=out)
    assert os.listdir(tmp_path) == []


# A command line that picks each loss of the table (a new loss needs its line here).
LOSS_ARGV = {name: [*TINY, "--loss", name] for name in ("aninfonce", "infonce", "infonce-fixed")}
LOSS_ARGV.update(lp=[*TINY, "--p", "1"], dot=["--space-type", "sphere", "--c-p", "0", "--p", "0"])


def test_lambda_init_is_refused_exactly_for_the_losses_that_learn_no_lambda():
    """--lambda-init's refusal (by loss name, torch-free) agrees with each loss's learns_lambda."""
    import command_line
    import settings

    assert set(LOSS_ARGV) == set(settings.LOSSES)
    for name, argv in LOSS_ARGV.items():
        assert command_line.parse_args(argv)[1].derived.loss == name
        try:
            accepted = command_line.read_args(argv + ["--lambda-init", "2"])["lambda_init"] == "2.0"
        except ValueError as exc:
            assert str(exc).startswith(f"argument --lambda-init: the {name} loss does not read it"), exc
            accepted = False
        assert accepted == settings.LOSSES[name].learns_lambda, name
    # Not given: not named (as the Arguments block prints it), so a sweep's log of the default agrees.
    assert "lambda_init" not in command_line.read_args(LOSS_ARGV["aninfonce"])


def test_cuda_requested_without_cuda(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_main(["--device", "cuda"], capsys)
    assert_refused(code, err, "--device", out=out)
    assert "CUDA" in err


@pytest.mark.parametrize("where", ["under_a_file", "is_a_directory", "missing_directory"])
@pytest.mark.parametrize("flag", ["--save-dir", "--log-file", "--metrics-file"])
def test_unwritable_outputs_are_refused_before_training(flag, where, capsys, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    if flag == "--save-dir":
        # A directory can't be made under a regular file, nor where a file is.
        path = {"under_a_file": tmp_path / "file" / "ckpt", "is_a_directory": tmp_path / "file",
                "missing_directory": tmp_path / "file" / "a" / "b"}[where]
    else:
        path = {"under_a_file": tmp_path / "file" / "run.log", "is_a_directory": tmp_path / "dir",
                "missing_directory": tmp_path / "missing" / "run.log"}[where]
    code, out, err = run_main([flag, str(path)], capsys)
    assert_refused(code, err, flag, out=out)
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"] and os.listdir(tmp_path / "dir") == []


CKPT_RUN = [*TINY, "--n-steps", "2", "--n-log-steps", "2", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("ckpt")
    with restore_signal_handlers(), open(os.devnull, "w") as null, \
            contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        assert main_mlp.main(CKPT_RUN + ["--save-dir", str(save_dir)]) == 0
    assert (save_dir / CHECKPOINT_NAME).exists()
    return save_dir


@pytest.mark.parametrize("change, key", [
    (["--n", "4"], "n ("),
    (["--batch-size", "64"], "batch_size"),
    (["--loss", "infonce"], "loss"),
    (["--seed", "1"], "seed"),
    (["--hn-beta", "1"], "hn_beta (0.0 there, 1.0 here)"),
    (["--lambda-init", "10"], "lambda_init (None there, 10.0 here)"),
])
def test_resume_from_another_configuration_is_refused(change, key, checkpoint_dir, capsys):
    argv = CKPT_RUN + ["--save-dir", str(checkpoint_dir), "--resume-training"] + change
    code, out, err = run_main(argv, capsys)
    assert_refused(code, err, "--resume-training", out=out)
    assert key in err


def test_resume_past_the_end_is_refused(checkpoint_dir, capsys):
    argv = CKPT_RUN + ["--save-dir", str(checkpoint_dir), "--resume-training", "--n-steps", "1"]
    code, out, err = run_main(argv, capsys)
    assert_refused(code, err, "--n-steps", out=out)


@pytest.mark.parametrize("lr, later", [("1e6", False), ("300", True)])
def test_diverging_run_stops_at_the_step(lr, later, capsys, tmp_path):
    """A message naming the step and the last loss, a non-zero exit, no NaN lines, the checkpoint before it.

    --lr 1e6 makes the encoder's output infinite after step 1; --lr 300 gives a NaN
    loss a few steps in, between two log lines.
    """
    argv = ["--device", "cpu", "--n", "3", "--batch-size", "32", "--only-supervised", "--lr", lr,
            "--n-steps", "200", "--n-log-steps", "10", "--seed", "0", "--cond-thresh-ratio", "0.01",
            "--log-file", str(tmp_path / "run.log"), "--save-dir", str(tmp_path / "ckpt")]
    code, out, err = run_main(argv, capsys)
    assert code not in (0, 2)
    errors = [line for line in err.splitlines() if line.startswith("main_mlp.py: error: ")]
    assert len(errors) == 1, err
    m = re.search(r"diverged at step (\d+)", errors[0])
    assert m and re.search(r"loss \d+\.\d{4}", errors[0]) and "--lr" in errors[0], errors[0]
    steps = [line for line in out.splitlines() if line.startswith("Step:")]
    assert len(steps) <= 2 and all(STEP_RE.match(line) for line in steps)  # no NaN lines
    assert "nan" not in out
    assert (tmp_path / "run.log").read_text() == out
    ckpt = tmp_path / "ckpt" / CHECKPOINT_NAME
    if later:  # the last checkpoint is from before the divergence, and finite
        assert int(m.group(1)) > 1
        state = read_checkpoint(str(ckpt), main_mlp.CHECKPOINT_LAYOUT)
        assert state["step"] < int(m.group(1))
        assert all(bool(torch.isfinite(t).all()) for t in state["encoder"].values())


@pytest.mark.slow
def test_through_the_cli(tmp_path):
    """What a shell sees: a bad flag, and a rejection sampler that would never finish a batch."""
    env = env_for_cli(CUDA_VISIBLE_DEVICES="")
    bad, sampler = run_many([
        dict(args=["--n", "1"], cwd=tmp_path, env=env, timeout=120),
        # ~1e-6 of the proposals could be accepted: the reference loops forever
        dict(args=["--n", "10", "--space", "extended_sphere", "--c-p", "0", "--p", "0", "--only-unsupervised",
                   "--threshold", "1e-6", "--seed", "0"], cwd=tmp_path, env=env, timeout=60),
    ])
    assert_refused(bad.returncode, bad.stderr, "--n", out=bad.stdout)

    assert_refused(sampler.returncode, sampler.stderr, "--threshold", "--gt-lambda")
    assert "accepts 0.00e+00 of its proposals" in sampler.stderr  # the measured rate
    assert "Step:" not in sampler.stdout and "supervised test" not in sampler.stdout  # nothing trained


def test_the_command_line_imports_no_torch():
    """sweep.py checks its runs' arguments with command_line in-process: importing it must stay cheap."""
    import subprocess
    import sys

    code = "import sys, command_line; print('torch' in sys.modules, 'numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(main_mlp.__file__)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["False", "False"], result.stderr


def test_a_summary_names_its_runs_losses_without_torch():
    """The summaries label each run's loss from the declarations (settings), not from the losses module."""
    import subprocess
    import sys

    code = ("import sys; from tools import sweep_summary; print(sweep_summary.loss_label({'space_type': "
            "'extended_sphere', 'p': '0', 'c_p': '0', 'loss': 'infonce'}), sweep_summary.loss_label({'p': '2'}), "
            "'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(main_mlp.__file__)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["infonce", "Lp", "(p=2)", "False"], result.stderr


def test_every_entry_of_the_tables_builds():
    """Each name the command line offers is an entry whose builder exists and builds what its table says."""
    import command_line
    import invertible_network_utils
    import latent_spaces
    import settings
    import spaces

    assert command_line.FLOAT32_MAX == float(torch.finfo(torch.float32).max)
    for name in settings.SPACES:
        space = latent_spaces.build_space(command_line.config(space_type=name, n=3))
        assert isinstance(space, spaces.NRealSpace) and space.n == 3, name
    for name in settings.ACTIVATIONS:
        assert invertible_network_utils.activation(name)(torch.zeros(2)).shape == (2,), name
    lam = torch.tensor([0.1, 1.0, 25.0])
    for name, entry in settings.LAMBDA_PARAMS.items():
        to_lambda, from_lambda = settings.load(entry.build)
        assert torch.allclose(to_lambda(from_lambda(lam)), lam), name
    for name, entry in settings.CONDITIONALS.items():
        assert callable(settings.load(entry.sampler)), name


@pytest.mark.parametrize("flags, dest, value", [(["--n", "1", "--n", "5"], "n", 5),
                                                (["--batch-size", "0", "--batch-size", "8"], "batch_size", 8),
                                                (["--lr", "-1", "--lr", "0.01"], "lr", 0.01)])
def test_a_repeated_flag_is_its_last_value(flags, dest, value):
    """As with argparse (and the authors' main_mlp.py), the last of a repeated flag is the one that counts:
    an earlier value out of range is not refused (a launcher appends its overrides to a base command)."""
    import command_line

    _, args = command_line.parse_args(flags)
    assert getattr(args, dest) == value
