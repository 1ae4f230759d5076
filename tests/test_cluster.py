"""sweep.py through submitit, for real on this machine: a grid, a preempted task, the SLURM script.

``SUBMITIT_LOCAL`` submits the sweep's runs as ``sweep.submit`` submits its SLURM array (the same
pickled tasks, SIGUSR2 held while they start) to submitit's LocalExecutor on this machine; the SLURM
submission itself is checked under submitit's own mocked ``sbatch``.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from cli_util import ROOT, TINY, restore_signal_handlers, tool_env

submitit = pytest.importorskip("submitit")
pytestmark = pytest.mark.slow  # subprocess runs of the CLI

SWEEP = ["-m", "tools.sweep"]


# The sweep's runs through sweep.submit to a LocalExecutor (``python -c SUBMITIT_LOCAL SWEEP_ARGS``):
# one line per run, "LABEL: done" or "LABEL: FAILED: <the task's error, on one line>".
SUBMITIT_LOCAL = f"""
import os, sys
sys.path.insert(0, {ROOT!r})
import submitit
from tools import sweep
args = sweep.parse_args(sys.argv[1:])
os.makedirs(args.out_dir, exist_ok=True)
pending, _ = sweep.plan_runs(args, sweep.build_runs(args))
executor = submitit.LocalExecutor(folder="out/submitit/%j", max_num_timeout=sweep.MAX_TIMEOUTS)
executor.update_parameters(timeout_min=60, signal_delay_s=sweep.SIGNAL_DELAY_S)
for run, job in zip(pending, sweep.submit(pending, executor)):
    try:
        job.result()
        print(run.label + ": done")
    except Exception as exc:
        print(run.label + ": FAILED: " + " ".join(str(exc).split()))
"""


def submitit_local(args, cwd, **kwargs):
    """The sweep's runs through submitit on this machine (``SUBMITIT_LOCAL``), as a Popen."""
    return subprocess.Popen([sys.executable, "-c", SUBMITIT_LOCAL, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)


def sweep(args, cwd, **kwargs):
    env = tool_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *SWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env, **kwargs)


def after_arguments(text):
    """A log without its Arguments block (it names the run's own paths)."""
    lines = text.splitlines()
    k = 1
    while k < len(lines) and lines[k].startswith("\t"):
        k += 1
    return lines[k:]


