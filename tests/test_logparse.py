"""Known-answer tests of logparse's line reader: each line type, each error message, text vs file.

The log tools' own tests (test_tools.py) read logs rendered like a real run's;
these hold the reader to the exact record it builds and the exact error it
raises, on one small log that has every line type.
"""

import dataclasses

import pytest

from tools import logparse

# Line numbers, for the expected errors below.
LOG_LINES = [
    "Arguments:",                                                          # 1
    "\tseed: 0",                                                           # 2
    "\tsave_dir:",                                                         # 3
    "lambda init: tensor([0.1000, -0.2000])",                              # 4
    "ground truth Lambda:  tensor([25.,",                                  # 5
    "         5.], device='cuda:0')",                                      # 6
    "condition number threshold: 3.612555",                                # 7
    "layer 1/2,  condition number: 3.45",                                  # 8
    "layer 2/2,  condition number: 3.41",                                  # 9
    "Id. Lin. Disentanglement: 0.6900",                                    # 10
    "Id. Perm. Disentanglement: 0.4870",                                   # 11
    "supervised test: False",                                              # 12
    "f: Sequential(",                                                      # 13
    "  (0): Linear(in_features=2, out_features=2, bias=True)",             # 14
    ")",                                                                   # 15
    "Step: 1 \t Loss: 7.6004 \t <Loss>: 7.5000 \t Lin. Disentanglement: 0.4000 \t "
    "Perm. Disentanglement: 0.3000",                                       # 16
    "r: Parameter containing:",                                            # 17
    "tensor([1.2500], requires_grad=True)",                                # 18
    "learned lambda values: [0.7, 0.2] \t",                                # 19
    "[unsupervised] step 1/3  4.5 steps/s",                                # 20
    "linear mean: 0.99 std: 0.001",                                        # 21
    "perm mean: 0.9 std: 0.002",                                           # 22
]
LOG = "\n".join(LOG_LINES) + "\n"


def _replaced(number, line):
    """LOG with line ``number`` (1-based) replaced by ``line`` (None: deleted)."""
    lines = list(LOG_LINES)
    lines[number - 1:number] = [] if line is None else [line]
    return "\n".join(lines) + "\n"


def test_every_line_type_known_answer():
    log = logparse.parse_text(LOG)
    assert log.args == {"seed": "0", "save_dir": ""}
    assert log.lambda_init == [0.1, -0.2] and log.gt_lambda == [25.0, 5.0]
    assert log.cond_threshold == 3.612555 and log.cond_numbers == [3.45, 3.41]
    assert (log.id_lin, log.id_perm) == (0.69, 0.487)
    assert log.skipped == [20] and log.n_lines == 22 and not log.truncated
    [phase] = log.phases
    assert (phase.name, phase.line) == ("unsupervised", 12)
    assert phase.encoder == "Sequential(\n  (0): Linear(in_features=2, out_features=2, bias=True)\n)"
    assert phase.steps == [{"step": 1, "loss": 7.6004, "mean_loss": 7.5, "lin": 0.4, "perm": 0.3,
                            "lambda": [0.7, 0.2], "r": 1.25}]
    assert phase.final == {"lin_mean": 0.99, "lin_std": 0.001, "perm_mean": 0.9, "perm_std": 0.002}


@pytest.mark.parametrize("text", [
    LOG,
    LOG.replace("\n", "\r\n"),  # written on Windows
    LOG[:LOG.index("Step:") + 20],  # cut mid-line: the Step line is dropped
    LOG[:LOG.index("         5.]")],  # cut inside the wrapped tensor: it is dropped
    LOG + "Step: 2 \t Lo",
    "",
])
def test_text_and_file_read_alike(tmp_path, text):
    path = tmp_path / "a.log"
    path.write_bytes(text.encode("utf-8"))
    from_text = dataclasses.asdict(logparse.parse_text(text, path=str(path)))
    from_file = dataclasses.asdict(logparse.parse_log(str(path)))
    assert from_text == from_file


