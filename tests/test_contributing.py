"""docs/contributing.md, followed as a contributor would: each test copies the project's code, edits only the
files the doc names for its extension (a loss with a flag of its own, a conditional, a metric), and runs the
real command line and tools in the copy."""

import filecmp
import json
import os
import shutil
import subprocess
import sys

import pytest

from cli_util import ROOT, env_for_cli

pytestmark = pytest.mark.slow

SWEPT = ["--device", "cpu", "--n", "3", "--batch-size", "32", "--only-unsupervised", "--more-unsupervised", "1",
         "--n-steps", "4", "--n-log-steps", "2", "--num-eval-batches", "2"]  # tools.sweep gives the --seed
TINY = [*SWEPT, "--seed", "0"]
SPHERE = ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0"]
CODE = ("plumbing", "tools")  # the packages; and every module at the top level


def copy_of_the_code(tmp_path):
    """The project's code in ``tmp_path/tree`` (its tests, logs and docs left out)."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=lambda where, names: [
        n for n in names if where == ROOT and not (n.endswith(".py") or n in CODE) or n == "__pycache__"])
    return tree


def changed_files(tree):
    """The files of ``tree`` that differ from the project's (or are new), relative paths."""
    changed = []
    for where, _, names in os.walk(tree):
        for name in names:
            path = os.path.join(where, name)
            original = os.path.join(ROOT, os.path.relpath(path, tree))
            if "__pycache__" not in path and not (os.path.exists(original) and filecmp.cmp(path, original, False)):
                changed.append(os.path.relpath(path, tree))
    return sorted(changed)


def insert(tree, path, anchor, text, where="after"):
    """Put ``text`` after (or ``where="before"``) the line that starts with ``anchor`` or, ``where="closing"``,
    before the line that closes the table it opens (the first later line that is only ``)``, ``}`` or ``})``)."""
    lines = (tree / path).read_text(encoding="utf-8").splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(anchor)) + (where != "before")
    if where == "closing":
        at += next(i for i, line in enumerate(lines[at:]) if line.strip() in (")", "}", "})"))
    lines.insert(at, text)
    (tree / path).write_text("".join(lines), encoding="utf-8")


def append(tree, path, text):
    with open(tree / path, "a", encoding="utf-8") as handle:
        handle.write(text)


def after_arguments(log):
    """A log's lines after its Arguments block (which names the run's files)."""
    return [line for line in log.splitlines() if not line.startswith(("Arguments:", "\t"))]


def run(tree, *argv):
    return subprocess.run([sys.executable, *argv], cwd=tree, env=env_for_cli(), capture_output=True, text=True,
                          timeout=300)