def test_a_grid_runs_under_submitit_and_is_summarised_once(tmp_path):
    # One seed: a grid over several seeds is test_tool_safety's (printed).
    grid = ["--seeds", "0", "--grid", "loss=aninfonce,infonce", "--out-dir", "out", "--name", "tiny",
            "--threads", "1", "--", *TINY, "--n-steps", "4", "--n-log-steps", "2"]
    out, err = submitit_local(grid, tmp_path).communicate(timeout=300)
    assert out.count(": done") == 2, out + err
    # The sweep takes them for its own finished runs: it starts nothing, and summarises them once.
    jobs = set(os.listdir(tmp_path / "out" / "submitit"))
    proc = sweep(["--skip-done"] + grid, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("already finished, skipped") == 2
    assert set(os.listdir(tmp_path / "out" / "submitit")) == jobs
    rows = (tmp_path / "out" / "tiny_grid_summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["tiny_loss-aninfonce", "tiny_loss-infonce"]
    assert all(",1,4,4,1," in r for r in rows[1:])  # 1 seed, 4 steps, finished


def _parent(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def test_a_preempted_task_is_requeued_and_continues_identically(tmp_path):
    """SIGUSR2 to the task (what SLURM sends before a time limit): the run checkpoints, submitit
    requeues the task, the run resumes; its log and metrics equal an uninterrupted run's."""
    train = [*TINY, "--n-steps", "900", "--n-log-steps", "250"]
    ref = tmp_path / "ref"
    ref.mkdir()
    with open(ref / "run.err", "w", encoding="utf-8") as ref_err:  # the same run, never interrupted, meanwhile
        plain = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_mlp.py"), *train, "--seed", "0",
                                  "--save-dir", "ck", "--resume-if-exists", "--checkpoint-minutes", "10",
                                  "--log-file", "run.log", "--metrics-file", "run.jsonl"], cwd=ref,
                                 stdout=subprocess.DEVNULL, stderr=ref_err, env=dict(os.environ, OMP_NUM_THREADS="1"))
    proc = submitit_local(["--seeds", "0", "--out-dir", "out", "--name", "pre", "--threads", "1", "--", *train],
                          tmp_path)
    log = tmp_path / "out" / "pre_seed0.log"
    lock = tmp_path / "out" / "checkpoints" / "pre_seed0" / ".lock"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Step: 251 " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 251"
        time.sleep(0.05)
    child = int(lock.read_text())
    os.kill(_parent(child), 10 if sys.platform == "darwin" else 12)  # SIGUSR2 to the submitit task
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and out == "pre seed 0: done\n", out + err
    run_err = (tmp_path / "out" / "pre_seed0.err").read_text()
    assert "stopped by SIGUSR2" in run_err and "resumed the unsupervised run" in run_err
    assert plain.wait(timeout=240) == 0, (ref / "run.err").read_text()
    assert after_arguments(log.read_text()) == after_arguments((ref / "run.log").read_text())
    ours = [json.loads(line) for line in (tmp_path / "out" / "pre_seed0.jsonl").read_text().splitlines()[1:]]
    theirs = [json.loads(line) for line in (ref / "run.jsonl").read_text().splitlines()[1:]]
    assert ours == theirs


def test_the_slurm_array_script(tmp_path, capsys, monkeypatch):
    from submitit.slurm import test_slurm

    from tools import sweep as sweep_module

    monkeypatch.chdir(tmp_path)
    with test_slurm.mocked_slurm(), restore_signal_handlers():
        rc = sweep_module.main(["--executor", "slurm", "--seeds", *map(str, range(20)), "--out-dir", "sl",
                                "--name", "bi", "--gpus", "1", "--time", "90", "--array-parallelism", "5",
                                "--partition", "gpu", "--setup", "module load cuda", "--", "--n", "10"])
    out = capsys.readouterr().out
    assert rc == 0 and "submitted job array" in out and "20 tasks" in out
    scripts = [p for p in (tmp_path / "sl" / "submitit").rglob("*_submission.sh")]
    assert len(scripts) == 1  # ONE array for every run
    text = scripts[0].read_text()
    for line in ("#SBATCH --array=0-19%5", "#SBATCH --signal=USR2@", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=90", "#SBATCH --partition=gpu", "module load cuda"):
        assert line in text, line


@pytest.mark.parametrize("signame", ["SIGINT", "SIGHUP"])
def test_a_local_sweep_passes_sigint_on_and_starts_nothing_more(tmp_path, signame):
    import signal

    signum = getattr(signal, signame)
    proc = subprocess.Popen([sys.executable, *SWEEP, "--seeds", "0", "1", "2", "--jobs", "1", "--threads", "1",
                             "--out-dir", "out", "--name", "s", "--", *TINY, "--n-steps", "3000",
                             "--n-log-steps", "250"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=tool_env(OMP_NUM_THREADS="1"))
    log = tmp_path / "out" / "s_seed0.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Step: 251 " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 251"
        time.sleep(0.05)
    run = int((tmp_path / "out" / "checkpoints" / "s_seed0" / ".lock").read_text())
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, out + err
    assert f"stopped by {signame}" in (tmp_path / "out" / "s_seed0.err").read_text()
    assert f"stopped by {signame}" in out and "Traceback" not in err
    assert not os.path.exists(f"/proc/{run}")  # the run ended with the sweep, no orphan
    assert not (tmp_path / "out" / "s_seed1.log").exists()  # never started
    assert (tmp_path / "out" / "checkpoints" / "s_seed0" / "checkpoint.pth").exists()


# --------------------------------------------------------------------------
# What a sweep reports when a task or its run dies


def _descendants(pid):
    """The processes under ``pid``, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(_parent(int(entry)), []).append(int(entry))
            except (OSError, ValueError, IndexError):  # gone meanwhile
                pass
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _start_sweep(tmp_path, executor, n_steps):
    args = ["--seeds", "0", "--out-dir", "out", "--name", "k", "--threads", "1", "--", *TINY, "--n-steps",
            str(n_steps), "--n-log-steps", "250"]
    if executor == "submitit":
        return submitit_local(args, tmp_path)
    return subprocess.Popen([sys.executable, *SWEEP, "--executor", executor, *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=tool_env(OMP_NUM_THREADS="1"))


def _run_pid_at_step_251(tmp_path, proc):
    """The pid of the run (main_mlp.py) once its log has step 251 (it holds its save dir's lock)."""
    log = tmp_path / "out" / "k_seed0.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Step: 251 " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 251"
        time.sleep(0.05)
    return int((tmp_path / "out" / "checkpoints" / "k_seed0" / ".lock").read_text())


def _report(out):
    """The last line about the run."""
    return [line for line in out.splitlines() if line.startswith("k seed 0:")][-1]


def _finished_in_summary(tmp_path):
    import csv

    with open(tmp_path / "out" / "k_summary.csv", encoding="utf-8") as handle:
        return int(next(csv.DictReader(handle))["finished"])


@pytest.mark.parametrize("executor", ["local", "submitit"])
def test_a_run_killed_by_a_signal_is_reported_with_it(tmp_path, executor):
    proc = _start_sweep(tmp_path, executor, 3000)
    os.kill(_run_pid_at_step_251(tmp_path, proc), 9)
    out, err = proc.communicate(timeout=240)
    report = _report(out)
    assert "FAILED" in report and "killed by SIGKILL" in report, report
    if executor == "local":
        assert proc.returncode == 1, out + err
        assert _finished_in_summary(tmp_path) == 0


def test_sigusr2_while_a_task_starts_is_requeued(tmp_path):
    """SIGUSR2 (a preemption) to the submitit task before it has set up its handler: held back until the
    task can checkpoint and requeue, not the end of the task."""
    proc = _start_sweep(tmp_path, "submitit", 3)
    deadline = time.monotonic() + 120
    worker = None
    while worker is None:
        assert proc.poll() is None and time.monotonic() < deadline, "no submitit task started"
        worker = next((p for p in _descendants(proc.pid) if "submitit.core._submit" in _cmdline(p)), None)
    os.kill(worker, 10 if sys.platform == "darwin" else 12)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    assert _report(out) == "k seed 0: done"
    assert "linear mean: " in (tmp_path / "out" / "k_seed0.log").read_text()  # it finished
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
