"""Resuming never loses a run: an extension killed at any moment, old checkpoints, shared or linked
output files, temporaries left by a kill. In-process runs, tiny and seeded."""

import hashlib
import os

import pytest
import torch

import main_mlp
import plumbing.log
from cli_util import Killed, assert_refused, dead_pid, run_main
from plumbing.checkpoint import read_checkpoint, save_checkpoint_file
from plumbing.files import CHECKPOINT_NAME, TAIL_BYTES, temporary_name
from plumbing.locks import OutputLock
from test_data_safety import BASE, finished_run, run_to_the_end, snapshot  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow  # each test trains two or three tiny runs


def _straight_run(tmp_path, capsys, steps, extra=()):
    """The log and metrics of an uninterrupted run of ``steps`` steps (BASE + ``extra``), its paths named as
    tmp_path/run's."""
    d = tmp_path / "straight"
    d.mkdir()
    argv = BASE + list(extra) + ["--save-dir", str(d / "ckpt"), "--log-file", str(d / "run.log"),
                   "--metrics-file", str(d / "metrics.jsonl"), "--n-steps", str(steps)]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    here, there = str(d).encode(), str(tmp_path / "run").encode()
    return (d / "run.log").read_bytes().replace(here, there), (d / "metrics.jsonl").read_bytes().replace(here, there)


def _extend(argv, steps):
    return argv + ["--resume-training", "--n-steps", str(steps)]