def test_a_loss_with_a_flag_of_its_own(tmp_path):
    """losses.py: the module and its builder; settings.py: its entry; command_line.py: its flag."""
    tree = copy_of_the_code(tmp_path)
    append(tree, "losses.py", '''

class ScaledDot(nn.Module):
    """A toy loss: the dot-product form on the unit sphere, its logits times ``scale``."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, a, b):
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        logits = self.scale * a @ b.T  # (B, B)
        return contrastive_cross_entropy(logits.diagonal(), [torch.logsumexp(logits, dim=1)])


def scaled_dot(config, init_gen):
    return ScaledDot(config.toy_scale)
''')
    insert(tree, "settings.py", "LOSSES = {", '    "toy": Loss("a toy: the dot product times --toy-scale", '
                                             '"losses.scaled_dot", reads=("toy_scale",), label="toy loss"),\n',
           where="closing")
    insert(tree, "command_line.py", "def _add_our_flags(parser):",
           '    parser.add_argument("--toy-scale", type=float, default=1.0, help="the toy loss\'s logit scale")\n')
    assert changed_files(tree) == ["command_line.py", "losses.py", "settings.py"]
    help_ = run(tree, "main_mlp.py", "--help")
    assert help_.returncode == 0 and "toy: a toy: the dot product" in " ".join(help_.stdout.split())
    out = tmp_path / "out"
    sweep = run(tree, "-m", "tools.sweep", "--seeds", "0", "--jobs", "1", "--threads", "1", "--out-dir", str(out),
                "--name", "toy", "--", *SWEPT, *SPHERE, "--loss", "toy", "--toy-scale", "3")
    assert sweep.returncode == 0, sweep.stderr
    log = (out / "toy_seed0.log").read_text(encoding="utf-8")
    assert "\tloss: toy\n" in log and "\ttoy_scale: 3.0\n" in log and "linear mean:" in log
    assert "learned lambda values" not in log  # the entry learns no Λ̂
    config = json.loads((out / "toy_seed0.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert config["args"]["toy_scale"] == 3.0
    assert "| toy | toy loss |" in (out / "toy_summary.md").read_text(encoding="utf-8")
    # where the run's loss does not read the flag, it is refused (the flag would do nothing)
    other = run(tree, "main_mlp.py", *TINY, *SPHERE, "--toy-scale", "3")
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "argument --toy-scale: the aninfonce loss does not read it" in other.stderr


def test_a_conditional(tmp_path):
    """latent_spaces.py: its sampler; settings.py: its entry."""
    tree = copy_of_the_code(tmp_path)
    argv = [*TINY, "--space-type", "box", "--c-p", "0", "--p", "1"]
    refused = run(tree, "main_mlp.py", *argv)
    assert refused.returncode == 2 and "argument --c-p" in refused.stderr  # --c-p 0 on the box: nothing yet
    append(tree, "latent_spaces.py", '''

class Jitter:
    """A toy conditional: z~ = z + --c-param · U(-1, 1)^n, clamped into the box."""

    def __init__(self, args, positive_std=None, acceptance=None):
        self.scale, self.low, self.high = args.c_param, args.box_min, args.box_max

    def sample(self, space, z, generator):
        step = torch.rand(z.shape, generator=generator, device=z.device) * 2 - 1  # (B, n)
        return (z + self.scale * step).clamp(self.low, self.high)
''')
    insert(tree, "settings.py", "CONDITIONALS = check_conditionals({",
           '    "jitter": Conditional("0 uniform jitter on box", "latent_spaces.Jitter", c_p=0, spaces=("box",)),\n',
           where="closing")
    assert changed_files(tree) == ["latent_spaces.py", "settings.py"]
    done = run(tree, "main_mlp.py", *argv)
    assert done.returncode == 0, done.stderr
    assert "\tc_p: 0\n" in done.stdout and "linear mean:" in done.stdout
    assert "0 uniform jitter on box" in " ".join(run(tree, "main_mlp.py", "--help").stdout.split())
    # the existing --c-p keep their meaning
    assert run(tree, "main_mlp.py", *TINY, *SPHERE).stdout == run(ROOT, "main_mlp.py", *TINY, *SPHERE).stdout


def test_a_metric(tmp_path):
    """disentanglement_utils.py: its function and its entry; the log, metrics file, summary and plot follow."""
    tree = copy_of_the_code(tmp_path)
    insert(tree, "disentanglement_utils.py", "METRICS = (", '''def output_spread(z, hz, groups):
    """A toy metric: the std of each output of h, and their mean."""
    dims = hz.std(axis=0)
    return {"spread": float(dims.mean()), "spread_dims": dims.tolist()}


''', where="before")
    insert(tree, "disentanglement_utils.py", "METRICS = (", '    Metric(output_spread, fields=(Field("spread", '
           '"Output spread", plot="panel", spread=True), Field("spread_dims", "spread per latent", per="latent"))),\n',
           where="closing")
    assert changed_files(tree) == ["disentanglement_utils.py"]
    out = tmp_path / "out"
    sweep = run(tree, "-m", "tools.sweep", "--seeds", "0", "--jobs", "1", "--threads", "1", "--out-dir", str(out),
                "--name", "toy", "--", *SWEPT, *SPHERE)
    assert sweep.returncode == 0, sweep.stderr
    records = [json.loads(line) for line in (out / "toy_seed0.jsonl").read_text(encoding="utf-8").splitlines()]
    steps, final = [r for r in records if r["type"] == "step"], records[-1]
    assert len(steps) == 3 and all(len(r["spread_dims"]) == 3 and r["spread"] > 0 for r in steps)
    assert final["spread_mean"] > 0 and "spread_std" in final and len(final["spread_dims"]) == 3
    # the text log keeps the reference's format: the same bytes as the unedited code's
    plain = run(ROOT, "main_mlp.py", *TINY, *SPHERE)
    assert plain.returncode == 0, plain.stderr
    assert after_arguments((out / "toy_seed0.log").read_text(encoding="utf-8")) == after_arguments(plain.stdout)
    assert "| toy | final | spread_mean |" in (out / "toy_summary.md").read_text(encoding="utf-8")
    plot = run(tree, "-c", "import sys; from tools import metrics_io, plot_logs; "
               f"fig = plot_logs.plot([metrics_io.read_any({str(out / 'toy_seed0.jsonl')!r}, 'unsupervised')], "
               "['run'], 'unsupervised', (6, 4), 50, 't'); print([ax.get_title() for ax in fig.axes])")
    assert plot.returncode == 0 and "Output spread vs step" in plot.stdout, plot.stderr
