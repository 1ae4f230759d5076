"""The log tools on bad input and in bad conditions: exit statuses that keep their meaning, one line
on stderr instead of a traceback, and nothing already written lost or overwritten.

compare_logs.py: 0 agree, 1 disagree, 2 bad input, on every path (a closed stdout included).
sweep.py, plot_logs.py, learning_check.py: 2 and one line naming the flag for bad arguments; no
tool writes over a file it reads; sweep.py never overwrites a finished run's log, and skips a
finished run only when its log's arguments are those it would run now.

The logs are written by test_tools' helpers (synthetic) or by tiny real sweeps. The tools run
through subprocess, as a user runs them, where the process is the point (closed streams, encodings,
limits, kills, locks) and for the first case of each kind of check; the other cases call their
``main(argv)`` in-process (``run_tool_main``), which answers the same.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from cli_util import TINY_RUN, assert_refused, placed, run_tool_main, tool_argv, tool_env
from test_tools import (FAKE_TRAINER, PY, ROOT, _early_runs, _metrics_file, _write_runs, make_steps, pair,
                        render_log, run_tool, write)

pytestmark = pytest.mark.slow  # most tests here run a tool or a tiny training through subprocess


def one_line_error(result, *needles):
    """A tool's refusal (a CompletedProcess): exit 2, one line on stderr that names ``needles``."""
    assert_refused(result.returncode, result.stderr, *needles, prog=None)


def run_closed_stdout(*argv):
    """Run a tool whose stdout is a pipe nobody reads (``tool | true``); returns the exit status."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the tool starts: its first write gets EPIPE
    try:
        proc = subprocess.run(tool_argv(*argv), cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    return proc


# --------------------------------------------------------------------------
# compare_logs.py: the exit status is the verdict


def test_compare_logs_of_different_n_disagree_without_a_traceback(tmp_path):
    four = [25.0, 25.0, 5.0, 5.0]
    a = write(tmp_path / "a.log", render_log(make_steps(n_logged=5)))
    b = write(tmp_path / "b.log", render_log(make_steps(n_logged=5, lam_end=four), gt=four))
    result = run_tool_main("tools.compare_logs", a, b)
    assert result.returncode == 1 and result.stderr == "", result.stderr
    assert "verdict: DISAGREE" in result.stdout and "Λ̂ has a different number of entries" in result.stdout
    assert "ground truth differs" in result.stdout


@pytest.mark.parametrize("agree", [True, False])
def test_compare_logs_keeps_its_verdict_when_stdout_is_closed(tmp_path, agree):
    alter = None if agree else (lambda b: [r.update(lin=r["lin"] + 0.3) for r in b])
    proc = run_closed_stdout("tools.compare_logs", *pair(tmp_path, alter=alter))
    assert proc.returncode == (0 if agree else 1), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_closed_stdout_changes_no_tools_status(tmp_path):
    """``tool | true``: the work is done and the exit status is what it would have been."""
    log = write(tmp_path / "run.log", render_log(make_steps(n_logged=4)))
    proc = run_closed_stdout("tools.plot_logs", log, "-o", tmp_path / "run.png", "--size", "3", "2", "--dpi", "50")
    assert proc.returncode == 0 and (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG", proc.stderr
    script = write(tmp_path / "fake_trainer.py", textwrap.dedent(FAKE_TRAINER))
    template = write(tmp_path / "template.log", render_log(make_steps(n_logged=3), final=(0.97, 0.01, 0.8, 0.02)))
    proc = run_closed_stdout("tools.sweep", "--seeds", "0", "1", "--threads", "1", "--out-dir", tmp_path / "sw",
                             "--name", "fake", "--script", script, "--", "--template", template)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "sw" / "fake_seed1.log").read_text() == template.read_text()
    assert (tmp_path / "sw" / "fake_summary.csv").exists()
    for offset, status in ((0.0, 0), (-0.10, 1)):  # learning_check's verdict: within, NOT within
        out_dir = tmp_path / f"early{status}"
        _early_runs(out_dir, [offset - 0.01, offset, offset + 0.01])
        proc = run_closed_stdout("tools.learning_check", "--summarize-only", "--out-dir", out_dir)
        assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr


def test_compare_logs_under_an_ascii_stdout(tmp_path):
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    for argv, status in ((["tools.compare_logs", *pair(tmp_path)], 0), (["tools.sweep", "--help"], 0),
                         (["tools.compare_logs", "--help"], 0), (["tools.plot_logs", "--help"], 0),
                         (["tools.learning_check", "--help"], 0)):
        result = subprocess.run(tool_argv(*argv), cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == status and "Traceback" not in result.stderr, (argv, result.stderr)
    result = subprocess.run([PY, "-m", "tools.compare_logs", *pair(tmp_path)], cwd=ROOT, capture_output=True, timeout=60,
                            env=env)
    assert b"\\u0394<Loss>" in result.stdout and b"verdict: AGREE" in result.stdout  # Δ escaped, not lost


# --------------------------------------------------------------------------
# --per-dimension: metrics files that are not ours, or not of the same latents


def _foreign_metrics(tmp_path):
    """Metrics-like files that are not main_mlp.py's: each must be refused in one line."""
    config = {"type": "config", "args": {"n": 4, "space_type": "extended_sphere", "c_p": 0, "gt_lambda_1": 5,
                                         "gt_lambda_2": 25, "linearly_spaced_lambda": False}}
    cases = {
        "no_args.jsonl": [{"type": "config", "args": {"foo": 1}},
                          {"type": "step", "phase": "unsupervised", "step": 1, "lin_dims": [0.5] * 4}],
        "dims_text.jsonl": [config, {"type": "step", "phase": "unsupervised", "step": 1, "lin_dims": "abcd"}],
        "no_step.jsonl": [config, {"type": "step", "phase": "unsupervised", "lin_dims": [0.5] * 4}],
        "short_dims.jsonl": [config, {"type": "step", "phase": "unsupervised", "step": 1, "lin_dims": [0.5]}],
        "args_list.jsonl": [{"type": "config", "args": [1, 2]},
                            {"type": "step", "phase": "unsupervised", "step": 1, "lin_dims": [0.5] * 4}],
    }
    paths = []
    for name, records in cases.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        paths.append(path)
    return paths


