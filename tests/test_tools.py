"""Tests of the log tools: logparse.py, compare_logs.py, plot_logs.py, sweep.py.

Every log here is written by ``render_log`` into tmp_path, in the format of
main_mlp.py (docs/log-format.md); no test reads the published
reference logs or trains a model. The command-line tools run through
subprocess, as a user runs them, in each test's first call; the further
calls of a test call their ``main(argv)`` in-process (``run_tool_main``).
"""

import csv
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import logparse  # noqa: E402
from tools import metrics_io  # noqa: E402
from cli_util import run_tool_main, tool_argv, tool_env  # noqa: E402

PY = sys.executable
BIMODAL = [25.0] * 5 + [5.0] * 5
LINEAR = list(np.linspace(5.0, 25.0, 10))
ENCODER = """f:  Sequential(
  (0): Linear(in_features=10, out_features=100, bias=True)
  (1): LeakyReLU(negative_slope=0.01)
  (2): Linear(in_features=100, out_features=10, bias=True)
  (3): RescaleLayer()
)"""


# --------------------------------------------------------------------------
# A log in main_mlp.py's format, from given numbers


def tensor_repr(values, prefix, device=None):
    """A torch-like repr of a 1-d tensor: 4 decimals wrap after 8 entries (as torch's 80 columns do)."""
    if all(float(v).is_integer() for v in values):
        items = [f"{v:.0f}." for v in values]
    else:
        items = [f"{v:.4f}" for v in values]
    per_line = 8 if len(items[0]) > 3 else len(items)
    width = max(len(item) for item in items)
    items = [item.rjust(width) for item in items]
    rows = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    indent = " " * len("tensor([")  # torch indents under its own repr, not under our prefix
    body = (",\n" + indent).join(rows)
    suffix = f", device='{device}'" if device else ""
    return f"{prefix}tensor([{body}]{suffix})"


def step_lines(records, with_lambda):
    lines = []
    for r in records:
        lines.append(f"Step: {r['step']} \t Loss: {r['loss']:.4f} \t <Loss>: {r['mean_loss']:.4f} \t "
                     f"Lin. Disentanglement: {r['lin']:.4f} \t Perm. Disentanglement: {r['perm']:.4f}")
        if with_lambda:
            lines.append(f"learned lambda values: {[round(v, 1) for v in r['lambda']]} \t")
    return lines


def make_steps(n_logged=40, every=1000, lin_end=0.99, perm_end=0.9, lam_end=BIMODAL, seed=0):
    """Step records of a plausible run: scores rising to their end values, Λ̂ approaching ``lam_end``."""
    rng = np.random.default_rng(seed)
    lam_end = np.asarray(lam_end, dtype=float)[rng.permutation(len(lam_end))]
    records = []
    for i in range(n_logged):
        progress = 1 - np.exp(-5 * i / n_logged)
        # Plain floats, as main_mlp.py logs them (a numpy scalar would print as np.float64(...)).
        records.append({"step": 1 + i * every, "loss": float(7.6 - 3 * progress),
                        "mean_loss": float(7.6 - 3 * progress), "lin": float(0.4 + (lin_end - 0.4) * progress),
                        "perm": float(0.4 + (perm_end - 0.4) * progress),
                        "lambda": [float(v) for v in 0.7 + (lam_end - 0.7) * progress]})
    return records


