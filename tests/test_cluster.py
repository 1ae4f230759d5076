"""sweep.py through submitit, for real on this machine: a grid, a preempted task, the SLURM script.

``--executor submitit-local`` runs the same pickled tasks a SLURM array
would, through submitit's LocalExecutor; the SLURM submission is checked
under submitit's own mocked ``sbatch``.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from cli_util import ROOT, TINY, restore_signal_handlers

submitit = pytest.importorskip("submitit")
pytestmark = pytest.mark.slow  # subprocess runs of the CLI

SWEEP = os.path.join(ROOT, "sweep.py")


def sweep(args, cwd, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, SWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env, **kwargs)


def after_arguments(text):
    """A log without its Arguments block (it names the run's own paths)."""
    lines = text.splitlines()
    k = 1
    while k < len(lines) and lines[k].startswith("\t"):
        k += 1
    return lines[k:]


def test_a_grid_runs_under_submitit_and_is_summarised_once(tmp_path):
    grid = ["--executor", "submitit-local", "--seeds", "0", "1", "--grid", "loss=aninfonce,infonce",
            "--out-dir", "out", "--name", "tiny", "--threads", "1", "--", *TINY, "--n-steps", "4",
            "--n-log-steps", "2"]
    proc = sweep(grid, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = (tmp_path / "out" / "tiny_grid_summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["tiny_loss-aninfonce", "tiny_loss-infonce"]
    assert all(",2,4,4,2," in r for r in rows[1:])  # 2 seeds, 4 steps, both finished
    # Submitting the same sweep again with --skip-done starts nothing.
    jobs = set(os.listdir(tmp_path / "out" / "submitit"))
    proc = sweep(grid[:1] + ["submitit-local", "--skip-done"] + grid[2:], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("already finished, skipped") == 4
    assert set(os.listdir(tmp_path / "out" / "submitit")) == jobs


def _parent(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def test_a_preempted_task_is_requeued_and_continues_identically(tmp_path):
    """SIGUSR2 to the task (what SLURM sends before a time limit): the run checkpoints, submitit
    requeues the task, the run resumes; its log and metrics equal an uninterrupted run's."""
    train = [*TINY, "--n-steps", "900", "--n-log-steps", "250"]
    proc = subprocess.Popen([sys.executable, SWEEP, "--executor", "submitit-local", "--seeds", "0", "--out-dir",
                             "out", "--name", "pre", "--threads", "1", "--", *train], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = tmp_path / "out" / "pre_seed0.log"
    lock = tmp_path / "out" / "checkpoints" / "pre_seed0" / ".lock"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Step: 251 " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 251"
        time.sleep(0.05)
    child = int(lock.read_text())
    os.kill(_parent(child), 10 if sys.platform == "darwin" else 12)  # SIGUSR2 to the submitit task
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    run_err = (tmp_path / "out" / "pre_seed0.err").read_text()
    assert "stopped by SIGUSR2" in run_err and "resumed the unsupervised run" in run_err

    # The same run, never interrupted.
    ref = tmp_path / "ref"
    ref.mkdir()
    plain = subprocess.run([sys.executable, os.path.join(ROOT, "main_mlp.py"), *train, "--seed", "0",
                            "--save-dir", "ck", "--resume-if-exists", "--checkpoint-minutes", "10",
                            "--log-file", "run.log", "--metrics-file", "run.jsonl"], cwd=ref,
                           capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert plain.returncode == 0, plain.stderr
    assert after_arguments(log.read_text()) == after_arguments((ref / "run.log").read_text())
    ours = [json.loads(line) for line in (tmp_path / "out" / "pre_seed0.jsonl").read_text().splitlines()[1:]]
    theirs = [json.loads(line) for line in (ref / "run.jsonl").read_text().splitlines()[1:]]
    assert ours == theirs


def test_the_slurm_array_script(tmp_path, capsys, monkeypatch):
    from submitit.slurm import test_slurm

    import sweep as sweep_module

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


def test_a_local_sweep_passes_sigint_on_and_starts_nothing_more(tmp_path):
    import signal

    proc = subprocess.Popen([sys.executable, SWEEP, "--seeds", "0", "1", "2", "--jobs", "1", "--threads", "1",
                             "--out-dir", "out", "--name", "s", "--", *TINY, "--n-steps", "3000",
                             "--n-log-steps", "250"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = tmp_path / "out" / "s_seed0.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Step: 251 " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 251"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, out + err
    assert "stopped by SIGINT" in (tmp_path / "out" / "s_seed0.err").read_text()
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
    return subprocess.Popen([sys.executable, SWEEP, "--executor", executor, "--seeds", "0", "--out-dir", "out",
                             "--name", "k", "--threads", "1", "--", *TINY, "--n-steps", str(n_steps),
                             "--n-log-steps", "250"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _run_pid_at_step_251(tmp_path, proc):
    """The pid of the run (main_mlp.py) once its log has step 251 (it holds its save dir's lock)."""
    log = tmp_path / "out" / "k_seed0.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Step: 251 " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 251"
        time.sleep(0.05)
    return int((tmp_path / "out" / "checkpoints" / "k_seed0" / ".lock").read_text())


def _report(out):
    """The sweep's last line about the run."""
    return [line for line in out.splitlines() if line.startswith("k seed 0:")][-1]


def _finished_in_summary(tmp_path):
    import csv

    with open(tmp_path / "out" / "k_summary.csv", encoding="utf-8") as handle:
        return int(next(csv.DictReader(handle))["finished"])


@pytest.mark.parametrize("executor", ["local", "submitit-local"])
def test_a_run_killed_by_a_signal_is_reported_with_it(tmp_path, executor):
    proc = _start_sweep(tmp_path, executor, 3000)
    os.kill(_run_pid_at_step_251(tmp_path, proc), 9)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, out + err
    report = _report(out)
    assert "FAILED" in report and "killed by SIGKILL" in report, report
    assert _finished_in_summary(tmp_path) == 0


def test_a_run_that_outlives_its_killed_task_is_reported_as_the_summary_counts_it(tmp_path):
    """kill -9 to the submitit task: its run goes on to the end. The sweep waits for it, and its report
    and the summary agree that it finished."""
    proc = _start_sweep(tmp_path, "submitit-local", 1500)
    os.kill(_parent(_run_pid_at_step_251(tmp_path, proc)), 9)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    report = _report(out)
    assert "FAILED" not in report and "final scores" in report, report
    assert _finished_in_summary(tmp_path) == 1


def test_sigusr2_while_a_task_starts_is_requeued(tmp_path):
    """SIGUSR2 (a preemption) to the submitit task before it has set up its handler: held back until the
    task can checkpoint and requeue, not the end of the task."""
    proc = _start_sweep(tmp_path, "submitit-local", 3)
    deadline = time.monotonic() + 120
    worker = None
    while worker is None:
        assert proc.poll() is None and time.monotonic() < deadline, "no submitit task started"
        worker = next((p for p in _descendants(proc.pid) if "submitit.core._submit" in _cmdline(p)), None)
    os.kill(worker, 10 if sys.platform == "darwin" else 12)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    assert _report(out) == "k seed 0: done" and _finished_in_summary(tmp_path) == 1
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