def _metrics_of_n(path, n):
    args = {"n": n, "space_type": "extended_sphere", "c_p": 0, "gt_lambda_1": 5, "gt_lambda_2": 25,
            "linearly_spaced_lambda": False}
    records = [{"type": "config", "args": args}] + [
        {"type": "step", "phase": "unsupervised", "step": s, "lin": 0.5, "lin_dims": [0.5] * n} for s in (1, 251)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_per_dimension_refuses_foreign_records_in_one_line(tmp_path):
    good = _metrics_file(tmp_path / "good.jsonl", 0.9, 0.5)
    for i, bad in enumerate(_foreign_metrics(tmp_path)):
        run = run_tool if i == 0 else run_tool_main
        one_line_error(run("tools.compare_logs", "--per-dimension", good, bad), str(bad))
        one_line_error(run("tools.plot_logs", "--per-dimension", good, bad, "-o", tmp_path / "x.png"), str(bad))
    assert not (tmp_path / "x.png").exists()


def test_per_dimension_refuses_files_of_different_latents(tmp_path):
    four, six = _metrics_of_n(tmp_path / "four.jsonl", 4), _metrics_of_n(tmp_path / "six.jsonl", 6)
    for run, (a, b) in ((run_tool, (four, six)), (run_tool_main, (six, four))):
        one_line_error(run("tools.compare_logs", "--per-dimension", a, b), str(b), "n 4", "n 6")
        one_line_error(run("tools.plot_logs", "--per-dimension", a, b, "-o", tmp_path / "x.png"), str(b), "n 4", "n 6")
    assert not (tmp_path / "x.png").exists()


def test_the_summary_averages_lambda_groups_of_one_kind_only(tmp_path):
    """Two seeds of one name whose ground-truth λ differ have different groups: no R² by group, no traceback."""
    out_dir = tmp_path / "sw"
    _write_runs(out_dir, "mixed", [(0.7, 0.01, 0.6, 0.01)] * 2, [0.7, 0.7], [1.0, 1.0])
    for seed, high in ((0, 25), (1, 50)):
        args = {"n": 4, "space_type": "extended_sphere", "c_p": 0, "gt_lambda_1": 5, "gt_lambda_2": high,
                "linearly_spaced_lambda": False}
        step = {"type": "step", "phase": "unsupervised", "step": 1, "lin": 0.5, "perm": 0.5, "lin_dims": [0.5] * 4}
        (out_dir / f"mixed_seed{seed}.jsonl").write_text(json.dumps({"type": "config", "args": args}) + "\n"
                                                         + json.dumps(step) + "\n")
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "mixed")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "R² by ground-truth λ" not in (out_dir / "mixed_summary.md").read_text()


def test_the_summary_leaves_foreign_metrics_out(tmp_path):
    """sweep.py's λ-group R² reads the same files: a foreign one is left out, not a traceback."""
    out_dir = tmp_path / "sw"
    out_dir.mkdir()
    write(out_dir / "a_seed0.log", render_log(make_steps(n_logged=3), final=(0.9, 0.01, 0.8, 0.01)))
    (out_dir / "a_seed0.jsonl").write_text(_foreign_metrics(tmp_path)[1].read_text())
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "a")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "R² by ground-truth λ" not in (out_dir / "a_summary.md").read_text()


# --------------------------------------------------------------------------
# No tool writes over a file it reads


def test_plot_logs_does_not_write_over_its_input(tmp_path):
    log = write(tmp_path / "run.log", render_log(make_steps(n_logged=4)))
    before = log.read_bytes()
    os.symlink(log, tmp_path / "link.log")
    for run, output in ((run_tool, log), (run_tool_main, tmp_path / "link.log"),
                        (run_tool_main, f"{tmp_path}/./run.log")):
        one_line_error(run("tools.plot_logs", log, "-o", output), "-o", "run.log")
    metrics = _metrics_file(tmp_path / "m.jsonl", 0.9, 0.5)
    one_line_error(run_tool_main("tools.plot_logs", "--per-dimension", metrics, "-o", metrics), "-o")
    assert log.read_bytes() == before and metrics.read_text().startswith('{"type": "config"')


