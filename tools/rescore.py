"""Score a finished run again, with every metric main_mlp.py records now, on fresh samples.

    python -m tools.rescore SAVE_DIR --seed 0 -o rescored.jsonl

What it reads and writes, and its exit statuses: docs/tools.md.
"""

import json
import os
import sys

import torch

import command_line
import disentanglement_utils
import encoders
import main_mlp
from plumbing.argparse_utils import ArgumentParser, bounded
from plumbing.checkpoint import read_checkpoint
from plumbing.errors import InputError
from plumbing.files import CHECKPOINT_NAME
from tools import metrics_io

PROG = "tools.rescore"
RECORD_START = b'{"type": "rescore"'  # how the records this tool appends begin


def parse_args(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("save_dir", metavar="SAVE_DIR", help="the finished run's --save-dir")
    add("--seed", type=int, required=True, help="seed of the fresh samples")
    add("--samples", type=bounded(int, at_least=4, at_most=10_000_000), default=main_mlp.N_EVAL_SAMPLES,
        help="samples per batch (default: %(default)s, as every logged step)")
    add("--batches", type=bounded(int, at_least=1, at_most=1000), default=4, help="batches (default: %(default)s)")
    add("--phase", choices=tuple(main_mlp.ENCODER_FILES), default="unsupervised",
        help="whose encoder (default: %(default)s)")
    add("--config", metavar="METRICS.jsonl", help="the run's --metrics-file, for a save-dir without its checkpoint")
    add("-o", "--output", required=True, metavar="OUT.jsonl", help="the file the record is appended to")
    return parser, parser.parse_args(argv)


def run_config(save_dir, metrics_file):
    """The run's flags as main_mlp.py parsed them: the parser's defaults (flags added since the run),
    then the checkpoint's configuration, or the metrics file's config record."""
    checkpoint = os.path.join(save_dir, CHECKPOINT_NAME)
    if metrics_file is not None:
        config = metrics_io.read(metrics_file).args
    elif os.path.exists(checkpoint):
        config = read_checkpoint(checkpoint, main_mlp.CHECKPOINT_LAYOUT, "SAVE_DIR")["config"]
    else:
        raise InputError(f"argument SAVE_DIR: no {checkpoint} to read the run's configuration "
                                     f"from; give the run's --metrics-file as --config")
    return command_line.config(**{k: v for k, v in config.items() if k in command_line.DEFAULTS})


def load_state(path):
    """A state dict saved by main_mlp.py; InputError naming the file when it is missing or not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"argument SAVE_DIR: no {path} (has the run finished?)") from None
    except Exception as exc:
        raise InputError(f"argument SAVE_DIR: cannot read {path} ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"argument SAVE_DIR: {path} is not a state dict of main_mlp.py")
    return state


def rescore(opts):
    """The record of ``opts``' run, scored anew."""
    args = run_config(opts.save_dir, opts.config)
    device = torch.device("cpu")
    init_gen, data_gen = torch.Generator().manual_seed(opts.seed), torch.Generator().manual_seed(opts.seed)
    exp = main_mlp.build_experiment(args, device, init_gen, data_gen)
    f = encoders.build_encoder(args.n, args.derived.normalization)
    for module, name in ((exp.g, "g.pth"), (f, main_mlp.ENCODER_FILES[opts.phase])):
        try:
            module.load_state_dict(load_state(os.path.join(opts.save_dir, name)))
        except RuntimeError as exc:  # keys or shapes of another model
            raise InputError(f"argument SAVE_DIR: {name} is not this run's model "
                                         f"({str(exc).splitlines()[0]})") from None
    h = torch.nn.Sequential(exp.g, f).eval()
    batches = []
    for _ in range(opts.batches):
        scores = main_mlp.evaluate(exp.latent, h, opts.samples, data_gen, device, exp.groups)
        if scores is None:
            raise InputError("argument SAVE_DIR: the encoder's output is not finite")
        batches.append(scores)
    spread = main_mlp.spread_fields(disentanglement_utils.METRICS)
    return {"type": "rescore", "save_dir": os.path.abspath(opts.save_dir), "phase": opts.phase, "seed": opts.seed,
            "samples": opts.samples, "batches": opts.batches, **main_mlp.summarise_batches(batches, spread)}


def refuse_foreign_output(parser, path):
    """Refuse an ``-o`` that is there and not a file of rescore records (a run's metrics file or log named by
    mistake would take a record its readers refuse) or not a regular file (a FIFO would block the append)."""
    try:
        with metrics_io.logparse.open_regular(path) as handle:
            head = handle.read(len(RECORD_START))
    except FileNotFoundError:
        return
    except OSError as exc:
        parser.error(f"argument -o/--output: cannot write {path} ({exc.strerror})")
    if head and head != RECORD_START:
        parser.error(f"argument -o/--output: {path} holds other records than rescore's (a run's metrics file or "
                     f"log?); give a file of its own")


def main(argv=None):
    parser, opts = parse_args(argv)
    refuse_foreign_output(parser, opts.output)
    try:
        record = rescore(opts)
    except (InputError, metrics_io.logparse.LogParseError) as exc:
        parser.error(str(exc))
    line = json.dumps(record) + "\n"
    try:
        with open(opts.output, "a", encoding="utf-8") as out:
            out.write(line)
    except OSError as exc:
        parser.error(f"argument -o/--output: cannot write {opts.output} ({exc.strerror})")
    sys.stdout.write(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
