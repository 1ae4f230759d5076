"""Every kind of (space, marginal, conditional, loss, output normalisation) runs to the end.

A representative subset of the combinations the command line accepts, each a
few steps on the CPU, checked through the log it prints (parsed strictly:
reference format, finite numbers). They run in-process through
``main_mlp.main(argv)``: the same code path as the CLI minus the ~3 s of
interpreter and torch start-up per run; the CLI itself is exercised through
subprocess in test_cli.py, test_validation.py and test_signals.py.
"""

import math

import pytest

import settings
from cli_util import all_steps, parse_log, run_main


TINY = ["--device", "cpu", "--n", "3", "--batch-size", "32", "--n-steps", "3", "--more-unsupervised", "1",
        "--n-log-steps", "2", "--num-eval-batches", "2", "--seed", "0"]

# (id, flags). Together they cover: the four spaces; marginals 0/1/2/3;
# conditionals 0 (vMF / rejected normal) and 1/2/3; losses p = 0 (dot
# product / AnInfoNCE / InfoNCE), 1, 2, 0.5; outputs none / fixed sphere /
# learnable sphere / learnable box; every --act-fct; both --negatives; the
# supervised-only, unsupervised-only and default supervised+unsupervised runs.
COMBINATIONS = [
    ("box-default-sup+unsup", []),
    ("box-m0-c2-p2-boxnorm", ["--space-type", "box", "--c-p", "2", "--p", "2", "--box-norm",
                              "--only-unsupervised", "--act-fct", "relu"]),
    ("box-m1-c3-p0.5", ["--space-type", "box", "--m-p", "1", "--c-p", "3", "--p", "0.5",
                        "--only-unsupervised", "--act-fct", "elu"]),
    ("box-m2-c1-p0-spherenorm", ["--space-type", "box", "--m-p", "2", "--c-p", "1", "--p", "0",
                                 "--sphere-norm", "--only-unsupervised"]),
    ("sphere-m0-vmf-p0", ["--space-type", "sphere", "--c-p", "0", "--c-param", "10", "--p", "0",
                          "--only-unsupervised", "--act-fct", "smooth_leaky_relu"]),
    ("sphere-m1-c1-p1-spherenorm", ["--space-type", "sphere", "--m-p", "1", "--c-p", "1", "--p", "1",
                                    "--sphere-norm", "--only-unsupervised", "--act-fct", "softplus"]),
    ("sphere-m2-c2-p2-r2", ["--space-type", "sphere", "--m-p", "2", "--c-p", "2", "--p", "2",
                            "--sphere-r", "2", "--only-unsupervised"]),
    ("sphere-m3-c3-p0-boxnorm", ["--space-type", "sphere", "--m-p", "3", "--c-p", "3", "--p", "0",
                                 "--box-norm", "--only-unsupervised"]),
    ("unbounded-m1-c1-p1", ["--space-type", "unbounded", "--m-p", "1", "--c-p", "1", "--p", "1",
                            "--only-unsupervised"]),
    ("unbounded-m2-c2-p2-boxnorm", ["--space-type", "unbounded", "--m-p", "2", "--c-p", "2", "--p", "2",
                                    "--box-norm", "--only-unsupervised"]),
    ("unbounded-m3-c3-p0.5-spherenorm", ["--space-type", "unbounded", "--m-p", "3", "--c-p", "3",
                                         "--p", "0.5", "--sphere-norm", "--only-unsupervised"]),
    ("extended-aninfonce", ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
                            "--only-unsupervised"]),
    ("extended-infonce-symmetric-spherenorm", ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
                                               "--loss", "infonce", "--negatives", "symmetric",
                                               "--sphere-norm", "--only-unsupervised"]),
    ("extended-c0-p2", ["--space-type", "extended_sphere", "--c-p", "0", "--p", "2", "--only-unsupervised"]),
    ("extended-c2-p1", ["--space-type", "extended_sphere", "--c-p", "2", "--p", "1", "--only-unsupervised"]),
    ("extended-sup-only", ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
                           "--only-supervised"]),
]


@pytest.mark.parametrize("flags", [c[1] for c in COMBINATIONS], ids=[c[0] for c in COMBINATIONS])
def test_combination_runs_to_the_end(flags, capsys):
    rc, out, err = run_main(TINY + flags, capsys)
    assert rc == 0, err
    assert "Traceback" not in err
    log = parse_log(out)  # every line in the reference format, numbers finite

    args = log["args"]
    space = flags[flags.index("--space-type") + 1] if "--space-type" in flags else "box"
    assert args["space_type"] == space

    expected = [True, False]
    if "--only-unsupervised" in flags:
        expected = [False]
    if "--only-supervised" in flags:
        expected = [True]
    assert [ph["supervised"] for ph in log["phases"]] == expected

    derived = settings.derive(space, args["p"], args["c_p"], args["loss"])
    learns_lambda = settings.LOSSES[derived.loss].learns_lambda
    assert (log["lambda_init"] is not None) == learns_lambda
    assert (log["gt_lambda"] is not None) == derived.anisotropic
    for ph in log["phases"]:
        # logged at step % 2 == 1 (and step == --n-steps): 1 and 3
        assert [s["step"] for s in ph["steps"]] == [1, 3]
        for s in ph["steps"]:
            assert all(math.isfinite(s[k]) for k in ("loss", "mean_loss", "lin", "perm"))
            assert 0.0 <= s["perm"] <= 1.0
            # learned Λ̂ is printed in both phases of AnInfoNCE / InfoNCE runs, as the reference
            assert (s["lambda"] is not None) == learns_lambda
            if s["lambda"] is not None and "infonce" in flags:
                assert len(set(s["lambda"])) == 1  # one shared λ
            # the learnable radius is printed after every Step line
            assert (s["r"] is not None) == ("--sphere-norm" in flags)
        # the encoder's output: learnable box / learnable sphere / unit sphere (p = 0) / none
        last = ph["f"][-1]
        if "--box-norm" in flags:
            assert last == "  (13): SoftclipLayer()"
        elif "--sphere-norm" in flags or args["p"] == "0":
            assert last == "  (13): RescaleLayer()"
        else:
            assert last.startswith("  (12): Linear(")
    # one final evaluation, after the last phase
    assert log["final"] is not None
    assert len(all_steps(log)) == 2 * len(expected)