def test_sweep_summary_does_not_write_over_a_reference(tmp_path):
    out_dir = tmp_path / "sw"
    out_dir.mkdir()
    write(out_dir / "an_seed0.log", render_log(make_steps(n_logged=3), final=(0.9, 0.01, 0.8, 0.01)))
    reference = write(out_dir / "an_summary.md", render_log(make_steps(n_logged=3, seed=5)))
    before = reference.read_text()
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "an",
                           "--reference", f"an={reference}")
    one_line_error(result, "an_summary.md")
    assert reference.read_text() == before and not (out_dir / "an_summary.csv").exists()


# --------------------------------------------------------------------------
# sweep.py / learning_check.py: bad names and output directories


def _fake_sweep(tmp_path, *sweep_args, run=run_tool):
    script = write(tmp_path / "fake_trainer.py", textwrap.dedent(FAKE_TRAINER))
    template = write(tmp_path / "template.log", render_log(make_steps(n_logged=3), final=(0.97, 0.01, 0.8, 0.02)))
    return run("tools.sweep", "--seeds", "0", "--threads", "1", "--script", script, *sweep_args,
                    "--", "--template", template)


@pytest.mark.parametrize("name", ["exp[1]", "", "a*", "b?"])
def test_sweep_refuses_a_name_it_could_not_find_again(tmp_path, name):
    result = _fake_sweep(tmp_path, "--out-dir", tmp_path / "sw", "--name", name,
                         run=run_tool if name == "exp[1]" else run_tool_main)
    one_line_error(result, "--name")
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("summary_name", ["", "a/b"])
def test_sweep_refuses_a_summary_name_that_is_not_a_file_name(tmp_path, summary_name):
    out_dir = tmp_path / "sw"
    out_dir.mkdir()
    write(out_dir / "an_seed0.log", render_log(make_steps(n_logged=3), final=(0.9, 0.01, 0.8, 0.01)))
    run = run_tool if summary_name == "" else run_tool_main
    result = run("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "an", "--summary-name", summary_name)
    one_line_error(result, "--summary-name")
    assert os.listdir(out_dir) == ["an_seed0.log"]


def test_out_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    a_file = write(tmp_path / "a_file", "not a directory\n")
    for run, out_dir in ((run_tool, a_file), (run_tool_main, a_file / "sub")):
        one_line_error(_fake_sweep(tmp_path, "--out-dir", out_dir, run=run), "--out-dir")
        one_line_error(run("tools.learning_check", "--seeds", "1", "2", "--out-dir", out_dir), "--out-dir")
    assert a_file.read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_out_dir_that_is_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for run, out_dir in ((run_tool, locked), (run_tool_main, locked / "sub")):
            one_line_error(_fake_sweep(tmp_path, "--out-dir", out_dir, run=run), "--out-dir")
            one_line_error(run("tools.learning_check", "--out-dir", out_dir), "--out-dir")
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------
# sweep.py with main_mlp.py: grid keys, and logs already there

SWEEP = ["-m", "tools.sweep"]


def sweep_in(cwd, *sweep_args, after=(), in_process=False):
    """sweep.py in ``cwd``, out-dir ``out``, name ``a``, seed 0, the tiny run plus ``after``: through
    subprocess, or its ``main`` in-process (its runs of main_mlp.py are subprocesses either way)."""
    if in_process:
        return run_tool_main("tools.sweep", "--seeds", "0", "--threads", "1", "--out-dir", "out", "--name", "a",
                             *sweep_args, "--", *TINY_RUN, *after, cwd=cwd)
    return subprocess.run([PY, *SWEEP, "--seeds", "0", "--threads", "1", "--out-dir", "out", "--name", "a",
                           *sweep_args, "--", *TINY_RUN, *after], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=tool_env(OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A directory where ``sweep_in`` has run: ``out`` holds its finished run (log, metrics, checkpoint)."""
    where = tmp_path_factory.mktemp("finished")
    result = sweep_in(where)
    assert result.returncode == 0, result.stdout + result.stderr
    return where


def copy_of(finished_sweep, cwd):
    """``cwd`` as if ``sweep_in`` had run there (a copy of ``finished_sweep``'s ``out``)."""
    shutil.copytree(finished_sweep / "out", cwd / "out")
    return cwd


def test_grid_keys_are_full_flag_names_of_main_mlp(tmp_path):
    def grid(*items, after=(), in_process=True):
        return sweep_in(tmp_path, "--executor", "print", *[a for item in items for a in ("--grid", item)],
                        after=after, in_process=in_process)

    # An abbreviation: argparse would take it.
    one_line_error(grid("see=1,2", in_process=False), "--grid", "see", "--seed")
    one_line_error(grid("nope=1,2"), "--grid", "nope", "main_mlp.py")
    one_line_error(grid("seed=1,2"), "--grid", "--seed")  # the sweep's own
    one_line_error(grid("only-unsupervised=1,2"), "--grid", "switch")
    one_line_error(grid("lr=on,off"), "--grid", "--lr")
    one_line_error(grid("lr=0.1,0.01", after=["--lr", "0.5"]), "--grid", "--lr", "after '--'")
    one_line_error(grid("lr=0.1", "lr=0.2"), "--grid", "twice")
    one_line_error(grid("act-fct=a/b,a-b"), "--grid", "same name")
    result = grid("lr_lambda=0.1,0.01", "linearly-spaced-lambda=on,off", in_process=False)  # dest, flag name
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and not (tmp_path / "out").exists()
    assert "--lr-lambda 0.1 --linearly-spaced-lambda --save-dir" in lines[0]
    assert "--lr-lambda 0.1 --save-dir" in lines[1] and "out/a_lr_lambda-0.1_linearly-spaced-lambda-off" in lines[1]
    assert "--lr-lambda 0.01" in lines[3]
    # Every configuration over every seed (test_cluster runs a grid under submitit at one seed).
    seeds = sweep_in(tmp_path, "--executor", "print", "--seeds", "0", "1", "--grid", "loss=aninfonce,infonce",
                     in_process=True)
    assert seeds.returncode == 0, seeds.stderr
    logs = [line.split("--log-file ")[1].split()[0] for line in seeds.stdout.splitlines()]
    assert logs == [f"out/a_loss-{loss}_seed{seed}.log" for loss in ("aninfonce", "infonce") for seed in (0, 1)]


def test_skip_done_skips_only_a_run_of_the_same_arguments(tmp_path, finished_sweep):
    copy_of(finished_sweep, tmp_path)
    log, summary = tmp_path / "out" / "a_seed0.log", tmp_path / "out" / "a_summary.md"
    before, summary_before = log.read_bytes(), summary.read_bytes()
    assert os.path.exists(tmp_path / "out" / "checkpoints" / "a_seed0" / "checkpoint.pth")

    again = sweep_in(tmp_path, "--skip-done")
    assert again.returncode == 0 and "a seed 0: already finished, skipped" in again.stdout, again.stderr
    changed = sweep_in(tmp_path, "--skip-done", after=["--lr", "0.01"], in_process=True)
    one_line_error(changed, "a seed 0", "out/a_seed0.log", "lr 0.0001", "lr 0.01", "--name", "--out-dir")
    assert "skipped" not in changed.stdout
    assert log.read_bytes() == before and summary.read_bytes() == summary_before

    # Without its checkpoint a finished run would start over and overwrite its log: refused, whatever
    # the arguments.
    os.rename(tmp_path / "out" / "checkpoints", tmp_path / "elsewhere")
    one_line_error(sweep_in(tmp_path), "a seed 0", "overwritten", "--skip-done")
    one_line_error(sweep_in(tmp_path, after=["--lr", "0.01"], in_process=True), "a seed 0", "lr 0.0001", "lr 0.01")
    assert log.read_bytes() == before and summary.read_bytes() == summary_before


def test_a_finished_sweep_is_still_extended_from_its_checkpoints(tmp_path, finished_sweep):
    copy_of(finished_sweep, tmp_path)
    longer = sweep_in(tmp_path, after=["--n-steps", "5"])
    assert longer.returncode == 0, longer.stdout + longer.stderr
    text = (tmp_path / "out" / "a_seed0.log").read_text()
    assert "\tn_steps: 5\n" in text and "Step: 5 " in text


# --------------------------------------------------------------------------
# A closed stdout or stderr (the shell's >&- and 2>&-): not a pipe, no stream at all


def run_closed(fd, *argv):
    """Run a tool as ``tool >&-`` (``fd`` 1) or ``tool 2>&-`` (2); the other stream is captured."""
    return subprocess.run(["bash", "-c", f'"$@" {fd}>&-', "bash", *tool_argv(*argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_compare_logs_with_a_closed_stream_keeps_its_status(tmp_path):
    a, b = pair(tmp_path)
    result = run_closed(1, "tools.compare_logs", a, a)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    result = run_closed(1, "tools.compare_logs", a, b, "--lin-tol", "0")
    assert result.returncode == 1 and result.stderr == "", result.stderr
    result = run_closed(2, "tools.compare_logs", a, tmp_path / "nope.log")
    assert result.returncode == 2 and result.stdout == ""
    # The training script's parser is the same: a bad flag is 2 (not 1) with nowhere to say it.
    assert run_closed(2, "main_mlp.py", "--lr", "nan").returncode == 2


def test_plot_and_learning_check_with_a_closed_stream(tmp_path):
    log = write(tmp_path / "run.log", render_log(make_steps(n_logged=4)))
    out = tmp_path / "run.png"
    result = run_closed(1, "tools.plot_logs", log, "-o", out, "--size", "3", "2", "--dpi", "50")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    image = out.read_bytes()
    assert image[:4] == b"\x89PNG" and b"wrote" not in image  # its stdout is not the image it opened
    result = run_closed(2, "tools.plot_logs", tmp_path / "nope.log", "-o", tmp_path / "x.png")
    assert result.returncode == 2 and not (tmp_path / "x.png").exists()
    for offset, status in ((0.0, 0), (-0.10, 1)):
        out_dir = tmp_path / f"early{status}"
        _early_runs(out_dir, [offset - 0.01, offset, offset + 0.01])
        result = run_closed(1, "tools.learning_check", "--summarize-only", "--out-dir", out_dir)
        assert result.returncode == status and "Traceback" not in result.stderr, result.stderr
    result = run_closed(2, "tools.learning_check", "--summarize-only", "--out-dir", tmp_path / "missing")
    assert result.returncode == 2


# --------------------------------------------------------------------------
# Metrics files that are cut, lie about n, or hold what no run writes


def _records(n=4, steps=(1, 251, 501), content=0.9, style=0.5, **step_fields):
    args = {"n": n, "space_type": "extended_sphere", "c_p": 0, "p": 0, "loss": "aninfonce", "gt_lambda_1": 5,
            "gt_lambda_2": 25, "linearly_spaced_lambda": False, "n_steps": 501, "more_unsupervised": 1}
    dims = [content] * (n // 2) + [style] * (n - n // 2)
    return [{"type": "config", "args": args}] + [
        {"type": "step", "phase": "unsupervised", "step": s, "loss": 5.0, "mean_loss": 5.0, "lin": 0.7, "perm": 0.6,
         "lin_dims": dims, "perm_dims": dims, **step_fields} for s in steps]


def _jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_a_cut_metrics_file_keeps_its_lambda_groups_in_the_summary(tmp_path):
    out_dir = tmp_path / "sw"
    out_dir.mkdir()
    for seed, style in ((0, 0.5), (1, 0.7)):
        write(out_dir / f"a_seed{seed}.log", render_log(make_steps(n_logged=3)))
        # Killed while writing its next record: the last line has no end.
        _jsonl(out_dir / f"a_seed{seed}.jsonl", _records(style=style), tail='{"type": "step", "phase": "unsu')
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "a")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"{out_dir / 'a_seed0.jsonl'}: its last line is cut off" in result.stderr
    md = (out_dir / "a_summary.md").read_text()
    assert "a (aninfonce), end: content (λ = 25) 0.9000 ± 0.0000; style (λ = 5) 0.6000 ± 0.1414" in md
    assert "| a | 0 | 501 | unfinished: step 501 (metrics file cut off) |" in md


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_AS"), reason="no address-space limit")
def test_a_config_that_claims_a_billion_latents_allocates_nothing(tmp_path):
    import resource

    records = _records()
    records[0]["args"]["n"] = 10 ** 9
    huge = _jsonl(tmp_path / "huge.jsonl", records)
    good = _jsonl(tmp_path / "good.jsonl", _records())

    def limited():  # 2 GiB of address space: 10^9 latents' lists would take far more
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    for argv in (["tools.compare_logs", "--per-dimension", good, huge],
                 ["tools.plot_logs", "--per-dimension", good, huge, "-o", tmp_path / "x.png"]):
        result = subprocess.run(tool_argv(*argv), cwd=ROOT, capture_output=True, text=True, timeout=120,
                                preexec_fn=limited, env=dict(os.environ, OMP_NUM_THREADS="1",
                                                             OPENBLAS_NUM_THREADS="1"))
        one_line_error(result, f"{huge}:1:", "n = 1000000000", "4 per-dimension scores")


@pytest.mark.parametrize("case, line", [
    ("not_an_object", 3), ("duplicate_step", 4), ("nan_lin_dims", 3), ("unknown_type", 2), ("no_config", 1),
    ("text_score", 2)])
def test_records_no_run_writes_are_refused_naming_the_line(tmp_path, case, line):
    records = _records()
    lines = [json.dumps(r) for r in records]
    if case == "not_an_object":
        lines.insert(2, "[1, 2, 3]")
    elif case == "duplicate_step":
        lines.insert(3, lines[1])
    elif case == "nan_lin_dims":
        lines[2] = lines[2].replace('"lin_dims": [0.9', '"lin_dims": [NaN', 1)
    elif case == "text_score":
        lines[1] = lines[1].replace('"lin": 0.7', '"lin": "0.7"')
    elif case == "unknown_type":
        lines.insert(1, json.dumps({"type": "note", "text": "hello"}))
    else:
        lines = lines[1:]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    good = _jsonl(tmp_path / "good.jsonl", _records())
    run = run_tool if case == "not_an_object" else run_tool_main
    one_line_error(run("tools.compare_logs", "--per-dimension", good, bad), f"{bad}:{line}:")
    # The summary says which file and line it could not use, and reads the run's log instead.
    summary_reads_the_log_instead(run, tmp_path, bad, f"{line}:")


def summary_reads_the_log_instead(run, tmp_path, bad, where):
    """A sweep summary of one run whose metrics file is ``bad``: a warning naming ``bad``'s FILE:``where``,
    the run read from its log, exit 0."""
    out_dir = tmp_path / "sw"
    out_dir.mkdir()
    write(out_dir / "a_seed0.log", render_log(make_steps(n_logged=3)))
    (out_dir / "a_seed0.jsonl").write_text(bad.read_text())
    result = run("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "a")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"warning: {out_dir / 'a_seed0.jsonl'}:{where}" in result.stderr


def test_one_bounded_number_type_for_every_tool(tmp_path):
    import argparse

    from plumbing.argparse_utils import bounded

    seed = bounded(int, at_least=0, at_most=2 ** 63 - 1)
    assert seed("0") == 0 and seed(str(2 ** 63 - 1)) == 2 ** 63 - 1
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer >= 0 and <= 9223372036854775807, "
                                                         r"got 9223372036854775808"):
        seed(str(2 ** 63))
    size = bounded(float, above=0)
    for text in ("0", "nan", "inf", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be a finite number > 0, got {text}"):
            size(text)
    a, b = pair(tmp_path, n_logged=3)
    for run, value in ((run_tool, "nan"), (run_tool_main, "-0.1")):
        one_line_error(run("tools.compare_logs", a, b, "--lin-tol", value), "--lin-tol", "finite number >= 0")
    one_line_error(run_tool_main("tools.plot_logs", a, "-o", tmp_path / "x.png", "--dpi", "0"), "--dpi", "> 0")
    one_line_error(run_tool_main("tools.compare_logs", a, b, "--rows", "0"), "--rows", "an integer >= 1")


def test_a_bad_grid_value_or_seed_is_refused_before_anything_runs(tmp_path):
    one_line_error(sweep_in(tmp_path, "--grid", "lr=0.1,nan"), "--grid", "a_lr-nan", "--lr", "nan")
    assert not (tmp_path / "out").exists()  # the valid configuration did not run either
    one_line_error(sweep_in(tmp_path, "--seeds", "9223372036854775808", "--executor", "print", in_process=True),
                   "--seeds", "9223372036854775808")
    one_line_error(sweep_in(tmp_path, after=["--n", "1"], in_process=True), "main_mlp.py", "--n")


def test_summarize_only_and_print_with_a_closed_stdout(tmp_path):
    """``sweep.py ... >&-``: no stdout at all (not a pipe); the work is done, the status is kept."""
    out_dir = tmp_path / "sw"
    _write_runs(out_dir, "an", [(0.90, 0.01, 0.80, 0.01)] * 2, [0.9] * 2, [1.0] * 2)
    for argv in (["--summarize-only", "--out-dir", out_dir, "--name", "an"],
                 ["--seeds", "0", "--out-dir", tmp_path / "p", "--executor", "print", "--", "--n", "4"]):
        proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", PY, "-m", "tools.sweep", *map(str, argv)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (out_dir / "an_summary.csv").exists()


def test_a_run_refused_by_its_save_dir_lock_is_not_reported_as_another_runs_result(tmp_path, finished_sweep):
    """Two sweeps of one --name and --out-dir, other arguments, at once: the run of one waits for the
    other's (which holds the save-dir), whose finished log is then there. Not this sweep's result."""
    other = finished_sweep  # what the other sweep's run leaves: a finished --n-steps 3
    save_dir = tmp_path / "out" / "checkpoints" / "a_seed0"
    save_dir.mkdir(parents=True)
    with open(save_dir / ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other sweep's run holds it
        lock.write("4242\n")
        lock.flush()
        proc = subprocess.Popen([PY, *SWEEP, "--seeds", "0", "--threads", "1", "--out-dir", "out", "--name", "a",
                                 "--", *TINY_RUN, "--n-steps", "4"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=tool_env(OMP_NUM_THREADS="1"))
        err = tmp_path / "out" / "a_seed0.err"
        deadline = time.monotonic() + 120
        while not (err.exists() and "in use by another run" in err.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the run was not refused"
            time.sleep(0.05)
        time.sleep(1)
        shutil.copy(other / "out" / "a_seed0.log", tmp_path / "out" / "a_seed0.log")  # the other run ends
    out, err_text = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err_text
    report = [line for line in out.splitlines() if line.startswith("a seed 0:")][-1]
    assert "FAILED" in report and "n_steps" in report, report


@pytest.mark.parametrize("skip_done", [False, True])
def test_a_run_killed_while_writing_its_header_is_started_again(tmp_path, skip_done, finished_sweep):
    """kill -9 while the log's header is written: a few lines, no step, no checkpoint. The sweep started
    again runs it from the start, as main_mlp.py alone would (nothing of it is lost: it logged no step)."""
    ref = finished_sweep
    whole = (ref / "out" / "a_seed0.log").read_text()
    (tmp_path / "out" / "checkpoints" / "a_seed0").mkdir(parents=True)
    six_lines = len("".join(whole.splitlines(keepends=True)[:6]))
    write(tmp_path / "out" / "a_seed0.log", whole[:six_lines + 5])  # cut in the seventh line
    config = (ref / "out" / "a_seed0.jsonl").read_text().splitlines()[0]
    config = config.replace(os.path.realpath(ref), os.path.realpath(tmp_path))  # as the run here writes it
    write(tmp_path / "out" / "a_seed0.jsonl", config[:len(config) // 2])
    result = sweep_in(tmp_path, *(["--skip-done"] if skip_done else []))
    assert result.returncode == 0, result.stdout + result.stderr
    # The uninterrupted run's log, byte for byte but for the places it records (its own directory's).
    assert placed((tmp_path / "out" / "a_seed0.log").read_text(), tmp_path) == placed(whole, ref)

    # A header of other arguments is refused as before, and kept; so are a header whose metrics file
    # has a step's record, and a file that is no log of ours.
    os.remove(tmp_path / "out" / "checkpoints" / "a_seed0" / "checkpoint.pth")
    header = "".join(whole.splitlines(keepends=True)[:6])
    metrics = (ref / "out" / "a_seed0.jsonl").read_text().splitlines(keepends=True)
    for log, metrics_text, needles in ((header.replace("sphere_r: 1.0", "sphere_r: 2.0"), "",
                                        ("a seed 0", "sphere_r 2.0", "sphere_r 1.0")),
                                       (header, "".join(metrics[:2]), ("a seed 0", "(none)")),
                                       ("my notes\n", "", ("a seed 0", "(none)"))):
        write(tmp_path / "out" / "a_seed0.log", log)
        write(tmp_path / "out" / "a_seed0.jsonl", metrics_text)
        one_line_error(sweep_in(tmp_path, in_process=True), *needles)
        assert (tmp_path / "out" / "a_seed0.log").read_text() == log
        assert (tmp_path / "out" / "a_seed0.jsonl").read_text() == metrics_text


# --------------------------------------------------------------------------
# Readers open only regular files, bound what they read, and every wait of a sweep can be stopped


def run_with_timeout(*argv, cwd=ROOT, timeout=30):
    """A tool through subprocess, given ``timeout`` seconds: a tool that waits (a FIFO's open) fails the test."""
    return subprocess.run(tool_argv(*argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=tool_env(OMP_NUM_THREADS="1"))


def test_a_fifo_is_refused_by_the_readers_without_waiting(tmp_path):
    out_dir = tmp_path / "q"
    out_dir.mkdir()
    log = write(out_dir / "a_seed1.log", render_log(make_steps(n_logged=3)))
    os.mkfifo(out_dir / "a_seed1.jsonl")  # beside the log: nobody writes to it
    result = run_with_timeout("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "a")
    assert result.returncode == 0, result.stderr  # the run is read from its log, as for any unreadable metrics file
    assert f"warning: {out_dir / 'a_seed1.jsonl'}: not a regular file (a FIFO)" in result.stderr
    assert "| a | 1 | 2,001 |" in (out_dir / "a_summary.md").read_text()
    os.remove(out_dir / "a_summary.csv")
    os.mkfifo(out_dir / "a_summary.csv")  # where the summary goes: not waited on either
    result = run_with_timeout("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "a")
    assert result.returncode == 2 and f"error: cannot write the summary {out_dir / 'a_summary.csv'}" in result.stderr
    os.mkfifo(out_dir / "b_seed1.log")  # the only log of b
    result = run_with_timeout("tools.sweep", "--summarize-only", "--out-dir", out_dir, "--name", "b")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{out_dir / 'b_seed1.log'}: not a regular file (a FIFO)" in result.stderr
    fifo = out_dir / "a_seed1.jsonl"
    one_line_error(run_with_timeout("tools.compare_logs", out_dir / "b_seed1.log", log),
                   f"{out_dir / 'b_seed1.log'}: not a regular file (a FIFO)")
    one_line_error(run_with_timeout("tools.plot_logs", "--per-dimension", fifo, fifo, "-o", tmp_path / "x.png"),
                   f"{fifo}: not a regular file (a FIFO)")
    one_line_error(run_tool_main("tools.compare_logs", tmp_path, log), f"{tmp_path}: not a regular file (a directory)")


def test_a_fifo_among_a_sweeps_files_is_refused_before_anything_runs(tmp_path):
    """A FIFO as a run's save-dir lock or metrics file: its run would fail on it (or wait on it), and the
    sweep would wait on it forever. Refused first, naming it; nothing runs."""
    for fifo in ("out/checkpoints/a_seed0/.lock", "out/a_seed0.jsonl"):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        (tmp_path / "out" / "checkpoints" / "a_seed0").mkdir(parents=True)
        os.mkfifo(tmp_path / fifo)
        result = run_with_timeout("tools.sweep", "--seeds", "0", "--threads", "1", "--out-dir", "out", "--name", "a",
                                  "--", *TINY_RUN, cwd=tmp_path, timeout=60)
        one_line_error(result, "a seed 0", fifo, "not a regular file (a FIFO)", "nothing was run")
        assert not (tmp_path / "out" / "a_seed0.log").exists()
    from tools import sweep

    assert sweep.lock_holder(tmp_path / "out" / "checkpoints" / "a_seed0") is None  # a FIFO is nobody's lock


def test_sigterm_stops_a_sweep_waiting_for_another_processs_lock(tmp_path):
    """Another process holds the run's --save-dir (for hours, on a real run): the sweep waits for it, and
    a signal ends the wait at once with the documented status, 128 + its number."""
    save_dir = tmp_path / "out" / "checkpoints" / "a_seed0"
    save_dir.mkdir(parents=True)
    with open(save_dir / ".lock", "w", encoding="utf-8") as lock, open(tmp_path / "stdout", "w") as out:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        proc = subprocess.Popen([PY, *SWEEP, "--seeds", "0", "--threads", "1", "--out-dir", "out", "--name", "a",
                                 "--", *TINY_RUN], cwd=tmp_path, stdout=out, stderr=subprocess.PIPE, text=True,
                                env=tool_env(OMP_NUM_THREADS="1"))
        try:
            deadline = time.monotonic() + 120
            while "waiting for it" not in (tmp_path / "stdout").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, "the sweep did not wait"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    said = (tmp_path / "stdout").read_text()
    assert "a seed 0: stopped while waiting for out/checkpoints/a_seed0" in said and "stopped by SIGTERM" in said


# (case, the line in _records' file, the change): each crashed a reader (RecursionError, OverflowError,
# TypeError, an unhashable list) or was read as something it is not.
HOSTILE_RECORDS = [
    ("deep", 3, "arrays or objects nested 400,000 deep", lambda lines: lines.insert(2, "[" * 400_000)),
    ("infinite_n_steps", 1, "its config's n_steps is not an integer",
     lambda lines: lines.__setitem__(0, lines[0].replace('"n_steps": 501', '"n_steps": Infinity'))),
    ("null_p", 1, "its config's p is not a finite number",
     lambda lines: lines.__setitem__(0, lines[0].replace('"p": 0', '"p": null'))),
    ("list_loss", 1, "its config's loss is not text",
     lambda lines: lines.__setitem__(0, lines[0].replace('"loss": "aninfonce"', '"loss": ["x"]'))),
    ("huge_integer", 5, "an integer of 401 digits", lambda lines: lines.append(
        json.dumps({"type": "final", "lin_mean": 0, "lin_std": 0.0}).replace("0,", "9" * 401 + ",", 1))),
    ("float_overflow", 2, "a number too large for a float",
     lambda lines: lines.__setitem__(1, lines[1].replace('"loss": 5.0', '"loss": 1e999'))),
]


@pytest.mark.parametrize("case, line, what, change", HOSTILE_RECORDS, ids=[c[0] for c in HOSTILE_RECORDS])
def test_hostile_metrics_lines_are_one_line_errors_in_every_reader(tmp_path, case, line, what, change):
    lines = [json.dumps(r) for r in _records()]
    change(lines)
    bad = write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    good = _jsonl(tmp_path / "good.jsonl", _records())
    one_line_error(run_tool_main("tools.compare_logs", "--per-dimension", bad, good), f"{bad}:{line}: {what}")
    one_line_error(run_tool_main("tools.plot_logs", bad, "-o", tmp_path / "x.png"), f"{bad}:{line}: {what}")
    summary_reads_the_log_instead(run_tool_main, tmp_path, bad, f"{line}: {what}")


def test_a_step_number_of_thousands_of_digits_is_one_line_error(tmp_path, finished_sweep):
    """``Step: <5,000 digits>``: int() refuses it (a traceback in every reader); read, it is a line error."""
    text = render_log(make_steps(n_logged=3), final=(0.97, 0.01, 0.8, 0.02))
    line = text.splitlines().index(next(t for t in text.splitlines() if t.startswith("Step: 1001 "))) + 1
    huge = text.replace("Step: 1001 ", f"Step: {'7' * 5000} ", 1)
    log = write(tmp_path / "huge.log", huge)
    good = write(tmp_path / "good.log", text)
    where = f"{log}:{line}: a step number of 5,000 digits"
    one_line_error(run_tool_main("tools.compare_logs", log, good), where)
    one_line_error(run_tool_main("tools.plot_logs", log, "-o", tmp_path / "x.png"), where)
    (tmp_path / "lc").mkdir()
    shutil.copy(log, tmp_path / "lc" / "bimodal_b256_seed1.log")
    one_line_error(run_tool_main("tools.learning_check", "--summarize-only", "--out-dir", tmp_path / "lc"),
                   "bimodal_b256_seed1.log:", "a step number of 5,000 digits")
    # A sweep's finished run whose log holds such a line: --skip-done reads it, and refuses it in one line.
    copy_of(finished_sweep, tmp_path)
    run_log = tmp_path / "out" / "a_seed0.log"
    lines = run_log.read_text().splitlines(keepends=True)
    k = next(i for i, t in enumerate(lines) if t.startswith("Step: 3 "))
    lines[k] = lines[k].replace("Step: 3 ", f"Step: {'3' * 5000} ", 1)
    run_log.write_text("".join(lines))
    result = sweep_in(tmp_path, "--skip-done", in_process=True)
    one_line_error(result, "a seed 0", f"out/a_seed0.log:{k + 1}: a step number of 5,000 digits")
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", tmp_path / "out", "--name", "a")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # its metrics file is read, not its log
    os.remove(tmp_path / "out" / "a_seed0.jsonl")
    result = run_tool_main("tools.sweep", "--summarize-only", "--out-dir", tmp_path / "out", "--name", "a")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"a_seed0.log:{k + 1}: a step number of 5,000 digits" in result.stderr


def test_skip_done_applies_the_defaults_of_flags_added_since(tmp_path, finished_sweep):
    """A finished log from before --lambda-param: it ran with the default, as a resume takes it."""
    copy_of(finished_sweep, tmp_path)
    log = tmp_path / "out" / "a_seed0.log"
    old = log.read_text().replace("\tlambda_param: softplus\n", "")
    assert old != log.read_text()
    log.write_text(old)
    result = sweep_in(tmp_path, "--skip-done", in_process=True)
    assert result.returncode == 0 and "a seed 0: already finished, skipped" in result.stdout, result.stderr
    other = sweep_in(tmp_path, "--skip-done", after=["--lambda-param", "exp"], in_process=True)
    one_line_error(other, "a seed 0", "lambda_param softplus", "lambda_param exp")
    assert log.read_text() == old


def test_plot_logs_draws_values_beyond_any_runs_as_gaps(tmp_path):
    """A ground truth λ of 5,000 digits (inf as a float) and a Λ̂ of 1e308 are read; drawing them made
    matplotlib's ticks overflow (a traceback). They are left out of the curves, and the PNG is written."""
    lines = render_log(make_steps(n_logged=3)).splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if line.startswith("ground truth Lambda:"))
    lines[k] = lines[k].replace("25.", "9" * 5000 + ".")
    k = next(i for i, line in enumerate(lines) if line.startswith("learned lambda values:"))
    lines[k] = "learned lambda values: [1e308" + lines[k][lines[k].index(","):]
    log = write(tmp_path / "huge.log", "".join(lines))
    result = run_tool_main("tools.plot_logs", log, "-o", tmp_path / "x.png", "--size", "6", "4", "--dpi", "20")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
