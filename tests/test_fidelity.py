"""Where our command line does what the authors' does beyond the README's two commands.

Defaults, the settings their code runs (identity mixing, a band above 1, no
contrastive steps), the mixing saved before training, the learnable radius.
Runs are in-process (``main_mlp.main``), tiny and seeded.
"""

import os
import signal

import torch

import main_mlp
from cli_util import parse_log, run_main
from plumbing.errors import EXIT_SIGNAL, Stop

TINY = ["--device", "cpu", "--n", "4", "--batch-size", "32", "--n-steps", "3", "--n-log-steps", "2",
        "--num-eval-batches", "1", "--seed", "0"]
EXTENDED = ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0", "--only-unsupervised"]

# The authors' parser's defaults (as their log prints them when every flag is omitted).
AUTHORS_DEFAULTS = {
    "sphere_r": 1.0, "box_min": 0.0, "box_max": 1.0, "sphere_norm": False, "box_norm": False,
    "only_supervised": False, "only_unsupervised": False, "more_unsupervised": 3, "save_dir": "",
    "num_eval_batches": 10, "seed": None, "act_fct": "leaky_relu", "c_param": 0.05, "m_param": 1.0,
    "tau": 1.0, "n_mixing_layer": 3, "n": 10, "space_type": "box", "m_p": 0, "c_p": 2, "lr": 1e-4, "p": 2,
    "batch_size": 6144, "n_log_steps": 250, "n_steps": 100001, "resume_training": False,
    "gt_lambda_1": 5, "gt_lambda_2": 25, "linearly_spaced_lambda": False, "lr_lambda": 1e-3,
    "threshold": 0.1,
}


def test_defaults_are_the_authors():
    _, args = main_mlp.parse_args([])
    ours = vars(args)
    assert list(ours)[:len(AUTHORS_DEFAULTS)] == list(AUTHORS_DEFAULTS)  # their order first
    for key, value in AUTHORS_DEFAULTS.items():
        assert ours[key] == value and type(ours[key]) is type(value), key


def test_gt_lambda_printed_as_the_authors(capsys):
    """Omitted: the int defaults print as 5 and 25; passed: argparse's float, 5.0."""
    rc, out, _ = run_main(TINY + EXTENDED, capsys)
    assert rc == 0 and "\tgt_lambda_1: 5\n" in out and "\tgt_lambda_2: 25\n" in out
    rc, out, _ = run_main(TINY + EXTENDED + ["--gt-lambda-1", "5", "--gt-lambda-2", "25"], capsys)
    assert rc == 0 and "\tgt_lambda_1: 5.0\n" in out and "\tgt_lambda_2: 25.0\n" in out


def test_extended_sphere_with_the_lp_loss_runs(capsys):
    """The rejected anisotropic positives with the Lp loss: Λ of the data, no Λ̂."""
    rc, out, err = run_main(TINY + ["--space-type", "extended_sphere", "--c-p", "0", "--p", "2"], capsys)
    assert rc == 0, err
    log = parse_log(out)
    assert log["gt_lambda"] == [25.0, 25.0, 5.0, 5.0] and log["lambda_init"] is None
    assert all(s["lambda"] is None for ph in log["phases"] for s in ph["steps"])
    assert log["final"] is not None


def test_supervised_phase_prints_the_untrained_lambda(capsys):
    rc, out, _ = run_main(TINY + ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0"], capsys)
    assert rc == 0
    log = parse_log(out)
    supervised, unsupervised = log["phases"]
    init = [round(v, 1) for v in torch.nn.functional.softplus(torch.tensor(log["lambda_init"])).tolist()]
    assert all(s["lambda"] == init for s in supervised["steps"])
    assert all(s["lambda"] is not None for s in unsupervised["steps"])
    # one final evaluation, after the last phase
    assert out.count("linear mean: ") == 1 and out.rstrip().splitlines()[-1].startswith("perm mean: ")


def test_learnable_radius_printed_and_untouched_by_aninfonce(capsys):
    """--sphere-norm: the radius after every Step line; AnInfoNCE normalises, so r gets no gradient."""
    rc, out, _ = run_main(TINY + EXTENDED + ["--sphere-norm"], capsys)
    assert rc == 0
    lines = out.splitlines()
    steps = [i for i, line in enumerate(lines) if line.startswith("Step: ")]
    assert steps
    for i in steps:
        assert lines[i + 1] == "r: Parameter containing:"
        assert lines[i + 2] == "tensor([1.], requires_grad=True)" or lines[i + 2] == "tensor([1.0000], requires_grad=True)"
        assert lines[i + 3].startswith("learned lambda values: ")


def test_identity_mixing(capsys):
    rc, out, _ = run_main(TINY + ["--n-mixing-layer", "0", "--only-unsupervised"], capsys)
    assert rc == 0
    log = parse_log(out)
    assert log["layer_conds"] == [] and log["id_lin"] == 1.0 and log["id_perm"] == 1.0


def test_threshold_above_one(capsys):
    rc, out, err = run_main(TINY + EXTENDED + ["--threshold", "1.5"], capsys)
    assert rc == 0, err
    assert "\tthreshold: 1.5\n" in out


def test_no_contrastive_steps(capsys):
    """--more-unsupervised 0: the contrastive phase prints its header and encoder, trains nothing."""
    rc, out, _ = run_main(TINY + ["--more-unsupervised", "0"], capsys)
    assert rc == 0
    log = parse_log(out)
    assert [len(ph["steps"]) for ph in log["phases"]] == [2, 0]
    assert log["final"] is not None


def test_mixing_saved_before_training(tmp_path, capsys, monkeypatch):
    """g.pth is on disk before the first step, as the reference writes it."""
    def stop_at_once(*_):
        raise Stop(signal.SIGTERM)

    monkeypatch.setattr(main_mlp, "train_phase", stop_at_once)
    rc, _, _ = run_main(TINY + EXTENDED + ["--save-dir", str(tmp_path)], capsys)
    assert rc == EXIT_SIGNAL[signal.SIGTERM]
    g = torch.load(os.path.join(tmp_path, "g.pth"), weights_only=True)
    assert list(g) == ["0.weight", "2.weight", "4.weight"]  # the reference's keys
    assert all(w.shape == (4, 4) for w in g.values())


def test_saved_encoders_have_the_authors_keys(tmp_path, capsys):
    rc, _, _ = run_main(TINY + EXTENDED + ["--save-dir", str(tmp_path), "--box-norm"], capsys)
    assert rc == 0
    f = torch.load(os.path.join(tmp_path, "unsup_f.pth"), weights_only=True)
    assert list(f)[-1] == "13.max_abs_bound" and len(f) == 15
