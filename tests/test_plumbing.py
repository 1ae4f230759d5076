"""The rooms of plumbing/: each imports only the rooms below it (no cycles), the torch-free ones stay so, and
none names a part of the experiment (main_mlp declares those)."""

import ast
import os
import subprocess
import sys

from cli_util import ROOT

# From the bottom up: a room may import only the rooms before it.
ROOMS = ("errors", "signals", "argparse_utils", "files", "locks", "checkpoint", "log", "survival")


def _source(room):
    with open(os.path.join(ROOT, "plumbing", f"{room}.py"), encoding="utf-8") as handle:
        return handle.read()


def _rooms_imported(room):
    found = set()
    for node in ast.walk(ast.parse(_source(room))):
        if isinstance(node, ast.ImportFrom) and node.module == "plumbing":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plumbing."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("plumbing."))
    return found


def test_each_room_imports_only_the_rooms_below_it():
    assert sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "plumbing")) if f.endswith(".py")) == sorted(
        ROOMS + ("__init__",))
    for k, room in enumerate(ROOMS):
        assert _rooms_imported(room) <= set(ROOMS[:k]), room
    assert _rooms_imported("log") == {"argparse_utils", "checkpoint", "errors", "files"}  # else the loop checks nothing


def test_the_rooms_below_checkpoint_import_no_torch():
    code = "import sys, plumbing.locks, plumbing.signals, plumbing.argparse_utils; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_no_room_names_a_part_of_the_experiment():
    parts = ['"encoder"', '"loss_fn"', '"optimizer"', '"g"', '"supervised"', '"unsupervised"', ".exp.", "phase.f",
             "disentanglement_utils", "Step: ", "linear mean"]
    for room in ROOMS:
        text = _source(room)
        assert [part for part in parts if part in text] == [], room