def render_log(steps, gt=BIMODAL, final=None, supervised_steps=None, n_steps=13334, seed=0,
               linear=False, loss="aninfonce", device=None, extra_lines=()):
    """The text main_mlp.py would write for these step records (dicts as in the metrics file)."""
    args = [("sphere_r", "1.0"), ("only_supervised", "False"),
            ("only_unsupervised", str(supervised_steps is None)), ("more_unsupervised", "3"),
            ("save_dir", ""), ("seed", str(seed)), ("space_type", "extended_sphere"), ("m_p", "0"),
            ("c_p", "0"), ("p", "0"), ("batch_size", "1000"), ("n_log_steps", "250"),
            ("n_steps", str(n_steps)), ("gt_lambda_1", "5.0"), ("gt_lambda_2", "25.0"),
            ("linearly_spaced_lambda", str(linear)), ("loss", loss), ("checkpoint_every", "None")]
    lines = ["Arguments:"] + [f"\t{k}: {v}" for k, v in args]
    lines.append(tensor_repr([0.0123, -0.0456, 0.1, -0.2, 0.05, 0.07, -0.01, 0.02, -0.03, 0.04], "lambda init:  "))
    lines.append(tensor_repr(gt, "ground truth Lambda:  ", device=device))
    lines += ["condition number threshold: 3.612555",
              "layer 1/3,  condition number: 3.45114242342263",
              "layer 2/3,  condition number: 3.412501780572424",
              "layer 3/3,  condition number: 3.586476497872276",
              "Id. Lin. Disentanglement: 0.6900", "Id. Perm. Disentanglement: 0.4870"]
    if supervised_steps is not None:
        lines += ["supervised test: True", ENCODER] + step_lines(supervised_steps, with_lambda=False)
        lines += ["linear mean: 0.999 std: 0.0001", "perm mean: 0.998 std: 0.0002"]
    lines += ["supervised test: False", ENCODER] + list(extra_lines) + step_lines(steps, with_lambda=True)
    if final is not None:
        lines += [f"linear mean: {final[0]} std: {final[1]}", f"perm mean: {final[2]} std: {final[3]}"]
    return "\n".join(lines) + "\n"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def run_tool(*argv, cwd=ROOT):
    return subprocess.run(tool_argv(*argv), cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------
# logparse


def test_every_line_type_parses(tmp_path):
    sup = make_steps(n_logged=3, every=250)
    steps = make_steps(n_logged=5, lam_end=LINEAR)
    text = render_log(steps, gt=LINEAR, final=(0.995, 0.001, 0.98, 0.002), supervised_steps=sup,
                      linear=True, device="cuda:0")
    # The wrapped ground truth with its device suffix, as torch prints it on a GPU.
    assert "22.7778, 25.0000], device='cuda:0')" in text and "\n        " in text
    log = logparse.parse_log(write(tmp_path / "a.log", text))

    assert log.args["n_steps"] == "13334" and log.args["save_dir"] == "" and log.args["loss"] == "aninfonce"
    assert log.lambda_init == pytest.approx([0.0123, -0.0456, 0.1, -0.2, 0.05, 0.07, -0.01, 0.02, -0.03, 0.04])
    assert log.gt_lambda == pytest.approx(LINEAR, abs=1e-4)
    assert log.cond_threshold == pytest.approx(3.612555)
    assert log.cond_numbers == pytest.approx([3.45114242342263, 3.412501780572424, 3.586476497872276])
    assert (log.id_lin, log.id_perm) == (0.69, 0.487)
    assert [p.name for p in log.phases] == ["supervised", "unsupervised"]
    assert not log.truncated and log.skipped == []

    supervised, unsupervised = log.phases
    assert [r["step"] for r in supervised.steps] == [1, 251, 501]
    assert all(r["lambda"] is None for r in supervised.steps)
    assert supervised.final == {"lin_mean": 0.999, "lin_std": 0.0001, "perm_mean": 0.998, "perm_std": 0.0002}
    assert supervised.encoder.startswith("Sequential(") and "RescaleLayer()" in supervised.encoder

    last = unsupervised.steps[-1]
    assert last["step"] == 4001
    for key in ("loss", "mean_loss", "lin", "perm"):
        assert last[key] == pytest.approx(steps[-1][key], abs=5e-5)
    assert last["lambda"] == pytest.approx([round(v, 1) for v in steps[-1]["lambda"]])
    assert unsupervised.final == {"lin_mean": 0.995, "lin_std": 0.001, "perm_mean": 0.98, "perm_std": 0.002}
    assert log.main_phase() is unsupervised and unsupervised.last_lambda()[0] == 4001


def test_single_line_tensors_and_unknown_lines_are_skipped(tmp_path):
    text = render_log(make_steps(n_logged=3), extra_lines=["", "[unsupervised] step 1/12003  4.5 steps/s"])
    log = logparse.parse_log(write(tmp_path / "a.log", text))
    assert log.gt_lambda == BIMODAL
    lines = text.split("\n")
    assert [lines[i - 1] for i in log.skipped] == ["", "[unsupervised] step 1/12003  4.5 steps/s"]


@pytest.mark.parametrize("cut", ["in_step", "in_lambda", "in_tensor"])
def test_truncated_log_parses_up_to_last_complete_line(tmp_path, cut):
    text = render_log(make_steps(n_logged=5), gt=LINEAR)
    if cut == "in_step":
        text = text[:text.rfind("Step:") + 30]  # the last Step line cut mid-number
        expected_last, last_has_lambda = 3001, True
    elif cut == "in_lambda":
        text = text[:text.rfind("learned lambda") + 30]
        expected_last, last_has_lambda = 4001, False
    else:
        # Cut after the first line of the wrapped ground truth: a repr open at the end.
        text = text[:text.find("\n", text.find("ground truth Lambda")) + 1]
        expected_last, last_has_lambda = None, None
    log = logparse.parse_log(write(tmp_path / "cut.log", text))
    assert log.truncated
    if expected_last is None:
        assert log.gt_lambda is None and log.phases == []
    else:
        last = log.phase("unsupervised").steps[-1]
        assert last["step"] == expected_last and (last["lambda"] is not None) == last_has_lambda


def test_cut_inside_a_multibyte_character_is_a_truncation(tmp_path):
    data = render_log(make_steps(n_logged=2)).encode() + "Step: 5 λ".encode()[:-1]
    path = tmp_path / "cut.log"
    path.write_bytes(data)
    log = logparse.parse_log(path)
    assert log.truncated and log.phase("unsupervised").steps[-1]["step"] == 1001


def _line_number(text, needle):
    return text.split("\n").index(needle) + 1


@pytest.mark.parametrize("old, new", [
    ("Lin. Disentanglement: 0.4000", "Lin. Disentanglement: 0.4x00"),  # malformed Step line
    ("learned lambda values: [0.7,", "learned lambda values: [zero,"),
    ("linear mean: 0.99 std: 0.001", "linear mean: 0.99 std:"),
    ("supervised test: False", "supervised test: maybe"),
    ("Id. Lin. Disentanglement: 0.6900", "Id. Lin. Disentanglement: high"),
    ("layer 2/3,  condition number: 3.412501780572424", "layer 2/3,  condition number: big"),
    ("condition number threshold: 3.612555", "condition number threshold: ?"),
    ("\tseed: 0", "\tseed 0"),
])
def test_malformed_line_raises_with_file_and_line(tmp_path, old, new):
    text = render_log(make_steps(n_logged=3), final=(0.99, 0.001, 0.9, 0.002))
    assert old in text
    bad_line = next(line for line in text.split("\n") if old in line).replace(old, new)
    text = text.replace(old, new, 1)
    path = write(tmp_path / "bad.log", text)
    with pytest.raises(logparse.LogParseError) as info:
        logparse.parse_log(path)
    assert info.value.line == _line_number(text, bad_line)
    assert str(info.value).startswith(f"{path}:{info.value.line}: ")


def test_structural_errors_name_the_line(tmp_path):
    # A lambda line with no Step line before it, and a tensor repr that is not one.
    base = render_log(make_steps(n_logged=2))
    text = base.replace("supervised test: False\n", "supervised test: False\nlearned lambda values: [1.0] \t\n")
    with pytest.raises(logparse.LogParseError) as info:
        logparse.parse_log(write(tmp_path / "a.log", text))
    assert info.value.line == _line_number(text, "learned lambda values: [1.0] \t")
    text = base.replace("ground truth Lambda:  tensor([", "ground truth Lambda:  tensor(([")
    with pytest.raises(logparse.LogParseError, match="not closed|not a 1-d tensor"):
        logparse.parse_log(write(tmp_path / "b.log", text))


def test_missing_or_binary_file_is_an_error(tmp_path):
    with pytest.raises(logparse.LogParseError, match="cannot read"):
        logparse.parse_log(tmp_path / "nope.log")
    path = tmp_path / "bin.log"
    path.write_bytes(b"Arguments:\n\xff\xfe\x00garbage\nmore\n")
    with pytest.raises(logparse.LogParseError) as info:
        logparse.parse_log(path)
    assert info.value.line == 2


def test_repeated_step_keeps_last_and_resumed_header_continues_phase(tmp_path):
    steps = make_steps(n_logged=4)
    text = render_log(steps)
    again = dict(steps[2], lin=0.1234)
    text += "\n".join(step_lines([again], with_lambda=True)) + "\n"
    # A resumed run's stdout appended: the header again, then more steps.
    text += "supervised test: False\n" + ENCODER + "\n"
    text += "\n".join(step_lines([dict(steps[-1], step=5001)], with_lambda=True)) + "\n"
    phase = logparse.parse_log(write(tmp_path / "a.log", text)).phase("unsupervised")
    assert [r["step"] for r in phase.steps] == [1, 1001, 2001, 3001, 5001]
    assert phase.by_step()[2001]["lin"] == 0.1234


def test_lambda_matching():
    learned = [24.0, 5.5, 26.0, 4.5]
    truth = [5.0, 25.0, 5.0, 25.0]
    sorted_learned, sorted_truth, rel = metrics_io.match_sorted(learned, truth)
    assert list(sorted_learned) == [4.5, 5.5, 24.0, 26.0] and list(sorted_truth) == [5, 5, 25, 25]
    assert rel == pytest.approx([0.1, 0.1, 0.04, 0.04])
    assert metrics_io.lambda_error(learned, truth) == pytest.approx(0.07)
    with pytest.raises(ValueError):
        metrics_io.match_sorted([1.0], truth)
    assert metrics_io.lambda_error([1.0], truth) is None and metrics_io.lambda_error(None, truth) is None


def test_only_plot_logs_imports_matplotlib():
    result = run_tool("-c", "import sys; from tools import logparse, compare_logs, sweep; print('matplotlib' in sys.modules)")
    assert result.returncode == 0 and result.stdout.strip() == "False"


# --------------------------------------------------------------------------
# compare_logs.py


def pair(tmp_path, alter=None, n_logged=40, lam_end=BIMODAL, gt=BIMODAL):
    """Log A and a log B of "another seed": small differences, Λ̂ in another order, optionally altered."""
    a = make_steps(n_logged=n_logged, lam_end=lam_end, seed=0)
    b = make_steps(n_logged=n_logged, lam_end=lam_end, seed=1)
    for i, r in enumerate(b):
        r["lin"] += 0.004 * (-1) ** i
        r["perm"] -= 0.01
        r["mean_loss"] += 0.05
        r["lambda"] = [v * 1.03 for v in r["lambda"]]
    if alter is not None:
        alter(b)
    path_a = write(tmp_path / "a.log", render_log(a, gt=gt))
    path_b = write(tmp_path / "b.log", render_log(b, gt=gt, seed=1))
    return path_a, path_b


def test_compare_agree(tmp_path):
    result = run_tool("tools.compare_logs", *pair(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: AGREE" in result.stdout
    table = [line for line in result.stdout.split("\n") if line.strip()[:1].isdigit() and "  " in line]
    shown_steps = [int(line.split()[0]) for line in table if len(line.split()) == 10]
    # About 20 rows spread evenly, with the first and the last common step.
    assert 15 <= len(shown_steps) <= 22 and shown_steps[0] == 1 and shown_steps[-1] == 39001
    assert "rank agreement: not applicable" in result.stdout  # bimodal λ are not distinct


def test_compare_all_rows_and_rank_agreement(tmp_path):
    result = run_tool("tools.compare_logs", *pair(tmp_path, lam_end=LINEAR, gt=LINEAR), "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(40 of 40 common steps shown" in result.stdout
    assert "rank agreement with λ" in result.stdout and "A 1.000, B 1.000" in result.stdout


def _bump_lin(records, step, delta):
    for r in records:
        if r["step"] == step:
            r["lin"] += delta


def test_compare_altered_lin_disagrees(tmp_path):
    result = run_tool("tools.compare_logs", *pair(tmp_path, alter=lambda b: _bump_lin(b, 30001, 0.05)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verdict: DISAGREE" in result.stdout and "at step 30001" in result.stdout


def test_compare_ignores_differences_before_min_step(tmp_path):
    path_a, path_b = pair(tmp_path, alter=lambda b: _bump_lin(b, 5001, 0.3))
    assert run_tool("tools.compare_logs", path_a, path_b).returncode == 0
    assert run_tool_main("tools.compare_logs", path_a, path_b, "--min-step", "1").returncode == 1


def test_compare_altered_lambda_disagrees(tmp_path):
    def scale_last(b):
        b[-1]["lambda"] = [v * 1.3 for v in b[-1]["lambda"]]
    result = run_tool("tools.compare_logs", *pair(tmp_path, alter=scale_last))
    assert result.returncode == 1 and "sorted Λ̂ differ" in result.stdout


def test_compare_short_logs_use_last_common_step(tmp_path):
    path_a, path_b = pair(tmp_path, n_logged=5)
    result = run_tool("tools.compare_logs", path_a, path_b)
    assert result.returncode == 0
    assert "none >= 15000" in result.stdout and "last common step, 4001" in result.stdout


def test_compare_unreadable_inputs_exit_2(tmp_path):
    good, _ = pair(tmp_path, n_logged=3)
    garbage = write(tmp_path / "garbage.log", "this is\nnot a training log\n")
    malformed = write(tmp_path / "malformed.log", good.read_text().replace("Loss: ", "Loss: x", 1))
    bad_line = _line_number(malformed.read_text(), next(
        line for line in malformed.read_text().split("\n") if "Loss: x" in line))
    for run, other, where in ((run_tool, garbage, f"{garbage}:1: not a log"),
                              (run_tool_main, malformed, f"{malformed}:{bad_line}: malformed Step line"),
                              (run_tool_main, tmp_path / "missing.log", f"{tmp_path / 'missing.log'}: cannot read")):
        result = run("tools.compare_logs", good, other)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == "" and len(result.stderr.strip().split("\n")) == 1
        assert where in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# plot_logs.py


@pytest.mark.slow
def test_plot_writes_png_of_expected_size(tmp_path):
    import matplotlib.image

    path_a, path_b = pair(tmp_path, n_logged=10, lam_end=LINEAR, gt=LINEAR)
    out = tmp_path / "curves.png"
    result = run_tool("tools.plot_logs", path_a, path_b, "-o", out)
    assert result.returncode == 0, result.stderr
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (900, 1200)  # the default 12 x 9 in at 100 dpi
    # Not blank: the curves and the text put many distinct colours on it.
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 20

    bad = write(tmp_path / "bad.log", "Step: 1 \t Loss: x\n")
    result = run_tool_main("tools.plot_logs", bad, "-o", tmp_path / "x.png", "--size", "3", "2", "--dpi", "50")
    assert result.returncode == 2 and f"{bad}:1:" in result.stderr and not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_plot_writes_the_name_it_prints_and_bounds_its_size(tmp_path):
    path_a, _ = pair(tmp_path, n_logged=4)
    result = run_tool("tools.plot_logs", path_a, "-o", tmp_path / "figure", "--size", "3", "2", "--dpi", "50")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'figure'}"
    assert (tmp_path / "figure").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "figure.png").exists()
    for size, dpi in ((["1000", "1000"], "100"), (["0.01", "0.01"], "100")):
        result = run_tool_main("tools.plot_logs", path_a, "-o", tmp_path / "big.png", "--size", *size, "--dpi", dpi)
        assert result.returncode == 2 and "--size/--dpi" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "big.png").exists()


def test_logs_that_are_not_logs_are_refused_without_reading_them_whole(tmp_path):
    result = run_tool("tools.compare_logs", "/dev/zero", "/dev/zero")
    assert result.returncode == 2 and "not a log" in result.stderr
    big = tmp_path / "one_line.log"
    big.write_bytes(b"x" * (logparse.MAX_LINE_BYTES + 10))
    with pytest.raises(logparse.LogParseError, match="longer than"):
        logparse.parse_log(str(big))


# --------------------------------------------------------------------------
# sweep.py


def test_sweep_print_jobs(tmp_path):
    out_dir = tmp_path / "sw"
    result = run_tool("tools.sweep", "--seeds", "0", "1", "7", "--out-dir", out_dir, "--name", "bi", "--executor", "print",
                      "--", "--n", "10", "--space", "extended_sphere", "--save-dir", "ck")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().split("\n")
    assert len(lines) == 3 and not out_dir.exists()  # nothing run, nothing written
    for seed, line in zip((0, 1, 7), lines):
        argv = shlex.split(line)
        assert argv[1].endswith("main_mlp.py") and argv[2:6] == ["--n", "10", "--space", "extended_sphere"]
        assert argv[argv.index("--seed") + 1] == str(seed)
        assert argv[argv.index("--log-file") + 1] == f"{out_dir}/bi_seed{seed}.log"
        assert argv[argv.index("--metrics-file") + 1] == f"{out_dir}/bi_seed{seed}.jsonl"
        assert argv[argv.index("--save-dir") + 1] == f"ck/bi_seed{seed}"
        assert argv[-4:] == [">", f"{out_dir}/bi_seed{seed}.out", "2>", f"{out_dir}/bi_seed{seed}.err"]
        assert "OMP_NUM_THREADS" not in line
    result = run_tool_main("tools.sweep", "--seeds", "0", "--out-dir", out_dir, "--threads", "4", "--executor", "print",
                           "--")
    assert result.stdout.startswith("OMP_NUM_THREADS=4 MKL_NUM_THREADS=4 ")
    result = run_tool_main("tools.sweep", "--seeds", "0", "--out-dir", out_dir, "--executor", "print", "--", "--seed", "3")
    assert result.returncode == 2 and "sets --seed" in result.stderr


def _write_runs(out_dir, name, finals, lins, lam_scale, n_logged=6, gt=BIMODAL):
    out_dir.mkdir(exist_ok=True)
    for seed, (final, lin, scale) in enumerate(zip(finals, lins, lam_scale)):
        steps = make_steps(n_logged=n_logged, lin_end=lin, lam_end=[v * scale for v in gt], seed=seed)
        write(out_dir / f"{name}_seed{seed}.log", render_log(steps, gt=gt, final=final, seed=seed))


@pytest.mark.slow  # sweep.py through subprocess
def test_sweep_summarize_only(tmp_path):
    out_dir = tmp_path / "sw"
    # Three finished runs: final Lin. 0.90, 0.92, 0.94; Λ̂ 10 % too large everywhere.
    _write_runs(out_dir, "an", [(0.90, 0.01, 0.80, 0.01), (0.92, 0.01, 0.82, 0.01), (0.94, 0.01, 0.84, 0.01)],
                [0.9] * 3, [1.1] * 3)
    # Two unfinished runs: their last logged Lin. is used.
    _write_runs(out_dir, "info", [None, None], [0.5, 0.7], [1.0, 1.0], n_logged=4)
    write(out_dir / "info_seed9.log", "")  # a run that logged nothing: left out

    result = run_tool("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "an")
    assert result.returncode == 0, result.stderr
    md = (out_dir / "an_summary.md").read_text()
    assert "Steps per run: 5,001" in md and "asked for: 40,002" in md
    assert "| an | aninfonce | bimodal 25.0 / 5.0 | 3 (3) | 5,001 | 0.9200 ± 0.0200 | 0.8200 ± 0.0200 |" in md
    rows = list(csv.DictReader(open(out_dir / "an_summary.csv")))
    assert len(rows) == 1 and rows[0]["seeds"] == "3" and rows[0]["finished"] == "3"
    assert float(rows[0]["lin_mean"]) == pytest.approx(0.92)
    errors = [metrics_io.lambda_error([round(v, 1) for v in make_steps(n_logged=6, lam_end=[1.1 * v for v in BIMODAL],
                                                                     seed=s)[-1]["lambda"]], BIMODAL)
              for s in range(3)]
    assert float(rows[0]["lambda_error_mean"]) == pytest.approx(np.mean(errors))

    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--names", "an", "in*")
    assert result.returncode == 0, result.stderr
    assert "info_seed9.log has no logged step" in result.stderr
    rows = {r["name"]: r for r in csv.DictReader(open(out_dir / "sweep_summary.csv"))}
    assert set(rows) == {"an", "info"} and rows["info"]["seeds"] == "2" and rows["info"]["finished"] == "0"
    md = (out_dir / "sweep_summary.md").read_text()
    assert "Steps per run: 3,001 to 5,001" in md and "2 of 5 runs have no final scores" in md
    last_lins = [make_steps(n_logged=4, lin_end=v, seed=s)[-1]["lin"] for s, v in enumerate((0.5, 0.7))]
    assert float(rows["info"]["lin_mean"]) == pytest.approx(np.mean(np.round(last_lins, 4)))

    # A killed run beside two finished ones is listed, not averaged; an unreadable log is skipped.
    _write_runs(out_dir, "mix", [(0.90, 0.01, 0.80, 0.01), (0.94, 0.01, 0.84, 0.01), None],
                [0.9, 0.9, 0.2], [1.0] * 3, n_logged=4)
    write(out_dir / "mix_seed7.log", "Arguments:\n\tn: 10\nStep: 1 \t Loss: x\n")
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "mix")
    assert result.returncode == 0, result.stderr
    assert "mix_seed7.log" in result.stderr and "left out of the summary" in result.stderr
    rows = list(csv.DictReader(open(out_dir / "mix_summary.csv")))
    assert rows[0]["seeds"] == "3" and rows[0]["finished"] == "2"
    assert float(rows[0]["lin_mean"]) == pytest.approx(0.92)
    assert "unfinished: " in (out_dir / "mix_summary.md").read_text()

    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--names", "nothing*")
    assert result.returncode == 2 and "no log nothing*_seed<S>.log" in result.stderr


@pytest.mark.slow  # sweep.py through subprocess
def test_sweep_reference_section(tmp_path):
    out_dir = tmp_path / "sw"
    _write_runs(out_dir, "an", [None, None, None], [0.90, 0.92, 0.94], [1.0] * 3)  # steps 1 .. 5,001
    ref_steps = make_steps(n_logged=10, lin_end=0.95, perm_end=0.97, seed=7)  # steps 1 .. 9,001
    ref = write(tmp_path / "published.log", render_log(ref_steps))
    result = run_tool("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "an",
                      "--reference", f"an={ref}")
    assert result.returncode == 0, result.stderr
    md = (out_dir / "an_summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| an | published.log |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "5,001" and cells[3] == "3"  # the last step every run and the reference logged
    ours = [round(make_steps(n_logged=6, lin_end=v, seed=s)[-1]["lin"], 4) for s, v in enumerate((0.90, 0.92, 0.94))]
    assert cells[6] == (f"{np.mean(ours):.4f} ± {np.std(ours, ddof=1):.4f} "
                        f"[{min(ours):.4f}, {max(ours):.4f}]")
    assert cells[7] == f"{ref_steps[5]['lin']:.4f}" and ref_steps[5]["step"] == 5001
    assert cells[9] == f"{ref_steps[5]['perm']:.4f}"

    for bad, message in ((["--reference", "an"], "expected NAME=LOG"),
                         (["--reference", f"other={ref}"], "no run of configuration 'other'"),
                         (["--reference", f"an={tmp_path / 'missing.log'}"], "missing.log")):
        result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "an", *bad)
        assert result.returncode == 2 and "--reference" in result.stderr and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    shifted = write(tmp_path / "shifted.log", render_log(make_steps(n_logged=10, every=777)[1:]))
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "an",
                           "--reference", f"an={shifted}")
    assert result.returncode == 2 and "no step logged by the reference and every an run" in result.stderr


FAKE_TRAINER = '''
import argparse, os, shutil, sys
parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int)
parser.add_argument("--log-file")
parser.add_argument("--metrics-file")
parser.add_argument("--template")
parser.add_argument("--save-dir")
args, _ = parser.parse_known_args()  # --resume-if-exists, --checkpoint-minutes
print("threads", os.environ.get("OMP_NUM_THREADS"))
if args.seed == 2:
    sys.exit("seed 2 fails on purpose")
shutil.copy(args.template, args.log_file)
if args.seed == 3:
    sys.exit("seed 3 fails after its final scores")
'''


@pytest.mark.slow  # sweep.py through subprocess
def test_sweep_runs_jobs_in_parallel_and_summarizes(tmp_path):
    # A stand-in for main_mlp.py that copies a pre-written log: the scheduling,
    # the files and the summary are tested without training anything.
    script = write(tmp_path / "fake_trainer.py", textwrap.dedent(FAKE_TRAINER))
    template = write(tmp_path / "template.log",
                     render_log(make_steps(n_logged=3), final=(0.97, 0.01, 0.8, 0.02)))
    out_dir = tmp_path / "sw"
    result = run_tool("tools.sweep", "--seeds", "0", "1", "2", "--jobs", "2", "--threads", "1", "--out-dir", out_dir,
                      "--name", "fake", "--script", script, "--", "--template", template)
    assert result.returncode == 1, result.stdout + result.stderr  # seed 2 failed
    assert "seed 2: FAILED (exit 1)" in result.stdout and "seed 2 fails on purpose" in result.stdout
    for seed in (0, 1):
        assert (out_dir / f"fake_seed{seed}.out").read_text() == "threads 1\n"
        assert (out_dir / f"fake_seed{seed}.log").read_text() == template.read_text()
    rows = list(csv.DictReader(open(out_dir / "fake_summary.csv")))
    assert rows[0]["seeds"] == "2" and float(rows[0]["lin_mean"]) == pytest.approx(0.97)


@pytest.mark.slow  # the stand-in trainer through subprocess
def test_a_run_that_fails_after_its_final_scores_is_reported_as_the_summary_counts_it(tmp_path):
    """A run whose log has its final scores, written with its own arguments, has finished, whatever
    its exit status says: the sweep's report and its summary agree."""
    script = write(tmp_path / "fake_trainer.py", textwrap.dedent(FAKE_TRAINER))
    template = write(tmp_path / "template.log", render_log(make_steps(n_logged=3), final=(0.97, 0.01, 0.8, 0.02)))
    out_dir = tmp_path / "sw"
    result = run_tool_main("tools.sweep", "--seeds", "0", "3", "--threads", "1", "--out-dir", out_dir, "--name", "fake",
                           "--script", script, "--", "--template", template)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fake seed 3: done: its log has its final scores (after them: exit 1)" in result.stdout
    rows = list(csv.DictReader(open(out_dir / "fake_summary.csv")))
    assert rows[0]["seeds"] == "2" and rows[0]["finished"] == "2"


# --------------------------------------------------------------------------
# learning_check.py


def _early_runs(out_dir, lins):
    """Logs of runs whose Lin. at steps 1,001..4,001 is the authors' mean plus ``offset``, one per offset."""
    from tools import learning_check

    out_dir.mkdir()
    for seed, offset in enumerate(lins):
        steps = [{"step": s, "loss": 5.0, "mean_loss": learning_check.AUTHORS[s]["mean_loss"][0],
                  "lin": learning_check.AUTHORS[s]["lin"][0] + offset,
                  "perm": learning_check.AUTHORS[s]["perm"][0], "lambda": [1.0] * 10}
                 for s in learning_check.STEPS]
        write(out_dir / f"{learning_check.NAME}_seed{seed}.log", render_log(steps, seed=seed))


@pytest.mark.slow
def test_learning_check_against_the_authors_figures(tmp_path):
    _early_runs(tmp_path / "same", [-0.01, 0.0, 0.01])
    result = run_tool("tools.learning_check", "--summarize-only", "--out-dir", tmp_path / "same")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 of our runs" in result.stdout and "| 3,001 |" in result.stdout and "within" in result.stdout
    _early_runs(tmp_path / "slow", [-0.10, -0.09, -0.11])  # three sds below the authors' code
    result = run_tool_main("tools.learning_check", "--summarize-only", "--out-dir", tmp_path / "slow")
    assert result.returncode == 1 and "NOT within" in result.stdout
    result = run_tool_main("tools.learning_check", "--summarize-only", "--out-dir", tmp_path / "missing")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


# --------------------------------------------------------------------------
# Per-dimension scores from metrics files


def test_lambda_groups():
    bimodal = {"n": 10, "space_type": "extended_sphere", "c_p": 0, "gt_lambda_1": 5, "gt_lambda_2": 25,
               "linearly_spaced_lambda": False}

    def groups(args):
        return metrics_io.lambda_groups(metrics_io.ground_truth_lambda(args, args["n"]), args["n"])

    assert groups(bimodal) == [("content (λ = 25)", [0, 1, 2, 3, 4]), ("style (λ = 5)", [5, 6, 7, 8, 9])]
    swapped = dict(bimodal, gt_lambda_1=50)  # the rest now has the larger λ: it is the content
    assert groups(swapped)[0] == ("content (λ = 50)", [5, 6, 7, 8, 9])
    linear = dict(bimodal, n=3, linearly_spaced_lambda=True, gt_lambda_1=25, gt_lambda_2=5)
    assert groups(linear) == [("λ = 5.0", [2]), ("λ = 15.0", [1]), ("λ = 25.0", [0])]
    assert groups(dict(bimodal, space_type="box"))[0][0] == "all dimensions"


def _metrics_file(path, content, style):
    """A metrics file of a bimodal n = 4 run whose content / style dimensions have these R² at every step."""
    import json

    args = {"n": 4, "space_type": "extended_sphere", "c_p": 0, "p": 0, "loss": "aninfonce", "gt_lambda_1": 5,
            "gt_lambda_2": 25, "linearly_spaced_lambda": False}
    lines = [json.dumps({"type": "config", "args": args})]
    for step in (1, 251, 501):
        dims = [content, content, style, style]
        lines.append(json.dumps({"type": "step", "phase": "unsupervised", "step": step, "lin": sum(dims) / 4,
                                 "lin_dims": dims, "perm_dims": dims}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_compare_and_plot_per_dimension(tmp_path):
    a = _metrics_file(tmp_path / "an.jsonl", 0.95, 0.90)
    b = _metrics_file(tmp_path / "info.jsonl", 0.96, 0.05)  # InfoNCE's collapse of the style latents
    result = run_tool("tools.compare_logs", "--per-dimension", a, b)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1].split()
    assert last == ["501", "0.9500", "0.9600", "0.9000", "0.0500"]
    assert "content (λ = 25) A" in result.stdout and "style (λ = 5) B" in result.stdout
    result = run_tool_main("tools.compare_logs", "--per-dimension", a, tmp_path / "missing.jsonl")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    out = tmp_path / "collapse.png"
    result = run_tool("tools.plot_logs", "--per-dimension", a, b, "-o", out, "--size", "6", "3", "--dpi", "50")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_sweep_summary_groups_r2_by_lambda(tmp_path):
    out_dir = tmp_path / "sw"
    _write_runs(out_dir, "info", [(0.7, 0.01, 0.6, 0.01)] * 2, [0.7, 0.7], [1.0, 1.0])
    _metrics_file(out_dir / "info_seed0.jsonl", 0.96, 0.05)
    _metrics_file(out_dir / "info_seed1.jsonl", 0.94, 0.15)
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "info",
                           "--group-steps", "251")
    assert result.returncode == 0, result.stderr
    md = (out_dir / "info_summary.md").read_text()
    assert "## R² by ground-truth λ" in md
    assert "info (aninfonce), end: content (λ = 25) 0.9500 ± 0.0141; style (λ = 5) 0.1000 ± 0.0707" in md
    assert "info (aninfonce), step 251: content (λ = 25) 0.9500 ± 0.0141" in md


def test_compare_logs_ignores_how_a_run_was_run():
    """Arguments that say where or how a run ran (checkpoint cadence, resume switches, paths, the
    seed) are not differences between two logs; what it computed is."""
    import types

    from tools import compare_logs

    base = {"lr": "0.0001", "n": "10", "save_dir": "a", "checkpoint_minutes": "None", "resume_if_exists": "False",
            "overwrite": "False", "seed": "0", "log_file": "a.log"}
    other = dict(base, save_dir="b", checkpoint_minutes="10.0", resume_if_exists="True", overwrite="True",
                 seed="1", log_file="b.log")
    log_a, log_b = types.SimpleNamespace(args=base), types.SimpleNamespace(args=other)
    assert compare_logs.differing_args(log_a, log_b) == []
    log_c = types.SimpleNamespace(args=dict(other, lr="0.001"))
    assert compare_logs.differing_args(log_a, log_c) == [("lr", "0.0001", "0.001")]
    # A log that does not name hn_beta ran with β = 0 (it is printed only when set).
    assert compare_logs.differing_args(log_a, types.SimpleNamespace(args=dict(base, hn_beta="0.0"))) == []
    assert compare_logs.differing_args(log_a, types.SimpleNamespace(args=dict(base, hn_beta="2.0"))) == [
        ("hn_beta", "0.0", "2.0")]
    # Nor lambda_init: one that does not name it started from the reference's Λ̂.
    assert compare_logs.differing_args(log_a, types.SimpleNamespace(args=dict(base, lambda_init="None"))) == []
    assert compare_logs.differing_args(types.SimpleNamespace(args=dict(base, lambda_init="10.0")), log_a) == [
        ("lambda_init", "10.0", "None")]


def _run_with_block(path, seed, style, extra=0.0):
    """A finished bimodal n = 4 run's metrics file with the block score, and a field no tool knows."""
    import json

    args = {"n": 4, "space_type": "extended_sphere", "c_p": 0, "p": 0, "loss": "aninfonce", "gt_lambda_1": 5,
            "gt_lambda_2": 25, "linearly_spaced_lambda": False, "n_steps": 501, "more_unsupervised": 1}
    records = [{"type": "config", "args": args}]
    for step in (1, 251, 501):
        records.append({"type": "step", "phase": "unsupervised", "step": step, "loss": 5.0, "mean_loss": 5.0,
                        "lin": 0.8, "perm": 0.7, "lin_dims": [0.9, 0.9, style, style], "perm_dims": [0.8] * 4,
                        "lambda": [25.0, 25.0, 5.0, 5.0], "block_orthogonal_r2": 0.5 + step / 1000,
                        "block_linear_r2": 0.3, "block_linear_groups": [0.95, style], "new_metric": 0.25 + extra})
    records.append({"type": "final", "lin_mean": 0.8 + extra, "lin_std": 0.01, "perm_mean": 0.7, "perm_std": 0.01,
                    "lin_dims": [0.9, 0.9, style, style], "perm_dims": [0.8] * 4, "block_orthogonal_r2_mean": 0.99,
                    "block_orthogonal_r2_std": 0.01, "block_linear_r2_mean": 0.3, "block_linear_groups": [0.96, style], "final_metric": 1.5})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    write(path.with_suffix(".log"), render_log(make_steps(n_logged=3), seed=seed))
    return path


def test_a_field_added_to_the_records_reaches_the_summary(tmp_path):
    out_dir = tmp_path / "sw"
    out_dir.mkdir()
    for seed, (style, extra) in enumerate(((0.4, 0.0), (0.6, 0.1))):
        _run_with_block(out_dir / f"b_seed{seed}.jsonl", seed, style, extra)
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "b")
    assert result.returncode == 0, result.stderr
    md = (out_dir / "b_summary.md").read_text()
    # The main table from the final records, not from the logs beside them.
    assert "| b | aninfonce | bimodal 25 / 5 | 2 (2) | 501 | 0.8500 ± 0.0707 |" in md
    assert "| b | last | new_metric | 0.3000 ± 0.0707 | 2 |" in md
    assert "| b | last | block_orthogonal_r2 | 1.0010 ± 0.0000 | 2 |" in md
    assert "| b | final | final_metric | 1.5000 ± 0.0000 | 2 |" in md
    assert "| b | final | block_orthogonal_r2_mean | 0.9900 ± 0.0000 | 2 |" in md
    # Per λ group: the R², Perm., and the block score of each group.
    assert ("- b (aninfonce), end: content (λ = 25) 0.9000 ± 0.0000; style (λ = 5) 0.5000 ± 0.1414; "
            "Perm. 0.7000 ± 0.0000;") in md
    assert "block_linear_groups: content (λ = 25) 0.9500 ± 0.0000, style (λ = 5) 0.5000 ± 0.1414" in md
    assert "- b (aninfonce), final: content (λ = 25) 0.9000 ± 0.0000" in md
    assert "block_linear_groups: content (λ = 25) 0.9600 ± 0.0000" in md
    [row] = csv.DictReader(open(out_dir / "b_summary.csv"))
    assert float(row["last.new_metric_mean"]) == pytest.approx(0.3) and float(row["final.final_metric_mean"]) == 1.5


def test_block_groups_follow_the_groups_first_latent():
    """The run orders its λ groups by first appearance; the summary's content group may come second."""
    gt = [5.0, 5.0, 25.0, 25.0]  # --gt-lambda-2 5 below --gt-lambda-1 25: the first latents are the style
    groups = metrics_io.lambda_groups(gt, 4)
    assert groups == [("content (λ = 25)", [2, 3]), ("style (λ = 5)", [0, 1])]
    assert metrics_io.per_group([0.1, 0.9], groups) == [0.9, 0.1]
    assert metrics_io.per_group([0.1, 0.3, 0.8, 1.0], groups) == pytest.approx([0.9, 0.2])
    assert metrics_io.per_group([1.0, 2.0, 3.0], groups) is None


@pytest.mark.slow
def test_plot_draws_every_other_score_of_metrics_files(tmp_path):
    from tools import plot_logs

    metrics = _run_with_block(tmp_path / "b_seed0.jsonl", 0, 0.5)
    runs = [metrics_io.read_any(metrics, "unsupervised"), metrics_io.read_any(metrics.with_suffix(".log"),
                                                                               "unsupervised")]
    fig = plot_logs.plot(runs, ["m", "log"], "unsupervised", (6, 4), 50, "t")
    [other] = [ax for ax in fig.axes if ax.get_title().startswith("other scores")]
    lines = {line.get_label(): line for line in other.get_lines()}
    # every number of the step records without a panel of its own, the field no tool knows too; the log has none
    assert set(lines) == {"m (R²_BO)", "m (R²_BL)", "m (new_metric)"}  # the declared labels, else the field
    assert list(lines["m (R²_BO)"].get_ydata()) == pytest.approx([0.501, 0.751, 1.001])
    out = tmp_path / "b.png"
    result = run_tool_main("tools.plot_logs", metrics, metrics.with_suffix(".log"), "-o", out, "--size", "6", "4",
                           "--dpi", "50")
    assert result.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG", result.stderr
