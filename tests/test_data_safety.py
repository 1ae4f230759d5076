"""Nothing already written is lost or cut by a mistake: a second run, a wrong file, a refusal.

Each test checks the message (one line, exit 2) and that every file that was
there before is byte-identical afterwards. In-process runs, tiny and seeded.
"""

import os
import subprocess
import sys

import pytest

import main_mlp
from cli_util import ROOT, TINY_RUN, Killed, assert_refused, dead_pid, run_main, run_tool_main
from plumbing.checkpoint import read_checkpoint
from plumbing.errors import EXIT_DIVERGED, EXIT_WRITE_FAILED, InputError
from plumbing.files import CHECKPOINT_NAME, LOCK_NAME, temporary_name
from plumbing.locks import OutputLock, SaveDirLock
from plumbing.survival import Survival

BASE = [*TINY_RUN, "--device", "cpu", "--seed", "0"]


def snapshot(directory):
    """{relative path: bytes} of every file under ``directory``."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, directory)] = handle.read()
    return files


def run_to_the_end(directory, args, capsys):
    """Run ``args`` to the end with a checkpoint, a log and a metrics file in ``directory`` (created);
    returns (directory, the whole argv)."""
    directory.mkdir()
    argv = args + ["--save-dir", str(directory / "ckpt"), "--log-file", str(directory / "run.log"),
                   "--metrics-file", str(directory / "metrics.jsonl")]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    return directory, argv


@pytest.fixture
def finished_run(tmp_path, capsys):
    """A finished run with a checkpoint, a log and a metrics file in tmp_path/run."""
    return run_to_the_end(tmp_path / "run", BASE, capsys)


def test_fresh_run_does_not_overwrite_a_checkpoint(finished_run, capsys):
    d, argv = finished_run
    before = snapshot(d)
    code, _, err = run_main(argv, capsys)
    assert_refused(code, err, "--save-dir", "at step 3 of the unsupervised run", "--resume-training", "--overwrite")
    assert snapshot(d) == before
    code, _, err = run_main(argv + ["--overwrite"], capsys)  # starting over is explicit
    assert code == 0, err


def test_a_second_run_in_the_same_save_dir_is_refused(finished_run, capsys):
    d, argv = finished_run
    left = d / "ckpt" / f"{CHECKPOINT_NAME}.tmp{dead_pid()}"  # of an earlier version, killed
    left.write_bytes(b"being written")
    before = snapshot(d)
    lock = SaveDirLock(str(d / "ckpt"))  # the other run holds the directory
    try:
        code, _, err = run_main(argv + ["--resume-training"], capsys)
    finally:
        lock.release()
    assert_refused(code, err, "--save-dir", f"pid {os.getpid()}")
    assert snapshot(d) == before  # its temporary file included
    code, _, err = run_main(argv + ["--resume-training"], capsys)  # once it is gone, the run resumes
    assert code == 0, err
    assert not left.exists()


def test_resume_into_another_log_file_is_refused(finished_run, capsys):
    d, argv = finished_run
    other = d / "other.log"
    other.write_text("a log of another run\n" * 50)
    before = snapshot(d)
    i = argv.index("--log-file")
    code, _, err = run_main(argv[:i + 1] + [str(other)] + argv[i + 2:] + ["--resume-training"], capsys)
    assert_refused(code, err, "--log-file", str(other))
    assert snapshot(d) == before


@pytest.mark.parametrize("damage", ["missing", "shorter", "edited"])
def test_resume_with_a_damaged_log_is_refused(finished_run, damage, capsys):
    d, argv = finished_run
    log = d / "run.log"
    text = log.read_text()
    if damage == "missing":
        log.unlink()
    elif damage == "shorter":
        log.write_text(text[: len(text) // 3])
    else:
        log.write_text(text.replace("Step: 1 ", "Step: 7 "))
    before = snapshot(d)
    code, _, err = run_main(argv + ["--resume-training"], capsys)
    assert_refused(code, err, "--log-file")
    assert snapshot(d) == before


def test_resume_in_a_copied_directory_continues(finished_run, tmp_path, capsys):
    """The content decides, not the path: a run directory moved elsewhere resumes."""
    d, argv = finished_run
    moved = tmp_path / "moved"
    os.rename(d, moved)
    argv = [a.replace(str(d), str(moved)) for a in argv]
    code, _, err = run_main(argv + ["--resume-training", "--n-steps", "5"], capsys)
    assert code == 0, err


def test_log_and_metrics_in_one_file_are_refused(tmp_path, capsys):
    path = tmp_path / "run.txt"
    code, _, err = run_main(BASE + ["--log-file", str(path), "--metrics-file", str(tmp_path / "." / "run.txt")], capsys)
    assert_refused(code, err, "--log-file", "--metrics-file")
    assert not path.exists()


def test_a_refusal_after_parsing_leaves_the_log_alone(tmp_path, capsys):
    """The sampler's acceptance check refuses before any output file is opened (with --overwrite too,
    which lets the run replace the file once it starts)."""
    log = tmp_path / "run.log"
    log.write_text("an earlier run's log\n")
    code, _, err = run_main(BASE + ["--threshold", "1e-6", "--log-file", str(log), "--overwrite"], capsys)
    assert_refused(code, err, "--threshold")
    assert log.read_text() == "an earlier run's log\n"


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--save", "--sa", "--save-d=runs"])
def test_sweep_refuses_an_abbreviated_save_dir(flag, tmp_path):
    args = [flag] if "=" in flag else [flag, str(tmp_path / "ckpt")]
    if flag == "--save":  # the real CLI once; main(argv) in-process answers the same
        proc = subprocess.run([sys.executable, "-m", "tools.sweep", "--seeds", "0", "1", "--out-dir",
                               str(tmp_path), "--", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    else:
        proc = run_tool_main("tools.sweep", "--seeds", "0", "1", "--out-dir", tmp_path, "--", *args)
    assert_refused(proc.returncode, proc.stderr, "--save-dir", prog="tools.sweep")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- failing cleanly


def cli(argv, cwd, **kwargs):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main_mlp.py"), *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)


def _limit_file_size(limit):
    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint(finished_run, capsys):
    """A checkpoint write that fails: one line naming the file, the old checkpoint intact, no temporary left."""
    d, argv = finished_run
    before = (d / "ckpt" / CHECKPOINT_NAME).read_bytes()
    # Files may grow to 200 kB: the logs can, the ~1 MB checkpoint cannot.
    proc = cli(argv + ["--resume-training", "--n-steps", "6"], cwd=d, preexec_fn=_limit_file_size(200_000))
    assert proc.returncode == EXIT_WRITE_FAILED, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and CHECKPOINT_NAME in errors[0] and "Traceback" not in proc.stderr
    assert (d / "ckpt" / CHECKPOINT_NAME).read_bytes() == before
    assert sorted(os.listdir(d / "ckpt")) == [".lock", CHECKPOINT_NAME, "g.pth", "unsup_f.pth"]
    # The system's words for it, not the serialiser's ("[enforce fail at inline_container.cc...]")
    assert "File too large" in errors[0] and "enforce fail" not in proc.stderr


@pytest.mark.slow
def test_a_full_disk_under_the_metrics_file_ends_in_one_line(tmp_path):
    """/dev/full: every write fails with ENOSPC. One line naming the file, exit 74, and closing the file
    at exit raises nothing more."""
    proc = cli(BASE + ["--metrics-file", "/dev/full"], cwd=tmp_path)
    assert proc.returncode == EXIT_WRITE_FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "/dev/full" in errors[0] and "No space left on device" in errors[0], proc.stderr
    assert "checkpoint" not in errors[0]  # there is none: no --save-dir


def run_on_small_tmpfs(tmp_path, argv, options="size=200k", fill=""):
    """main_mlp.py ``argv`` (BASE first) with tmp_path/small a tmpfs of ``options`` mounted in a user
    namespace, after the shell command ``fill`` (run in tmp_path) has filled it."""
    import shlex
    import shutil
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespace here")
    (tmp_path / "small").mkdir()
    run = shlex.join([sys.executable, os.path.join(ROOT, "main_mlp.py"), *BASE, *argv])
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs small && {fill}{run}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_a_full_disk_at_the_checkpoint_says_so(tmp_path):
    """The save-dir on a 200 kB file system: g.pth fits, the checkpoint does not. One line naming the
    checkpoint and ENOSPC in the system's words, exit 74."""
    proc = run_on_small_tmpfs(tmp_path, ["--save-dir", "small", "--log-file", "run.log"])
    assert proc.returncode == EXIT_WRITE_FAILED, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and CHECKPOINT_NAME in errors[0], proc.stderr
    assert "No space left on device" in errors[0] and "enforce fail" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("options, fill, argv, name", [
    # no block left for the pid the lock file holds
    ("size=200k", "mkdir small/ckpt && (dd if=/dev/zero of=small/fill bs=4k 2>/dev/null; true) && ",
     ["--save-dir", "small/ckpt"], ".lock"),
    # no inode left for the lock file itself (the root and ckpt take the four)
    ("size=200k,nr_inodes=4", "mkdir small/ckpt && (touch small/a small/b 2>/dev/null; true) && ",
     ["--save-dir", "small/ckpt"], ".lock"),
    ("size=200k,nr_inodes=4", "(touch small/a small/b small/c 2>/dev/null; true) && ",
     ["--log-file", "small/run.log"], "run.log"),
], ids=["no-block-for-the-pid", "no-inode-for-the-save-dir-lock", "no-inode-for-the-log-file"])
def test_a_full_disk_at_the_lock_files_ends_in_one_line(tmp_path, options, fill, argv, name):
    """The disk is full when the run creates its lock files at start-up: a write failure (exit 74, one
    line naming the file and ENOSPC), not a refused flag or a traceback."""
    proc = run_on_small_tmpfs(tmp_path, argv, options, fill)
    assert proc.returncode == EXIT_WRITE_FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and name in errors[0] and "No space left on device" in errors[0], proc.stderr


