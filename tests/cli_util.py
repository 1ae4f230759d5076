"""Helpers for the CLI tests: run main_mlp.py (subprocess or in-process) and parse its log.

``parse_log`` reads a log with the project's parser (logparse.py) and holds
it to the reference format strictly: every line must be one of the known
line types, in the exact format of our numbers (logparse's strict shapes), or it raises
``LogFormatError`` naming the line; a parsed log's numbers are finite.
"""

import contextlib
import importlib
import io
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tools import logparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SHAPE_NUMBER = re.compile(r"-?\d+")
_SHAPE_SPACES = re.compile(r" +")


def line_shape(line):
    """A log line as two runs of the same command print it alike.

    Every run of digits (with its minus sign) becomes ``#``, every run of
    spaces one space, and the sign padding torch puts after ``[`` goes: so
    ``tensor([ 0.0340, -0.0139])`` and ``tensor([-0.0751,  0.0611])`` have
    the same shape, ``gt_lambda_1: 5`` and ``gt_lambda_1: 5.0`` do not.
    """
    return _SHAPE_SPACES.sub(" ", _SHAPE_NUMBER.sub("#", line)).replace("[ ", "[")


SCRIPT = os.path.join(ROOT, "main_mlp.py")

# The tiny configuration the tests train: the AnInfoNCE experiment at n = 3, batch 32, one contrastive
# run, one evaluation batch; a run's length and seed are the test's (a sweep gives its own seeds).
TINY = ["--n", "3", "--batch-size", "32", "--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
        "--only-unsupervised", "--more-unsupervised", "1", "--num-eval-batches", "1"]
# TINY for 3 steps logged at steps 1 and 3: trains in about a second.
TINY_RUN = [*TINY, "--n-steps", "3", "--n-log-steps", "2"]

# The reference parser's arguments, in its order (the Arguments block of the
# authors' published logs).
REFERENCE_KEYS = [
    "sphere_r", "box_min", "box_max", "sphere_norm", "box_norm", "only_supervised",
    "only_unsupervised", "more_unsupervised", "save_dir", "num_eval_batches", "seed",
    "act_fct", "c_param", "m_param", "tau", "n_mixing_layer", "n", "space_type", "m_p",
    "c_p", "lr", "p", "batch_size", "n_log_steps", "n_steps", "resume_training",
    "gt_lambda_1", "gt_lambda_2", "linearly_spaced_lambda", "lr_lambda", "threshold",
]

# Our log's exact line shapes (4 decimals, tabs): logparse's, strict.
EXACT = logparse.shapes(strict=True)
STEP_RE = EXACT["step"]


class LogFormatError(AssertionError):
    pass


def parse_log(text):
    """Parse a whole log (stdout of main_mlp.py) with logparse, strictly: every line known, in the
    exact format, the numbers finite; raise LogFormatError naming the line otherwise.

    Returns:
        {"args": {key: value str}, "lambda_init": [...] or None, "gt_lambda": [...] or None,
         "cond_threshold": float, "layer_conds": [...], "id_lin": float, "id_perm": float,
         "phases": [{"supervised": bool, "f": [module lines], "steps": [{"step", "loss",
         "mean_loss", "lin", "perm", "lambda", "r"}]}], "final": {"lin_mean", "lin_std",
         "perm_mean", "perm_std"} or None}
    """
    lines = text.split("\n")
    if not lines or lines[0] != "Arguments:":
        raise LogFormatError("line 1: expected 'Arguments:'")
    for number, line in enumerate(lines, start=1):
        for kind, exact in EXACT.items():
            if logparse.STARTS[kind].match(line) and not exact.match(line):
                raise LogFormatError(f"line {number}: not in the reference format: {line!r}")
    try:
        log = logparse.parse_text(text)
    except logparse.LogParseError as exc:
        raise LogFormatError(str(exc)) from None
    if log.skipped:
        raise LogFormatError(f"line {log.skipped[0]}: an unknown line: {lines[log.skipped[0] - 1]!r}")
    if log.truncated:
        raise LogFormatError("the log ends inside a line or a repr")
    if len(log.cond_numbers) != int(log.args.get("n_mixing_layer", 3)):
        raise LogFormatError("expected 'layer i/N,  condition number: ...' for every layer")
    if log.id_lin is None or log.id_perm is None or log.cond_threshold is None:
        raise LogFormatError("the identity scores or the condition number threshold are missing")
    final = log.phases[-1].final if log.phases and log.phases[-1].has_final() else None
    if final is not None and not text.rstrip("\n").splitlines()[-1].startswith("perm mean: "):
        raise LogFormatError("the final evaluation is not the end of the log")
    numbers = [log.id_lin, log.id_perm, log.cond_threshold, *log.cond_numbers, *(final or {}).values()]
    for phase in log.phases:
        for record in phase.steps:
            numbers += [record[k] for k in ("loss", "mean_loss", "lin", "perm")] + (record["lambda"] or [])
    if not all(math.isfinite(v) for v in numbers):
        raise LogFormatError("a number is not finite")
    return {"args": log.args, "lambda_init": log.lambda_init, "gt_lambda": log.gt_lambda,
            "cond_threshold": log.cond_threshold, "layer_conds": log.cond_numbers, "id_lin": log.id_lin,
            "id_perm": log.id_perm, "final": final,
            "phases": [{"supervised": phase.supervised, "f": phase.encoder.splitlines()[1:-1],
                        "steps": phase.steps} for phase in log.phases]}


def all_steps(parsed):
    return [s for ph in parsed["phases"] for s in ph["steps"]]


