"""Helpers for the CLI tests: run main_mlp.py (subprocess or in-process) and parse its log.

``parse_log`` is a strict reader of the reference log format (README, "The
log, line by line"): every line must be one of the known line types, in the
known order, or it raises ``LogFormatError`` naming the line. Numbers that
print as ``nan``/``inf`` do not match the formats, so a parsed log is finite.
"""

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "main_mlp.py")

# The reference parser's arguments, in its order (the Arguments block of the
# authors' published logs).
REFERENCE_KEYS = [
    "sphere_r", "box_min", "box_max", "sphere_norm", "box_norm", "only_supervised",
    "only_unsupervised", "more_unsupervised", "save_dir", "num_eval_batches", "seed",
    "act_fct", "c_param", "m_param", "tau", "n_mixing_layer", "n", "space_type", "m_p",
    "c_p", "lr", "p", "batch_size", "n_log_steps", "n_steps", "resume_training",
    "gt_lambda_1", "gt_lambda_2", "linearly_spaced_lambda", "lr_lambda", "threshold",
]

NUM = r"-?\d+\.\d{4}"
STEP_RE = re.compile(
    rf"^Step: (\d+) \t Loss: ({NUM}) \t <Loss>: ({NUM}) \t "
    rf"Lin\. Disentanglement: ({NUM}) \t Perm\. Disentanglement: ({NUM})$")
LAMBDA_RE = re.compile(r"^learned lambda values: \[(.*)\] \t$")
TENSOR_RE = re.compile(r"^tensor\(\[(.*)\](?:, device='[a-z]+(?::\d+)?')?\)$")
FLOAT = r"(-?\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
COND_THRESH_RE = re.compile(r"^condition number threshold: (\d+\.\d{6})$")
LAYER_RE = re.compile(rf"^layer (\d+)/(\d+),  condition number: {FLOAT}$")
ID_RE = re.compile(rf"^Id\. (Lin|Perm)\. Disentanglement: ({NUM})$")
FINAL_RE = re.compile(rf"^(linear|perm) mean: {FLOAT} std: {FLOAT}$")
MODULE_RE = re.compile(r"^  \(\d+\): \w+\(.*\)$")


class LogFormatError(AssertionError):
    pass


def _floats(text):
    return [float(v) for v in text.split(",")] if text.strip() else []


def _tensor(lines, i, prefix):
    """A torch tensor repr after ``prefix``, possibly wrapped over several lines."""
    text = lines[i][len(prefix):]
    while not text.rstrip().endswith(")"):
        i += 1
        if i >= len(lines):
            raise LogFormatError(f"unterminated tensor after {prefix!r}")
        text += " " + lines[i].strip()
    m = TENSOR_RE.match(" ".join(text.split()).replace("[ ", "["))
    if not m:
        raise LogFormatError(f"line {i + 1}: not a tensor repr: {text!r}")
    return _floats(m.group(1)), i + 1