def test_cut_logs_known_answer():
    cut_step = logparse.parse_text(LOG[:LOG.index("Step:") + 20])
    assert cut_step.truncated and cut_step.n_lines == 15 and cut_step.phases[0].steps == []
    cut_tensor = logparse.parse_text(LOG[:LOG.index("         5.]")])
    assert cut_tensor.truncated and cut_tensor.n_lines == 5 and cut_tensor.gt_lambda is None


@pytest.mark.parametrize("number, line, error_line, message", [
    (2, "\tseed 0", 2, "malformed argument line: '\\tseed 0'"),
    (4, "lambda init: tensor([0.1000, ...])", 4, "not a 1-d tensor repr: 'tensor([0.1000, ...])'"),
    (6, "5.])", 5, "gt_lambda repr not closed before line 6"),
    (7, "condition number threshold: ?", 7, "malformed condition number threshold line: "
                                            "'condition number threshold: ?'"),
    (8, "layer 1/2,  condition number: big", 8, "malformed layer condition number line: "
                                                "'layer 1/2,  condition number: big'"),
    (10, "Id. Lin. Disentanglement: high", 10, "malformed identity score line: 'Id. Lin. Disentanglement: high'"),
    (12, "supervised test: maybe", 12, "malformed supervised test line: 'supervised test: maybe'"),
    (12, None, 12, "'f:' line before any 'supervised test:' line"),
    (15, None, 13, "encoder repr not closed before line 15"),
    (16, "Step: 1 \t Loss: x", 16, "malformed Step line: 'Step: 1 \\t Loss: x'"),
    (16, None, 17, "malformed radius line: 'tensor([1.2500], requires_grad=True)'"),
    (18, "tensor([r], requires_grad=True)", 18, "malformed radius line: 'tensor([r], requires_grad=True)'"),
    (18, "Step: 2", 18, "the radius tensor does not follow 'r: Parameter containing:'"),
    (19, "learned lambda values: 0.7, 0.2", 19, "malformed learned lambda values line: "
                                                "'learned lambda values: 0.7, 0.2'"),
    (19, "learned lambda values: [0.7, x]", 19, "not a list of numbers: 'learned lambda values: [0.7, x]'"),
    (21, "linear mean: 0.99 std:", 21, "malformed final score line: 'linear mean: 0.99 std:'"),
])
def test_errors_known_answer(number, line, error_line, message):
    with pytest.raises(logparse.LogParseError) as info:
        logparse.parse_text(_replaced(number, line), path="x.log")
    assert (info.value.line, info.value.message) == (error_line, message)
    assert str(info.value) == f"x.log:{error_line}: {message}"


@pytest.mark.parametrize("text, error_line, message", [
    (LOG_LINES[15] + "\n", 1, "Step line before any 'supervised test:' line"),
    ("linear mean: 0.99 std: 0.001\n", 1, "final score line before any 'supervised test:' line"),
    ("supervised test: True\nlearned lambda values: [1.0]\n", 2,
     "learned lambda values line without a Step line before it"),
    ("supervised test: True\n" + LOG_LINES[15] + "\n" + LOG_LINES[18] + "\n" + LOG_LINES[18] + "\n", 4,
     "learned lambda values line without a Step line before it"),
])
def test_out_of_order_lines_known_answer(text, error_line, message):
    with pytest.raises(logparse.LogParseError) as info:
        logparse.parse_text(text)
    assert str(info.value) == f"<log>:{error_line}: {message}"


def test_file_errors_known_answer(tmp_path):
    path = tmp_path / "bin.log"
    path.write_bytes(b"Arguments:\n\xff\xfe\n")
    with pytest.raises(logparse.LogParseError) as info:
        logparse.parse_log(path)
    assert str(info.value) == f"{path}:2: not UTF-8 text"
    with pytest.raises(logparse.LogParseError) as info:
        logparse.parse_log(tmp_path / "nope.log")
    assert str(info.value) == f"{tmp_path / 'nope.log'}: cannot read the file (No such file or directory)"