def placed(text, directory):
    """``text`` with ``directory`` (as a run records its places: resolved) written ``DIR``: two runs of one
    command in two directories print alike but for the places they record."""
    return text.replace(os.path.realpath(directory), "DIR")


def step_lines(text):
    """The Step / learned lambda lines of a log, as (step number, line) pairs."""
    out, step = [], None
    for line in text.splitlines():
        m = STEP_RE.match(line)
        if m:
            step = int(m.group(1))
        if m or EXACT["learned_lambda"].match(line):
            out.append((step, line))
    return out


def env_for_cli(**extra):
    """The environment of a CLI run: one CPU thread each, since the tests run several at once."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_cli(args, cwd=ROOT, env=None, timeout=300):
    """Run ``python main_mlp.py ARGS`` to its end; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=cwd, env=env or env_for_cli(),
                          capture_output=True, text=True, timeout=timeout)


def run_many(jobs, workers=3):
    """Run several ``run_cli`` calls concurrently: jobs is a list of kwargs dicts; results in order."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda kw: run_cli(**kw), jobs))


def start_cli(args, cwd, env=None):
    """Start ``python main_mlp.py ARGS`` in the background (stdout/stderr to files in cwd)."""
    out = open(os.path.join(cwd, "stdout.txt"), "w")
    err = open(os.path.join(cwd, "stderr.txt"), "w")
    proc = subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], cwd=cwd, env=env or env_for_cli(),
                            stdout=out, stderr=err, text=True)
    proc.files = (out, err)
    return proc


def finish(proc, timeout=300):
    """Wait for a process from ``start_cli``; returns (returncode, stdout, stderr)."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for handle in proc.files:
            handle.close()
    cwd = os.path.dirname(proc.files[0].name)
    with open(os.path.join(cwd, "stdout.txt")) as f_out, open(os.path.join(cwd, "stderr.txt")) as f_err:
        return rc, f_out.read(), f_err.read()


def finish_all(procs, dirs, signals=(), count=2):
    """Wait for every process of ``procs`` ({name: Popen from ``start_cli``}), first sending each
    (name, signal number) of ``signals`` once that run's log holds ``count`` Step lines.

    Returns {name: (returncode, stdout, stderr, its directory ``dirs[name]``)}; whatever is still
    running when one of them fails is killed.
    """
    out = {}
    try:
        if signals:
            signal_after_steps([(procs[name], dirs[name] / "run.log", signum) for name, signum in signals], count)
        for name, proc in procs.items():
            out[name] = (*finish(proc), dirs[name])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def count_steps(log_path):
    """Complete Step lines in a log file so far (0 when it does not exist yet)."""
    if not os.path.exists(log_path):
        return 0
    with open(log_path) as f:
        text = f.read()
    return sum(1 for line in text.split("\n")[:-1] if STEP_RE.match(line))


def signal_after_steps(targets, count, timeout=180):
    """Send each process its signal once its log file holds ``count`` Step lines.

    Args:
        targets: list of (Popen, log path, signal number).
    """
    deadline = time.monotonic() + timeout
    pending = list(targets)
    while pending:
        for target in list(pending):
            proc, log_path, signum = target
            if count_steps(log_path) >= count:
                proc.send_signal(signum)
                pending.remove(target)
            elif proc.poll() is not None:
                raise AssertionError(f"the run ended (exit {proc.returncode}) before {count} Step lines")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count} Step lines within {timeout} s")
        time.sleep(0.02)


@contextlib.contextmanager
def restore_signal_handlers():
    """For in-process ``main_mlp.main``: it installs SIGINT/SIGTERM handlers; put pytest's back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def one_torch_thread():
    """Tiny in-process runs: one intra-op thread is faster than several (and fair to a busy machine)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def assert_refused(code, err, *words, out=None, prog="main_mlp.py"):
    """A refusal: exit status 2, exactly one line on stderr (``PROG: error: ...`` when ``prog`` is given)
    that names every one of ``words``, no traceback; with ``out``, nothing on stdout either."""
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    if prog is not None:
        assert err.startswith(f"{prog}: error: "), err
    for word in words:
        assert word in err, (word, err)
    if out is not None:
        assert out == "", out  # nothing printed, nothing trained


class Killed(BaseException):
    """Stands for a kill -9 at a chosen point of an in-process run: nothing after it runs (BaseException:
    no handler of ours catches it)."""


def dead_pid():
    """The pid of a process that has ended (and been reaped): no process has it now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def tool_argv(*argv):
    """``python ARGV`` as a list; a tool named by its module (``tools.sweep``) runs as ``python -m tools.sweep``."""
    argv = [str(arg) for arg in argv]
    return [sys.executable, *(["-m"] if argv and argv[0].startswith("tools.") else []), *argv]


def tool_env(**extra):
    """The environment of a tool run outside the repository's root: the root on PYTHONPATH, where
    ``python -m tools.X`` finds the package."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH")))), **extra)


def run_main(argv, capsys):
    """``main_mlp.main(argv)`` in-process: (exit status, stdout, stderr), a refusal's SystemExit included."""
    import main_mlp

    with restore_signal_handlers():
        try:
            code = main_mlp.main(argv)
        except SystemExit as exc:
            code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_tool_main(tool, *argv, cwd=None):
    """A tool's ``main(argv)`` in-process, as ``python -m TOOL ARGV`` runs it (in ``cwd``): a CompletedProcess
    (text) with its exit status (an argparse refusal's SystemExit included), its stdout and its stderr."""
    module = importlib.import_module(tool)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main([str(arg) for arg in argv])
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code
    return subprocess.CompletedProcess([tool, *argv], code, out.getvalue(), err.getvalue())
