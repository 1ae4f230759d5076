"""A new loss, latent space, conditional or metric is a table entry: a toy of each, added here and
nowhere else, runs end to end through the command line, the run's log and metrics, the memory
estimate and the sweep's labels."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import command_line
import disentanglement_utils as du
import latent_spaces
import losses
import main_mlp
from tools import metrics_io
from tools import plot_logs
import settings
import spaces
from tools import sweep_summary
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
    entry = settings.Loss("a toy: alignment with a learned temperature", f"{__name__}._toy_loss", blocks=1,
                          label="toy loss")
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
    assert "toy: a toy: alignment" in " ".join(command_line.build_parser().format_help().split())


def test_the_memory_estimate_reads_the_loss_entry(monkeypatch):
    argv = ["--n", "10", "--batch-size", "1000", "--space-type", "extended_sphere", "--c-p", "0", "--p", "0"]
    _, args = main_mlp.parse_args(argv)
    base = main_mlp.peak_memory(args)
    monkeypatch.setitem(settings.LOSSES, "aninfonce", dataclasses.replace(settings.LOSSES["aninfonce"], blocks=104))
    # 100 more (B, B) float32 blocks: the training step is then the peak
    assert main_mlp.peak_memory(args) >= 100 * 1000 * 1000 * 4 > base


def test_an_unknown_loss_is_refused_by_the_torch_free_parser(capsys):
    with pytest.raises(SystemExit):
        command_line.build_parser().parse_args(["--loss", "nonesuch"])
    assert "argument --loss: invalid choice: 'nonesuch'" in capsys.readouterr().err
    code, out, err = run_main(TINY + ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
                                      "--loss", "nonesuch"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1
    assert "argument --loss: invalid choice: 'nonesuch'" in lines[0] and "aninfonce" in lines[0]


class UniformJitter:
    """A toy conditional: z~ = z + c_param · U(-1, 1)^n, clamped into the box."""

    calls = 0

    def __init__(self, scale, low, high):
        self.scale, self.low, self.high = scale, low, high

    def sample(self, space, z, generator):
        UniformJitter.calls += 1
        step = torch.rand(z.shape, generator=generator, device=z.device) * 2 - 1  # (B, n)
        return (z + self.scale * step).clamp(self.low, self.high)


def _jitter(args, positive_std, acceptance):
    return UniformJitter(args.c_param, args.box_min, args.box_max)


def _jitter_acceptance(args, space, positive_std, generator, device, num):
    return 0.25  # a toy estimate: the run logs what the entry says


def test_a_new_conditional_is_one_entry_and_its_sampler(monkeypatch, capsys):
    # --c-p 0 on the box picked nothing (refused); the toy's entry makes it a conditional.
    code, _, err = run_main(TINY + ["--space-type", "box", "--c-p", "0", "--p", "1"], capsys)
    assert code == 2 and "argument --c-p" in err
    entry = settings.Conditional("0 uniform jitter on box", f"{__name__}._jitter", c_p=0, spaces=("box",),
                                 acceptance=f"{__name__}._jitter_acceptance")
    monkeypatch.setitem(settings.CONDITIONALS, "jitter", entry)
    assert settings.derive("box", 1, 0).conditional == "jitter"
    assert "0 uniform jitter on box" in settings.conditional_help()
    monkeypatch.setattr(UniformJitter, "calls", 0)
    code, out, err = run_main(TINY + ["--space-type", "box", "--c-p", "0", "--p", "1", "--c-param", "0.05"], capsys)
    assert code == 0, err
    log = parse_log(out)
    assert log["args"]["c_p"] == "0" and log["gt_lambda"] is None
    assert "positive sampler acceptance rate: 0.250" in err  # the entry's estimate, asked by the run
    assert [s["step"] for s in log["phases"][0]["steps"]] == [1, 3, 4] and log["final"] is not None
    assert UniformJitter.calls == 4  # one batch of positives per step


@pytest.mark.parametrize("c_p, spaces_, other, where", [
    (0, ("sphere", "box"), "vmf", "on sphere"), (0.0, None, "vmf", "on sphere"),
    (None, ("box",), "generalized_normal", "any other --c-p on box"), (2, None, "normal", "--c-p 2 on every space"),
])
def test_an_ambiguous_conditional_is_refused(monkeypatch, c_p, spaces_, other, where):
    entry = settings.Conditional("a toy", f"{__name__}._jitter", c_p=c_p, spaces=spaces_)
    with pytest.raises(ValueError, match=f"conditionals '{other}' and 'toy' both match .*{where}"):
        settings.check_conditionals({**settings.CONDITIONALS, "toy": entry})
    # one added after the import-time check is refused where it would be picked, whatever its place
    monkeypatch.setattr(settings, "CONDITIONALS", {"toy": entry, **settings.CONDITIONALS})
    with pytest.raises(ValueError, match="'toy' and '" + other):
        settings.conditional_name("box" if spaces_ == ("box",) else "sphere", 1.5 if c_p is None else c_p)
    unnamed_c_p = dataclasses.replace(entry, c_p=7, spaces=None)  # the same entry on a --c-p no other names
    assert "toy" in settings.check_conditionals({**settings.CONDITIONALS, "toy": unnamed_c_p})


def hz_spread(z, hz, groups):
    """A toy metric: the std of each output of h (a list) and their mean (a number)."""
    dims = hz.std(axis=0)
    return {"toy": float(dims.mean()), "toy_dims": dims.tolist()}


def test_a_new_metric_is_its_function_and_one_entry(monkeypatch, tmp_path, capsys):
    toy = du.Metric(hz_spread, fields=(du.Field("toy", "Toy spread", plot="panel", spread=True),
                                       du.Field("toy_dims", "toy per latent", per="latent")))
    declared = [f.name for f in du.fields()]
    monkeypatch.setattr(du, "METRICS", du.METRICS + (toy,))
    metrics = tmp_path / "toy_seed0.jsonl"
    code, out, err = run_main(TINY + ["--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
                                      "--num-eval-batches", "3", "--metrics-file", str(metrics)], capsys)
    assert code == 0, err
    parse_log(out)  # the text log keeps the reference's format
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    final = records[-1]
    assert len(steps) == 3 and all(r["toy"] == pytest.approx(np.mean(r["toy_dims"])) for r in steps)
    assert all(len(r["toy_dims"]) == 3 and r["toy"] > 0 for r in steps)
    # the step record: the existing scores, then the new ones; the final record: mean and std over batches
    keys = list(steps[0])
    existing = [name for name in declared if name in keys]
    assert existing[:2] == ["lin", "perm"] and [k for k in keys if k in existing] == existing
    assert keys.index("toy") > max(keys.index(k) for k in existing) and keys[keys.index("toy") + 1] == "toy_dims"
    assert list(final).index("toy_mean") < list(final).index("toy_std") < list(final).index("toy_dims")
    assert final["toy_mean"] > 0 and final["toy_std"] >= 0 and len(final["toy_dims"]) == 3
    # the plot gives it a panel of its own, under its label; the summary a row of its own
    fig = plot_logs.plot([metrics_io.read_any(str(metrics), "unsupervised")], ["run"], "unsupervised", (6, 4), 50, "t")
    [panel] = [ax for ax in fig.axes if ax.get_title() == "Toy spread vs step"]
    assert list(panel.get_lines()[0].get_ydata()) == pytest.approx([r["toy"] for r in steps])
    plot_logs.plt.close(fig)
    row = sweep_summary.summarize_run("toy", 0, str(tmp_path / "toy_seed0.log"))
    lines = sweep_summary.field_lines([sweep_summary.aggregate("toy", [row])])
    assert any(line.startswith(f"| toy | final | toy_mean | {final['toy_mean']:.4f} ± - | 1 |") for line in lines)


def _small_box(config):
    return spaces.NBoxSpace(config.n, -0.5, 0.5)


def test_a_new_space_is_one_entry(monkeypatch, capsys):
    monkeypatch.setitem(settings.SPACES, "small_box", settings.Choice("[-0.5, 0.5]^n", f"{__name__}._small_box"))
    code, out, err = run_main(TINY + ["--space-type", "small_box", "--p", "1"], capsys)
    assert code == 0, err
    log = parse_log(out)
    assert log["args"]["space_type"] == "small_box"
    assert log["final"] is not None and len(log["phases"][0]["steps"]) == 3


def test_the_tables_entries_build_and_every_space_and_p_has_its_loss():
    for entry in settings.CONDITIONALS.values():  # the builders each entry names exist
        assert all(callable(settings.load(name)) for name in (entry.sampler, entry.acceptance,
                                                              entry.proposal_elements) if name)
    assert all(callable(settings.load(entry.build)) for entry in settings.LOSSES.values())
    assert settings.LOSSES[settings.DEFAULT_LOSS].selectable
    for space in settings.SPACES:  # one loss applies, or --loss picks among the selectable ones
        for p in (0, 0.5, 1, 2):
            applies = [name for name, entry in settings.LOSSES.items() if entry.applies(space, p)]
            selectable = [name for name in applies if settings.LOSSES[name].selectable]
            assert len(applies) == 1 or applies == selectable, (space, p, applies)


@pytest.mark.parametrize("space, c_p, name, sampler", [
    ("box", 2, "normal", latent_spaces.Around), ("box", 1, "laplace", latent_spaces.Around),
    ("sphere", 1.5, "generalized_normal", latent_spaces.Around), ("sphere", 0, "vmf", latent_spaces.VonMisesFisher),
    ("extended_sphere", 0, "anisotropic", latent_spaces.AnisotropicNormal),
    ("extended_sphere", 2, "normal", latent_spaces.Around), ("box", 0, None, None), ("unbounded", 0, None, None),
])
def test_the_flags_pick_the_conditional(space, c_p, name, sampler):
    derived = settings.derive(space, 0, c_p)
    assert derived.conditional == name and derived.anisotropic == (name == "anisotropic")
    if name is None:
        return
    _, args = main_mlp.parse_args(["--space-type", space, "--c-p", str(c_p), "--m-p", "2"])
    built = latent_spaces.build_latent_space(args, latent_spaces.build_space(args), derived.conditional,
                                             torch.ones(args.n), 0.5).conditional
    assert type(built) is sampler
    if sampler is latent_spaces.Around:
        assert (built.kind, built.scale, built.p) == (latent_spaces.noise_kind(c_p), args.c_param, c_p)


# What each --space-type and --c-p picked before the conditionals were one table (read from that code):
# --c-p 1 Laplace, 2 normal, 0 vMF on sphere and the rejected normal on extended_sphere (refused elsewhere),
# every other --c-p the generalised normal.
TODAYS_CONDITIONALS = {
    (0, "box"): None, (0, "sphere"): "vmf", (0, "unbounded"): None, (0, "extended_sphere"): "anisotropic",
    **{(1, space): "laplace" for space in settings.SPACES},
    **{(2, space): "normal" for space in settings.SPACES},
    **{(p, space): "generalized_normal" for p in (0.5, 1.5, 3) for space in settings.SPACES},
}


def test_every_existing_c_p_keeps_its_conditional():
    for (c_p, space), name in TODAYS_CONDITIONALS.items():  # the spaces × the entries' --c-p and others
        assert settings.conditional_name(space, c_p) == settings.conditional_name(space, str(c_p)) == name
