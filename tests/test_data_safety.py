"""Nothing already written is lost or cut by a mistake: a second run, a wrong file, a refusal.

Each test checks the message (one line, exit 2) and that every file that was
there before is byte-identical afterwards. In-process runs, tiny and seeded.
"""

import os
import subprocess
import sys

import pytest

import main_mlp
import run_support
from cli_util import ROOT, one_torch_thread, restore_signal_handlers

BASE = ["--device", "cpu", "--n", "3", "--batch-size", "32", "--space-type", "extended_sphere", "--c-p", "0",
        "--p", "0", "--only-unsupervised", "--more-unsupervised", "1", "--n-steps", "3", "--n-log-steps", "2",
        "--num-eval-batches", "1", "--seed", "0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def run(argv, capsys):
    """(exit status, stdout, stderr) of main_mlp.main(argv), a refusal's SystemExit included."""
    with restore_signal_handlers():
        try:
            code = main_mlp.main(argv)
        except SystemExit as exc:
            code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(directory):
    """{relative path: bytes} of every file under ``directory``."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, directory)] = handle.read()
    return files


def assert_refused(code, err, *words):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("main_mlp.py: error: "), err
    for word in words:
        assert word in err, err


@pytest.fixture
def finished_run(tmp_path, capsys):
    """A finished run with a checkpoint, a log and a metrics file in tmp_path/run."""
    d = tmp_path / "run"
    d.mkdir()
    argv = BASE + ["--save-dir", str(d / "ckpt"), "--log-file", str(d / "run.log"),
                   "--metrics-file", str(d / "metrics.jsonl")]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    return d, argv


def test_fresh_run_does_not_overwrite_a_checkpoint(finished_run, capsys):
    d, argv = finished_run
    before = snapshot(d)
    code, _, err = run(argv, capsys)
    assert_refused(code, err, "--save-dir", "at step 3 of the unsupervised run", "--resume-training", "--overwrite")
    assert snapshot(d) == before
    code, _, err = run(argv + ["--overwrite"], capsys)  # starting over is explicit
    assert code == 0, err


def test_a_second_run_in_the_same_save_dir_is_refused(finished_run, capsys):
    d, argv = finished_run
    (d / "ckpt" / (main_mlp.CHECKPOINT_NAME + ".tmp999")).write_bytes(b"being written")
    before = snapshot(d)
    lock = run_support.SaveDirLock(str(d / "ckpt"))  # the other run holds the directory
    try:
        code, _, err = run(argv + ["--resume-training"], capsys)
    finally:
        lock.release()
    assert_refused(code, err, "--save-dir", f"pid {os.getpid()}")
    assert snapshot(d) == before  # its temporary file included
    code, _, err = run(argv + ["--resume-training"], capsys)  # once it is gone, the run resumes
    assert code == 0, err
    assert not (d / "ckpt" / (main_mlp.CHECKPOINT_NAME + ".tmp999")).exists()


def test_resume_into_another_log_file_is_refused(finished_run, capsys):
    d, argv = finished_run
    other = d / "other.log"
    other.write_text("a log of another run\n" * 50)
    before = snapshot(d)
    i = argv.index("--log-file")
    code, _, err = run(argv[:i + 1] + [str(other)] + argv[i + 2:] + ["--resume-training"], capsys)
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
    code, _, err = run(argv + ["--resume-training"], capsys)
    assert_refused(code, err, "--log-file")
    assert snapshot(d) == before


def test_resume_in_a_copied_directory_continues(finished_run, tmp_path, capsys):
    """The content decides, not the path: a run directory moved elsewhere resumes."""
    d, argv = finished_run
    moved = tmp_path / "moved"
    os.rename(d, moved)
    argv = [a.replace(str(d), str(moved)) for a in argv]
    code, _, err = run(argv + ["--resume-training", "--n-steps", "5"], capsys)
    assert code == 0, err


def test_log_and_metrics_in_one_file_are_refused(tmp_path, capsys):
    path = tmp_path / "run.txt"
    code, _, err = run(BASE + ["--log-file", str(path), "--metrics-file", str(tmp_path / "." / "run.txt")], capsys)
    assert_refused(code, err, "--log-file", "--metrics-file")
    assert not path.exists()


def test_a_refusal_after_parsing_leaves_the_log_alone(tmp_path, capsys):
    """The sampler's acceptance check refuses before any output file is opened."""
    log = tmp_path / "run.log"
    log.write_text("an earlier run's log\n")
    code, _, err = run(BASE + ["--threshold", "1e-6", "--log-file", str(log)], capsys)
    assert_refused(code, err, "--threshold")
    assert log.read_text() == "an earlier run's log\n"


@pytest.mark.parametrize("flag", ["--save", "--sa", "--save-d=runs"])
def test_sweep_refuses_an_abbreviated_save_dir(flag, tmp_path):
    args = [flag] if "=" in flag else [flag, str(tmp_path / "ckpt")]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--seeds", "0", "1", "--out-dir",
                           str(tmp_path), "--", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--save-dir" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert os.listdir(tmp_path) == []
