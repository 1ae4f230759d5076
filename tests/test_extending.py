"""A new loss, or a new latent space, is one table entry: a toy of each, added here and nowhere else,
runs end to end through the command line, the run's log and metrics, and the sweep's labels."""

import json

import torch
from torch import nn

import latent_spaces
import losses
import settings
import spaces
import sweep_summary
from cli_util import parse_log, run_main


class AlignOnly(nn.Module):
    """A toy loss: mean squared distance of the positives on the unit sphere, plus a contrastive
    term with a learnable temperature; enough to train and to have a parameter."""

    def __init__(self):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, a, b):
        a = a / a.norm(dim=1, keepdim=True)
        b = b / b.norm(dim=1, keepdim=True)
        logits = a @ b.T / self.log_temperature.exp()  # (B, B)
        rows = torch.logsumexp(logits, dim=1)  # (B,)
        return losses.contrastive_cross_entropy(logits.diagonal(), [rows])


def _toy_loss(args, init_gen):
    return AlignOnly()


TINY = ["--device", "cpu", "--n", "3", "--batch-size", "32", "--only-unsupervised", "--more-unsupervised", "1",
        "--n-steps", "4", "--n-log-steps", "2", "--num-eval-batches", "1", "--seed", "0"]


def test_a_new_loss_is_one_entry(monkeypatch, tmp_path, capsys):
    entry = settings.Loss("a toy: alignment with a learned temperature", _toy_loss, learns_lambda=False,
                          blocks=1, label="toy loss")
    monkeypatch.setitem(settings.LOSSES, "toy", entry)
    metrics = tmp_path / "run.jsonl"
    code, out, err = run_main(TINY + ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
                                      "--loss", "toy", "--metrics-file", str(metrics)], capsys)
    assert code == 0, err
    log = parse_log(out)
    assert log["args"]["loss"] == "toy" and log["lambda_init"] is None
    steps = log["phases"][0]["steps"]
    assert [s["step"] for s in steps] == [1, 3, 4] and steps[-1]["loss"] < steps[0]["loss"] + 1
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records[-1]["type"] == "final" and "lambda" not in records[1]
    assert sweep_summary.loss_label(log["args"]) == "toy loss"


def test_a_new_space_is_one_entry(monkeypatch, capsys):
    def small_box(args):
        return spaces.NBoxSpace(args.n, -0.5, 0.5)

    monkeypatch.setitem(latent_spaces.SPACES, "small_box", small_box)
    code, out, err = run_main(TINY + ["--space-type", "small_box", "--p", "1"], capsys)
    assert code == 0, err
    log = parse_log(out)
    assert log["args"]["space_type"] == "small_box"
    assert log["final"] is not None and len(log["phases"][0]["steps"]) == 3