@pytest.mark.parametrize("when", ["writing the log", "writing the metrics", "before the first checkpoint"])
def test_an_extension_killed_before_its_first_checkpoint_resumes(finished_run, tmp_path, capsys, monkeypatch, when):
    """Extend a finished run (--n-steps 3 -> 9) and kill it while its files are being restated or
    just after: the same command then resumes it, and its files are those of a straight 9-step run."""
    d, argv = finished_run
    real_write, real_run = plumbing.log.write_atomically, main_mlp.train

    def write_then_die(path, write, lock=None):
        if path.endswith("run.log" if when == "writing the log" else "metrics.jsonl"):
            raise Killed
        return real_write(path, write, lock)

    def die(*args, **kwargs):
        raise Killed

    if when == "before the first checkpoint":
        monkeypatch.setattr(main_mlp, "train", die)
    else:
        monkeypatch.setattr(plumbing.log, "write_atomically", write_then_die)
    with pytest.raises(Killed):
        run_main(_extend(argv, 9), capsys)
    monkeypatch.setattr(plumbing.log, "write_atomically", real_write)
    monkeypatch.setattr(main_mlp, "train", real_run)
    capsys.readouterr()
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert code == 0, err
    log, metrics = _straight_run(tmp_path, capsys, 9)
    assert (d / "run.log").read_bytes() == log
    assert (d / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.parametrize("edit", ["header", "invalid utf-8"])
def test_an_edit_anywhere_before_the_checkpoint_is_found(tmp_path, capsys, edit):
    """A log longer than 4 KB edited in its header (or made invalid UTF-8 there) is refused, untouched."""
    d = tmp_path / "run"
    argv = BASE + ["--n-log-steps", "1", "--n-steps", "60", "--save-dir", str(d / "ckpt"),
                   "--log-file", str(d / "run.log")]
    d.mkdir()
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    log = d / "run.log"
    assert log.stat().st_size > 2 * TAIL_BYTES
    data = log.read_bytes()
    if edit == "header":
        log.write_bytes(data.replace(b"\tlr: 0.0001\n", b"\tlr: 0.0002\n"))
    else:
        log.write_bytes(b"\xff" + data[1:])
    before = snapshot(d)
    code, _, err = run_main(_extend(argv, 70), capsys)
    assert_refused(code, err, "--log-file")
    assert snapshot(d) == before


def _rewrite_checkpoint(path, change):
    """Load a checkpoint, let ``change`` edit its state, save it again with a valid checksum."""
    state = read_checkpoint(str(path), main_mlp.CHECKPOINT_LAYOUT)
    change(state)
    save_checkpoint_file(state, str(path))


def test_a_checkpoint_of_an_older_layout_is_refused_before_anything_is_cut(finished_run, capsys):
    """A checkpoint of the earlier layout with one encoder and optimiser per phase ('encoders',
    'optimizers'): refused by name, the log and metrics files untouched."""
    d, argv = finished_run

    def older(state):
        state["encoders"] = {"unsupervised": state.pop("encoder")}
        state["optimizers"] = {"unsupervised": state.pop("optimizer")}
        state.pop("format")

    _rewrite_checkpoint(d / "ckpt" / CHECKPOINT_NAME, older)
    before = snapshot(d)
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert_refused(code, err, "older version", "encoder", "--overwrite")
    assert snapshot(d) == before


def test_a_checkpoint_without_a_checksum_is_called_older(finished_run, capsys):
    d, argv = finished_run
    path = d / "ckpt" / CHECKPOINT_NAME
    state = read_checkpoint(str(path), main_mlp.CHECKPOINT_LAYOUT)
    torch.save(state, str(path))  # the earliest layout: the state itself, no checksum around it
    before = snapshot(d)
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert_refused(code, err, "older version", "checksum")
    assert snapshot(d) == before


def test_a_checkpoint_of_a_newer_format_is_refused(finished_run, capsys):
    d, argv = finished_run
    _rewrite_checkpoint(d / "ckpt" / CHECKPOINT_NAME, lambda s: s.update(format=99))
    before = snapshot(d)
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert_refused(code, err, "newer version")
    assert snapshot(d) == before


def test_a_format_1_checkpoint_still_resumes(finished_run, tmp_path, capsys):
    """Format 1 (no 'format' key; files checked by the hash of their last 4 KB) is read, not refused."""
    d, argv = finished_run

    def format_1(state):
        state.pop("format")
        checks = []
        for check in state["file_checks"]:
            with open(check["path"], "rb") as handle:
                data = handle.read(check["offset"])
            tail = data[-TAIL_BYTES:]
            checks.append({"path": check["path"], "offset": check["offset"],
                           "tail_sha256": hashlib.sha256(tail).hexdigest()})
        state["file_checks"] = tuple(checks)

    _rewrite_checkpoint(d / "ckpt" / CHECKPOINT_NAME, format_1)
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert code == 0, err
    log, _ = _straight_run(tmp_path, capsys, 9)
    assert (d / "run.log").read_bytes() == log


@pytest.mark.parametrize("flag, name", [("--log-file", "run.log"), ("--metrics-file", "metrics.jsonl")])
def test_an_output_file_of_a_live_run_is_refused(finished_run, capsys, flag, name):
    """Another run (its own save-dir) writing the same log: refused, the file untouched."""
    d, argv = finished_run
    before = snapshot(d)
    holder = OutputLock(flag, str(d / name), create=False)
    try:
        code, _, err = run_main(BASE + ["--save-dir", str(d / "other"), flag, str(d / name)], capsys)
    finally:
        holder.release()
    assert_refused(code, err, flag, "another run")
    assert {k: v for k, v in snapshot(d).items() if not k.startswith("other")} == before


def test_a_symlinked_log_stays_a_link_when_the_run_is_extended(tmp_path, capsys):
    d = tmp_path / "run"
    (d / "real").mkdir(parents=True)
    for name in ("run.log", "metrics.jsonl"):
        (d / name).symlink_to(d / "real" / name)
    argv = BASE + ["--save-dir", str(d / "ckpt"), "--log-file", str(d / "run.log"),
                   "--metrics-file", str(d / "metrics.jsonl")]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert code == 0, err
    for name in ("run.log", "metrics.jsonl"):
        assert (d / name).is_symlink()
    log, metrics = _straight_run(tmp_path, capsys, 9)
    assert (d / "real" / "run.log").read_bytes() == log
    assert (d / "real" / "metrics.jsonl").read_bytes() == metrics


def test_temporaries_left_by_a_kill_are_removed(finished_run, capsys):
    d, argv = finished_run
    ours, gone = temporary_name, dead_pid()
    left = [d / "ckpt" / f"g.pth.tmp{gone}", d / "ckpt" / ours("unsup_f.pth", gone), d / ours("metrics.jsonl", gone),
            d / ours("run.log", gone)]
    for path in left:
        path.write_bytes(b"half written")
    keep = [d / "run.log.tmp-notes", d / "run.log.tmp4246", d / "metrics.jsonl.tmp2024"]  # not ours
    for path in keep:
        path.write_bytes(b"mine")
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert code == 0, err
    assert not any(path.exists() for path in left)
    assert all(path.read_bytes() == b"mine" for path in keep)


@pytest.mark.parametrize("value", [0, -1, "2", True, 2.0])
def test_a_checkpoint_of_no_known_format_is_refused(finished_run, capsys, value):
    d, argv = finished_run
    _rewrite_checkpoint(d / "ckpt" / CHECKPOINT_NAME, lambda s: s.update(format=value))
    before = snapshot(d)
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert_refused(code, err, "--resume-training", "format")
    assert snapshot(d) == before


TWO_PHASE = [a for a in BASE if a != "--only-unsupervised"]


@pytest.fixture
def two_phase_run(tmp_path, capsys):
    """A finished run of both phases (3 supervised steps, then 3 contrastive ones) in tmp_path/two."""
    d, argv = run_to_the_end(tmp_path / "two", TWO_PHASE, capsys)
    assert sorted(os.listdir(d / "ckpt")) == [".lock", CHECKPOINT_NAME, "g.pth", "sup_f.pth", "unsup_f.pth"]
    return d, argv


@pytest.mark.parametrize("steps", [5, 2])
def test_a_resume_that_would_change_a_finished_phase_is_refused(two_phase_run, capsys, steps):
    """The supervised phase is over: another --n-steps would leave it at its old length under a header
    that says the new one. Extending the last phase (--more-unsupervised) still works."""
    d, argv = two_phase_run
    before = snapshot(d)
    code, _, err = run_main(_extend(argv, steps), capsys)
    assert_refused(code, err, "--n-steps", "supervised")
    assert snapshot(d) == before
    code, _, err = run_main(argv + ["--resume-training", "--more-unsupervised", "2"], capsys)
    assert code == 0, err


def test_overwrite_leaves_nothing_of_the_previous_run(two_phase_run, capsys):
    """--overwrite --only-unsupervised into a two-phase run's directory: no old sup_f.pth beside the new g."""
    d, argv = two_phase_run
    old = snapshot(d / "ckpt")
    code, _, err = run_main(argv + ["--overwrite", "--only-unsupervised", "--seed", "1"], capsys)
    assert code == 0, err
    now = snapshot(d / "ckpt")
    assert sorted(now) == [".lock", CHECKPOINT_NAME, "g.pth", "unsup_f.pth"]
    assert now["g.pth"] != old["g.pth"] and now["unsup_f.pth"] != old["unsup_f.pth"]


HARD_NEGATIVES = ["--hn-beta", "1", "--n-steps", "5"]


def test_a_hard_negative_run_killed_mid_way_resumes_to_the_uninterrupted_files(tmp_path, capsys, monkeypatch):
    """--hn-beta 1, killed in step 4 (its checkpoint at step 3): the same command with --resume-training
    writes what an uninterrupted run writes; a resume with another β (or none) is refused, nothing touched."""
    d = tmp_path / "run"
    d.mkdir()
    argv = BASE + HARD_NEGATIVES + ["--save-dir", str(d / "ckpt"), "--log-file", str(d / "run.log"),
                                    "--metrics-file", str(d / "metrics.jsonl")]
    real, calls = main_mlp.optimise, []

    def killed_in_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(main_mlp, "optimise", killed_in_step_4)
    with pytest.raises(Killed):
        run_main(argv, capsys)
    monkeypatch.setattr(main_mlp, "optimise", real)
    capsys.readouterr()
    assert read_checkpoint(str(d / "ckpt" / CHECKPOINT_NAME), main_mlp.CHECKPOINT_LAYOUT)["step"] == 3
    code, _, err = run_main(argv + ["--resume-training"], capsys)
    assert code == 0, err
    log, metrics = _straight_run(tmp_path, capsys, 5, HARD_NEGATIVES)
    assert (d / "run.log").read_bytes() == log and (d / "metrics.jsonl").read_bytes() == metrics
    assert b"\thn_beta: 1.0\nlambda init:" in log and b'"hn_beta": 1.0' in metrics  # named, after every other flag
    before = snapshot(d)
    for other in (["--hn-beta", "2"], ["--hn-beta", "0"]):
        code, _, err = run_main(argv + ["--resume-training", "--n-steps", "7"] + other, capsys)
        assert_refused(code, err, "--resume-training", "hn_beta (1.0 there")
        assert snapshot(d) == before


def test_a_checkpoint_from_before_hn_beta_and_lambda_init_resumes_at_their_defaults(finished_run, tmp_path, capsys):
    """A checkpoint written before --hn-beta and --lambda-init existed (neither in its configuration) ran the plain
    loss from the reference's Λ̂: it resumes without the flags, to the files of a straight run, which name neither;
    with --hn-beta 1 or --lambda-init 10 it is refused."""
    d, argv = finished_run
    _rewrite_checkpoint(d / "ckpt" / CHECKPOINT_NAME,
                        lambda state: [state["config"].pop(k) for k in ("hn_beta", "lambda_init")])
    before = snapshot(d)
    for flag, named in (("--hn-beta", "hn_beta (0.0 there, 1.0 here)"), ("--lambda-init", "lambda_init (None there")):
        code, _, err = run_main(_extend(argv, 9) + [flag, "1"], capsys)
        assert_refused(code, err, "--resume-training", named)
        assert snapshot(d) == before
    code, _, err = run_main(_extend(argv, 9), capsys)
    assert code == 0, err
    log, metrics = _straight_run(tmp_path, capsys, 9)
    assert (d / "run.log").read_bytes() == log and (d / "metrics.jsonl").read_bytes() == metrics
    assert not any(name in text for name in (b"hn_beta", b"lambda_init") for text in (log, metrics))


@pytest.mark.parametrize("forged", [{"phase": "bogus"}, {"finished": {"bogus": 7}}, {"step": 10.5},
                                    {"phase": ["unsupervised"]}, {"file_checks": ({"path": 3}, None)},
                                    {"phase": "supervised"}],
                         ids=["phase", "finished", "step", "unhashable-phase", "file-checks", "phase-not-run"])
def test_a_forged_checkpoint_is_refused_before_anything_is_cut(finished_run, capsys, forged):
    """A checkpoint whose checksum holds but whose fields are not what a run writes (or name a phase this run
    has not): one line naming the field, exit 2, the log and metrics files untouched."""
    d, argv = finished_run
    _rewrite_checkpoint(d / "ckpt" / CHECKPOINT_NAME, lambda state: state.update(forged))
    before = snapshot(d)
    code, out, err = run_main(_extend(argv, 9), capsys)
    field = "phase" if "phase" in forged else next(iter(forged))
    assert_refused(code, err, "--resume-training", field, out="")
    assert snapshot(d) == before