def parse_log(text):
    """Parse a whole log (stdout of main_mlp.py) into a dict; raise LogFormatError on any stray line.

    Returns:
        {"args": {key: value str}, "lambda_init": [...] or None, "gt_lambda": [...] or None,
         "cond_threshold": float, "layer_conds": [...], "id_lin": float, "id_perm": float,
         "phases": [{"supervised": bool, "f": [module lines], "steps": [{"step", "loss",
         "mean_loss", "lin", "perm", "lambda", "r"}]}], "final": {"lin_mean", "lin_std",
         "perm_mean", "perm_std"} or None}
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = {"args": {}, "lambda_init": None, "gt_lambda": None, "phases": [], "final": None}
    i = 0

    def expect(cond, what):
        if not cond:
            got = lines[i] if i < len(lines) else "<end of log>"
            raise LogFormatError(f"line {i + 1}: expected {what}, got {got!r}")

    expect(i < len(lines) and lines[i] == "Arguments:", "'Arguments:'")
    i += 1
    while i < len(lines) and lines[i].startswith("\t"):
        key, sep, value = lines[i][1:].partition(": ")
        expect(sep and re.fullmatch(r"[a-z_0-9]+", key), "'\\t<name>: <value>'")
        out["args"][key] = value
        i += 1
    if i < len(lines) and lines[i].startswith("lambda init:  "):
        out["lambda_init"], i = _tensor(lines, i, "lambda init:  ")
    if i < len(lines) and lines[i].startswith("ground truth Lambda:  "):
        out["gt_lambda"], i = _tensor(lines, i, "ground truth Lambda:  ")
    m = COND_THRESH_RE.match(lines[i]) if i < len(lines) else None
    expect(m, "'condition number threshold: <6 decimals>'")
    out["cond_threshold"] = float(m.group(1))
    i += 1
    out["layer_conds"] = []
    while i < len(lines) and LAYER_RE.match(lines[i]):
        m = LAYER_RE.match(lines[i])
        expect(int(m.group(1)) == len(out["layer_conds"]) + 1, "the next layer number")
        out["layer_conds"].append(float(m.group(3)))
        i += 1
    expect(len(out["layer_conds"]) == int(out["args"].get("n_mixing_layer", 3)),
           "'layer i/N,  condition number: ...' for every layer")
    for kind in ("Lin", "Perm"):
        m = ID_RE.match(lines[i]) if i < len(lines) else None
        expect(m and m.group(1) == kind, f"'Id. {kind}. Disentanglement: 0.xxxx'")
        out[f"id_{kind.lower()}"] = float(m.group(2))
        i += 1

    while i < len(lines):
        m = re.match(r"^supervised test: (True|False)$", lines[i])
        expect(m, "'supervised test: True|False'")
        phase = {"supervised": m.group(1) == "True", "f": [], "steps": []}
        out["phases"].append(phase)
        i += 1
        expect(i < len(lines) and lines[i] == "f:  Sequential(", "'f:  Sequential('")
        i += 1
        while i < len(lines) and MODULE_RE.match(lines[i]):
            phase["f"].append(lines[i])
            i += 1
        expect(i < len(lines) and lines[i] == ")", "')' closing the encoder repr")
        i += 1
        while i < len(lines) and lines[i].startswith("Step: "):
            m = STEP_RE.match(lines[i])
            expect(m, "a Step line in the reference format with finite numbers")
            step = {"step": int(m.group(1)), "loss": float(m.group(2)), "mean_loss": float(m.group(3)),
                    "lin": float(m.group(4)), "perm": float(m.group(5)), "lambda": None, "r": None}
            i += 1
            if i < len(lines) and lines[i] == "r: Parameter containing:":
                i += 1
                m = re.match(rf"^tensor\(\[({FLOAT})\], requires_grad=True\)$", lines[i]) if i < len(lines) else None
                expect(m, "the radius 'tensor([r], requires_grad=True)'")
                step["r"] = float(m.group(1))
                i += 1
            if i < len(lines) and lines[i].startswith("learned lambda values: "):
                m = LAMBDA_RE.match(lines[i])
                expect(m, "'learned lambda values: [..] \\t'")
                step["lambda"] = _floats(m.group(1))
                expect(all(math.isfinite(v) for v in step["lambda"]), "finite learned lambda values")
                i += 1
            phase["steps"].append(step)
        if i < len(lines) and lines[i].startswith("linear mean: "):
            final = {}
            for kind in ("linear", "perm"):
                m = FINAL_RE.match(lines[i]) if i < len(lines) else None
                expect(m and m.group(1) == kind, f"'{kind} mean: <m> std: <s>'")
                mean, std = float(m.group(2)), float(m.group(3))
                expect(math.isfinite(mean) and math.isfinite(std), "a finite mean and std")
                key = "lin" if kind == "linear" else "perm"
                final[f"{key}_mean"], final[f"{key}_std"] = mean, std
                i += 1
            out["final"] = final
            expect(i == len(lines), "the end of the log after the final evaluation")
    return out


def all_steps(parsed):
    return [s for ph in parsed["phases"] for s in ph["steps"]]


def step_lines(text):
    """The Step / learned lambda lines of a log, as (step number, line) pairs."""
    out, step = [], None
    for line in text.splitlines():
        m = STEP_RE.match(line)
        if m:
            step = int(m.group(1))
        if m or LAMBDA_RE.match(line):
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