@pytest.mark.slow
def test_closed_standard_streams(tmp_path):
    """`2>&-` and `>&-` (closed, not a pipe): a refusal still exits 2, a run still writes its log and exits 0."""
    script = os.path.join(ROOT, "main_mlp.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    bad = subprocess.run(f"{sys.executable} {script} --lr nan 2>&-", shell=True, cwd=tmp_path, env=env, timeout=120)
    assert bad.returncode == 2
    assert os.listdir(tmp_path) == []
    args = " ".join(BASE + ["--log-file", "run.log"])
    good = subprocess.run(f"{sys.executable} {script} {args} >&- 2>&-", shell=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert good.returncode == 0
    assert (tmp_path / "run.log").read_text().splitlines()[-1].startswith("perm mean: ")


@pytest.mark.slow
def test_a_closed_stdout_does_not_stop_the_run(tmp_path):
    """`main_mlp.py ... | head -1`: the run goes on and its log file is complete."""
    argv = BASE + ["--log-file", "run.log"]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_mlp.py"), *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "stdout was closed" in err
    assert (tmp_path / "run.log").read_text().splitlines()[-1].startswith("perm mean: ")


def test_a_damaged_checkpoint_is_refused(finished_run, capsys):
    d, argv = finished_run
    path = d / "ckpt" / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the payload
    path.write_bytes(bytes(data))
    before = snapshot(d)
    code, _, err = run_main(argv + ["--resume-training"], capsys)
    assert_refused(code, err, "--resume-training", str(path))
    assert snapshot(d) == before


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    (tmp_path / "ckpt").mkdir()
    with open(tmp_path / "ckpt" / CHECKPOINT_NAME, "wb") as handle:
        pickle.dump({"config": Payload()}, handle)
    code, _, err = run_main(BASE + ["--save-dir", str(tmp_path / "ckpt"), "--resume-training"], capsys)
    assert_refused(code, err, "--resume-training")
    assert not (tmp_path / "ran").exists()


def test_not_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    import torch
    torch.save({"weights": torch.zeros(3)}, tmp_path / "ckpt" / CHECKPOINT_NAME)
    code, _, err = run_main(BASE + ["--save-dir", str(tmp_path / "ckpt"), "--resume-training"], capsys)
    assert_refused(code, err, "not a checkpoint")


@pytest.mark.parametrize("flags, words", [
    (["--gt-lambda-1", "1e39"], ["--gt-lambda-1"]),
    (["--space-type", "sphere", "--c-p", "2", "--sphere-r", "1e308"], ["--sphere-r"]),
    (["--space-type", "sphere", "--c-p", "2", "--sphere-r", "1e38"], ["--sphere-r", "not finite"]),
    (["--space-type", "box", "--c-p", "2", "--m-p", "2", "--m-param", "1e308"], ["--m-param"]),
    (["--space-type", "sphere", "--c-p", "0", "--c-param", "1e308"], ["--c-param"]),
    (["--space-type", "sphere", "--c-p", "0", "--c-param", "1e20"], ["--c-param", "von Mises"]),
])
def test_extreme_values_are_refused_on_one_line(flags, words, capsys):
    code, out, err = run_main(BASE + flags, capsys)
    assert_refused(code, err, *words)
    assert out == ""


def test_messages_say_what_is_wrong(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = run_main(BASE + ["--save-dir", str(tmp_path / "file")], capsys)
    assert_refused(code, err, "is a file, not a directory")
    code, _, err = run_main(BASE + ["--log-file", str(tmp_path)], capsys)
    assert_refused(code, err, "is a directory")
    code, _, err = run_main(BASE + ["--save-dir", str(tmp_path / "new"), "--resume-training"], capsys)
    assert_refused(code, err, "no directory")
    assert not (tmp_path / "new").exists()
    code, _, err = run_main(BASE + ["--threshold", "1e-6"], capsys)
    assert_refused(code, err, "raise --threshold or the λ values")


def test_resume_messages_name_both_seeds_and_accept_auto_for_cpu(finished_run, capsys):
    d, argv = finished_run
    code, _, err = run_main(argv + ["--resume-training", "--seed", "1"], capsys)
    assert_refused(code, err, "seed (0 there, 1 here)")
    i = argv.index("--device")
    code, _, err = run_main(argv[:i + 1] + ["auto"] + argv[i + 2:] + ["--resume-training", "--n-steps", "5"], capsys)
    assert code == 0, err  # auto is the CPU here: the same device


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [("SIGHUP", 129), ("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_start_up_ends_the_run_at_once(signum, code, tmp_path):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_mlp.py"), *BASE, "--n", "40",
                             "--log-file", "run.log"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    time.sleep(0.3)  # importing torch
    proc.send_signal(getattr(signal, signum))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_resume_with_the_log_on_dev_null(tmp_path, capsys):
    argv = BASE + ["--log-file", os.devnull, "--save-dir", str(tmp_path / "ckpt")]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    code, _, err = run_main(argv + ["--resume-training", "--n-steps", "5"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("flags", [["--batch-size", "100000"], ["--n", "100000"]])
def test_a_run_that_cannot_fit_in_memory_is_refused(flags, capsys):
    code, out, err = run_main(BASE + flags, capsys)
    assert_refused(code, err, "GiB", "available")
    assert out == ""


def test_a_huge_log_interval_allocates_no_huge_ring(capsys):
    code, out, err = run_main(BASE + ["--n-log-steps", "10000000000"], capsys)
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines() if line.startswith("Step:")] == ["1", "3"]


def test_the_readme_run_fits_a_laptop():
    _, args = main_mlp.parse_args(["--n", "10", "--batch-size", "1000", "--space", "extended_sphere",
                                            "--c-p", "0", "--p", "0", "--only-unsupervised"])
    assert 50e6 < main_mlp.peak_memory(args) < 1e9


def test_a_signal_after_divergence_keeps_the_last_finite_checkpoint(tmp_path, capsys, monkeypatch):
    """SIGTERM between two log steps after the run has diverged: the divergence is reported (exit 3)
    and the checkpoint on disk stays the last finite one, not a NaN one written for the signal."""
    import signal

    import torch

    real_optimise = main_mlp.optimise
    steps = []

    def optimise_then_signal(*args):
        loss = real_optimise(*args)
        steps.append(1)
        if len(steps) == 40:  # diverged by then (--lr 300: a NaN loss a few steps in), not a log step
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(main_mlp, "optimise", optimise_then_signal)
    save_dir = tmp_path / "ckpt"
    argv = ["--device", "cpu", "--n", "3", "--batch-size", "32", "--only-supervised", "--lr", "300",
            "--n-steps", "200", "--n-log-steps", "100", "--cond-thresh-ratio", "0.01", "--seed", "0", "--save-dir", str(save_dir)]
    code, _, err = run_main(argv, capsys)
    assert code == EXIT_DIVERGED, err
    assert "diverged" in err and "Resume with" not in err
    state = read_checkpoint(str(save_dir / CHECKPOINT_NAME), main_mlp.CHECKPOINT_LAYOUT)
    assert state["step"] == 1  # the log step's checkpoint, from before the divergence
    assert all(bool(torch.isfinite(t).all()) for t in state["encoder"].values())


@pytest.mark.parametrize("flag", ["--log-file", "--metrics-file"])
def test_an_empty_output_file_name_is_refused(flag, tmp_path, capsys):
    code, _, err = run_main(BASE + [flag, ""], capsys)
    assert_refused(code, err, flag)


@pytest.mark.parametrize("kind", ["directory", "dangling link", "unreadable"])
def test_a_save_dir_lock_that_cannot_be_opened_is_refused(kind, tmp_path, capsys):
    save_dir = tmp_path / "sd"
    save_dir.mkdir()
    lock = save_dir / LOCK_NAME
    if kind == "directory":
        lock.mkdir()
    elif kind == "dangling link":
        lock.symlink_to(tmp_path / "missing" / "target")
    else:
        lock.write_text("123\n")
        lock.chmod(0)
        if os.access(lock, os.R_OK):  # root reads anything: nothing to test
            pytest.skip("running as root")
    code, _, err = run_main(BASE + ["--save-dir", str(save_dir)], capsys)
    assert_refused(code, err, "--save-dir", LOCK_NAME)


@pytest.mark.parametrize("name", [CHECKPOINT_NAME, "g.pth", "unsup_f.pth", LOCK_NAME])
@pytest.mark.parametrize("flag", ["--log-file", "--metrics-file"])
def test_an_output_file_inside_the_save_dirs_own_files_is_refused(name, flag, tmp_path, capsys):
    save_dir = tmp_path / "sd"
    code, _, err = run_main(BASE + ["--save-dir", str(save_dir), flag, str(save_dir / name)], capsys)
    assert_refused(code, err, flag, "--save-dir")


@pytest.mark.slow
def test_non_ascii_paths_with_an_ascii_terminal(tmp_path):
    """PYTHONIOENCODING=ascii: a save-dir named with λ still runs (the terminal gets an escape)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="ascii")
    log = tmp_path / "run λ.log"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main_mlp.py"), *BASE, "--save-dir",
                           str(tmp_path / "sd λ"), "--log-file", str(log)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "\tsave_dir: " + str(tmp_path / "sd λ") in log.read_text(encoding="utf-8")


@pytest.mark.parametrize("notice", [None, "stopped by {name}"])
def test_a_start_up_signal_exits_without_raising(notice, monkeypatch, capfd):
    """Before the run has anything to save, a signal ends the process at once with its status, and
    raises nothing into the code it interrupts (a SystemExit raised inside torch's import or a C++
    callback can be swallowed, or abort the process)."""
    import signal

    from plumbing import signals

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    saved = {sig: signal.getsignal(sig) for sig in signals.SIGNALS}
    try:
        signals.install("exit", notice)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # must not raise
        assert exits == [143]
        flag = signals.install("remember")
        signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)  # noted, nothing else
        assert exits == [143] and flag.signum == signal.SIGUSR2
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert capfd.readouterr().err == ("" if notice is None else "stopped by SIGTERM\n")


@pytest.mark.slow
def test_signals_at_random_moments_of_start_up_always_end_the_run(tmp_path):
    """SIGTERM at spread-out moments of the first second (importing torch, building the experiment):
    every run ends by the signal (143), none runs on, no traceback, no abort."""
    import signal
    import time
    procs = []
    for k in range(8):
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_mlp.py"), *BASE, "--n-steps", "100000"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(0.05 + 0.15 * k)
        proc.send_signal(signal.SIGTERM)
        procs.append(proc)
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        # -15: the signal came while Python itself was starting, before any handler (the default
        # action ends the process just the same)
        assert proc.returncode in (143, -signal.SIGTERM), err
        assert "Traceback" not in err and "terminate called" not in err


# ---------------------------------------------------------------- files a fresh run did not create


@pytest.mark.parametrize("flag", ["--log-file", "--metrics-file"])
def test_an_output_file_linked_to_another_runs_checkpoint_is_refused(flag, finished_run, tmp_path, capsys):
    """A link to another run's checkpoint: refused (with --overwrite too), the checkpoint untouched."""
    d, _ = finished_run
    link = tmp_path / "b.log"
    link.symlink_to(d / "ckpt" / CHECKPOINT_NAME)
    before = snapshot(d)
    for extra in ([], ["--overwrite"]):
        code, _, err = run_main(BASE + ["--save-dir", str(tmp_path / "runB"), flag, str(link)] + extra, capsys)
        assert_refused(code, err, flag, "--save-dir")
        assert snapshot(d) == before


@pytest.mark.parametrize("flag, name", [("--log-file", "run.log"), ("--metrics-file", "metrics.jsonl")])
def test_a_fresh_run_does_not_empty_a_stopped_runs_file(flag, name, finished_run, tmp_path, capsys):
    """A second run (its own save-dir and other file) given the first run's file: refused, the first run
    resumes; --overwrite says that replacing it is meant."""
    d, argv = finished_run
    before = snapshot(d)
    other = {"--log-file": str(tmp_path / "b.log"), "--metrics-file": str(tmp_path / "b.jsonl")}
    other[flag] = str(d / name)
    second = BASE + ["--save-dir", str(tmp_path / "sd2"), "--log-file", other["--log-file"],
                     "--metrics-file", other["--metrics-file"]]
    code, _, err = run_main(second, capsys)
    assert_refused(code, err, flag, str(d / name), "--overwrite")
    assert snapshot(d) == before
    code, _, err = run_main(argv + ["--resume-training", "--n-steps", "5"], capsys)
    assert code == 0, err
    code, _, err = run_main(second + ["--overwrite"], capsys)
    assert code == 0, err


def test_a_users_file_is_not_overwritten_without_a_save_dir(tmp_path, capsys):
    notes = tmp_path / "results"
    notes.write_text("my notes\n")
    code, _, err = run_main(BASE + ["--log-file", str(notes)], capsys)
    assert_refused(code, err, "--log-file")
    assert notes.read_text() == "my notes\n"
    empty = tmp_path / "empty.log"
    empty.write_text("")  # an empty file holds nothing to lose
    code, _, err = run_main(BASE + ["--log-file", str(empty)], capsys)
    assert code == 0, err


@pytest.mark.parametrize("lines", [0, 6, 40])
def test_a_run_killed_before_its_first_checkpoint_starts_again(lines, finished_run, capsys):
    """The same command, its log holding the start of what that command writes and no checkpoint (killed
    in its header, or before its first checkpoint): it starts again and writes what it would have."""
    d, argv = finished_run
    log, metrics = (d / "run.log").read_text(), (d / "metrics.jsonl").read_text()
    (d / "run.log").write_text("".join(log.splitlines(keepends=True)[:lines]))
    (d / "metrics.jsonl").write_text(metrics[:len(metrics) // 2] if lines > 6 else "")
    for name in os.listdir(d / "ckpt"):
        if name != "g.pth":  # written before training: this very command's mixing
            os.remove(d / "ckpt" / name)
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert (d / "run.log").read_text() == log == out
    assert (d / "metrics.jsonl").read_text() == metrics


def test_hard_linked_log_and_metrics_files_are_one_file(tmp_path, capsys):
    log = tmp_path / "run.log"
    log.write_text("an earlier log\n")
    os.link(log, tmp_path / "metrics.jsonl")
    code, _, err = run_main(BASE + ["--log-file", str(log), "--metrics-file", str(tmp_path / "metrics.jsonl")], capsys)
    assert_refused(code, err, "--log-file and --metrics-file")
    assert "another run" not in err
    assert log.read_text() == "an earlier log\n"


def test_overwrite_and_resume_if_exists_are_refused_by_their_names(finished_run, capsys):
    d, argv = finished_run
    before = snapshot(d)
    code, _, err = run_main(argv + ["--overwrite", "--resume-if-exists"], capsys)
    assert_refused(code, err, "--overwrite", "--resume-if-exists")
    assert "--resume-training" not in err
    assert snapshot(d) == before


def test_a_dangling_link_as_save_dir_is_refused(tmp_path, capsys):
    link = tmp_path / "sd"
    link.symlink_to(tmp_path / "gone")
    code, _, err = run_main(BASE + ["--save-dir", str(link)], capsys)
    assert_refused(code, err, "--save-dir", "gone")
    assert "File exists" not in err
    assert os.listdir(tmp_path) == ["sd"]


def test_a_users_temporary_beside_the_log_is_kept(tmp_path, capsys):
    """Only the temporaries the project writes are cleaned up beside the log, never a name like them."""
    notes = tmp_path / "results.tmp2024"
    notes.write_text("notes\n")
    code, _, err = run_main(BASE + ["--log-file", str(tmp_path / "results")], capsys)
    assert code == 0, err
    assert notes.read_text() == "notes\n"


# ---------------------------------------------------------------- whose file it is

# The tiny run of the adversarial rounds: 60 contrastive steps logged every 5.
ISSUE = ["--n", "4", "--batch-size", "32", "--n-log-steps", "5", "--space-type", "extended_sphere", "--c-p", "0",
         "--p", "0", "--num-eval-batches", "2", "--only-unsupervised", "--n-steps", "20", "--device", "cpu"]


def stop_after_step(monkeypatch, last):
    """Make an in-process run die (Killed) right after ``last``'s step and checkpoint."""
    real = Survival.after_step

    def after_step(self, phase, step, is_log):
        real(self, phase, step, is_log)
        if step == last:
            raise Killed

    monkeypatch.setattr(Survival, "after_step", after_step)
    return real


def cut_after(path, prefix, keep=0):
    """Keep the lines of ``path`` up to the first that starts with ``prefix`` and ``keep`` more."""
    lines = path.read_bytes().splitlines(keepends=True)
    end = next(k for k, line in enumerate(lines) if line.startswith(prefix)) + 1 + keep
    path.write_bytes(b"".join(lines[:end]))


@pytest.mark.parametrize("case", ["finished", "checkpoint removed", "killed at step 11"])
def test_a_log_past_its_first_step_is_not_started_over(case, tmp_path, capsys):
    """The same command again on its log: only what a start killed before its first checkpoint leaves
    (no step past the first, no final scores) is started over; a finished run, or one whose checkpoint is
    gone, is refused and kept."""
    argv = ISSUE + ["--seed", "0", "--log-file", str(tmp_path / "r.log"), "--metrics-file", str(tmp_path / "r.jsonl")]
    argv += ["--save-dir", str(tmp_path / "sd")] if case == "checkpoint removed" else []
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    if case == "checkpoint removed":  # as a disk filling up with checkpoints invites
        os.remove(tmp_path / "sd" / CHECKPOINT_NAME)
    if case == "killed at step 11":
        cut_after(tmp_path / "r.log", b"Step: 11 ", keep=1)  # its learned lambda line
        cut_after(tmp_path / "r.jsonl", b'{"type": "step", "phase": "unsupervised", "step": 11,')
    before = snapshot(tmp_path)
    code, out, err = run_main(argv, capsys)
    assert_refused(code, err, "--log-file", str(tmp_path / "r.log"), "--overwrite", out="")
    assert snapshot(tmp_path) == before


def test_the_same_relative_paths_from_another_directory_are_another_run(tmp_path, capsys, monkeypatch):
    """A run in x/ killed after its first checkpoint; the same command (relative paths) in y/ is another
    run: refused on the shared log, which x/'s run still resumes. The header records the real places."""
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
    argv = ISSUE + ["--seed", "0", "--save-dir", "ck", "--log-file", "../shared.log"]
    real = stop_after_step(monkeypatch, 1)
    monkeypatch.chdir(tmp_path / "x")
    with pytest.raises(Killed):
        run_main(argv, capsys)
    monkeypatch.setattr(Survival, "after_step", real)
    capsys.readouterr()
    log = (tmp_path / "shared.log").read_bytes()
    assert f"\tsave_dir: {os.path.realpath(tmp_path / 'x' / 'ck')}\n".encode() in log
    monkeypatch.chdir(tmp_path / "y")
    code, _, err = run_main(argv, capsys)
    assert_refused(code, err, "--log-file", "--overwrite")
    assert (tmp_path / "shared.log").read_bytes() == log
    monkeypatch.chdir(tmp_path / "x")
    code, _, err = run_main(argv + ["--resume-training"], capsys)
    assert code == 0, err


def test_a_save_dir_with_model_files_and_no_checkpoint_is_refused(tmp_path, capsys):
    """The reference's g.pth, sup_f.pth and unsup_f.pth: refused, kept; --overwrite leaves none of them."""
    import torch

    save_dir = tmp_path / "sd"
    save_dir.mkdir()
    for name in ("g.pth", "sup_f.pth", "unsup_f.pth"):
        torch.save({"weight": torch.ones(2)}, save_dir / name)
    before = snapshot(save_dir)
    code, out, err = run_main(BASE + ["--save-dir", str(save_dir)], capsys)
    assert_refused(code, err, "--save-dir", "g.pth", "--overwrite", out="")
    assert {name: data for name, data in snapshot(save_dir).items() if name in before} == before
    code, _, err = run_main(BASE + ["--save-dir", str(save_dir), "--overwrite"], capsys)
    assert code == 0, err
    assert not (save_dir / "sup_f.pth").exists()  # no old encoder beside the new mixing


@pytest.mark.parametrize("flag", ["--log-file", "--metrics-file"])
def test_a_hard_link_to_another_runs_checkpoint_is_refused(flag, finished_run, tmp_path, capsys):
    """A hard link is the same file: --overwrite does not write another run's checkpoint through it."""
    d, _ = finished_run
    link = tmp_path / "hl.log"
    os.link(d / "ckpt" / CHECKPOINT_NAME, link)
    before = snapshot(d)
    code, _, err = run_main(BASE + [flag, str(link), "--overwrite"], capsys)
    assert_refused(code, err, flag, "hard link")
    assert snapshot(d) == before


def test_a_refused_start_keeps_a_live_runs_temporary_and_makes_no_file(tmp_path, capsys):
    log = tmp_path / "r.log"
    log.write_text("another run's log\n")
    live = tmp_path / temporary_name("r.log", os.getppid())  # a process that is alive
    live.write_bytes(b"being written")
    code, _, err = run_main(BASE + ["--log-file", str(log), "--metrics-file", str(tmp_path / "other.jsonl")], capsys)
    assert_refused(code, err, "--log-file")
    assert live.read_bytes() == b"being written"
    assert sorted(os.listdir(tmp_path)) == ["r.log", live.name]  # no empty other.jsonl


def test_the_log_stays_locked_while_it_is_replaced(finished_run, capsys, monkeypatch):
    """An extension restates its log through a temporary renamed into place: at that moment another run
    trying the log is refused (its name is never unlocked, so no one takes it and its temporary)."""
    d, argv = finished_run
    real_replace, tries = os.replace, []

    def replace(src, dst):
        if dst.endswith("run.log"):
            try:
                OutputLock("--log-file", dst, create=False).release()
                tries.append("locked")
            except InputError:
                tries.append("refused")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run_main(argv + ["--resume-training", "--n-steps", "5"], capsys)
    assert code == 0, err
    assert tries == ["refused"]


def test_a_temporary_that_may_not_be_removed_is_left_with_one_line(tmp_path, capsys, monkeypatch):
    """Another user's temporary in a sticky directory (removing it is not permitted): kept, one line."""
    import errno

    stale = tmp_path / temporary_name("r.log", dead_pid())
    stale.write_bytes(b"another user's")
    real_remove = os.remove

    def remove(path, *args, **kwargs):
        if str(path) == str(stale):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(path))
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", remove)
    code, _, err = run_main(BASE + ["--log-file", str(tmp_path / "r.log")], capsys)
    assert code == 0, err
    assert stale.read_bytes() == b"another user's"
    notes = [line for line in err.splitlines() if str(stale) in line]
    assert len(notes) == 1 and os.strerror(errno.EPERM) in notes[0] and "Traceback" not in err


@pytest.mark.parametrize("flag, char", [("--save-dir", "\n"), ("--log-file", "\t"), ("--metrics-file", "\r")])
def test_a_path_with_a_control_character_is_refused(flag, char, tmp_path, capsys):
    code, out, err = run_main(BASE + [flag, str(tmp_path / f"a{char}b")], capsys)
    assert_refused(code, err, flag, "control character", out="")
    assert os.listdir(tmp_path) == []


def test_a_start_refused_for_its_save_dir_or_a_busy_file_leaves_no_output_file(finished_run, tmp_path, capsys):
    d, _ = finished_run
    new = [str(tmp_path / "new.log"), str(tmp_path / "new.jsonl")]
    code, _, err = run_main(BASE + ["--save-dir", str(d / "ckpt"), "--log-file", new[0], "--metrics-file", new[1]],
                            capsys)
    assert_refused(code, err, "--save-dir")
    holder = OutputLock("--metrics-file", str(d / "metrics.jsonl"), create=False)
    try:  # the metrics file is another run's: refused after the log's lock was taken
        code, _, err = run_main(BASE + ["--log-file", new[0], "--metrics-file", str(d / "metrics.jsonl")], capsys)
    finally:
        holder.release()
    assert_refused(code, err, "--metrics-file", "another run")
    assert not any(os.path.exists(path) for path in new)


def test_a_run_checkpoints_at_its_first_step_whatever_the_cadence(tmp_path, capsys, monkeypatch):
    """With --checkpoint-minutes too, the first step is checkpointed: a log without a checkpoint is then
    never more than what a start killed before its first step leaves."""
    argv = ISSUE + ["--seed", "0", "--save-dir", str(tmp_path / "sd"), "--log-file", str(tmp_path / "r.log"),
                    "--checkpoint-minutes", "10", "--resume-if-exists"]
    real = stop_after_step(monkeypatch, 3)
    with pytest.raises(Killed):
        run_main(argv, capsys)
    monkeypatch.setattr(Survival, "after_step", real)
    capsys.readouterr()
    assert read_checkpoint(str(tmp_path / "sd" / CHECKPOINT_NAME), main_mlp.CHECKPOINT_LAYOUT)["step"] == 1
    code, _, err = run_main(argv, capsys)  # a requeued job: resumes from step 1
    assert code == 0, err
    assert "resumed the unsupervised run after step 1" in err


def test_a_sweep_keeps_a_log_whose_checkpoint_was_removed(tmp_path, capsys):
    """A sweep's run logged to step 11, its checkpoint removed: the sweep refuses before it starts anything."""
    from tools import sweep

    sweep_argv = ["--seeds", "0", "--out-dir", str(tmp_path), "--", *ISSUE]
    (run,) = sweep.build_runs(sweep.parse_args(sweep_argv))
    code, _, err = run_main(run.task.argv[2:], capsys)  # the run as the sweep starts it
    assert code == 0, err
    cut_after(tmp_path / "run_seed0.log", b"Step: 11 ", keep=1)
    os.remove(os.path.join(run.save_dir, CHECKPOINT_NAME))
    before = snapshot(tmp_path)
    proc = run_tool_main("tools.sweep", *sweep_argv)
    assert_refused(proc.returncode, proc.stderr, "run_seed0.log", "3 logged steps", "no checkpoint", prog="tools.sweep")
    assert snapshot(tmp_path) == before


def test_a_save_dir_lock_that_is_a_fifo_is_refused(tmp_path, capsys):
    """A FIFO (or any file but a regular one) where the save-dir's .lock goes: one line naming --save-dir and
    the file, exit 2, nothing written (it was a write failure, exit 74)."""
    (tmp_path / "sd").mkdir()
    os.mkfifo(tmp_path / "sd" / ".lock")
    code, out, err = run_main(BASE + ["--save-dir", str(tmp_path / "sd"), "--log-file", str(tmp_path / "r.log")],
                              capsys)
    assert_refused(code, err, "--save-dir", ".lock", "not a regular file", out="")
    assert sorted(os.listdir(tmp_path)) == ["sd"] and os.listdir(tmp_path / "sd") == [".lock"]
