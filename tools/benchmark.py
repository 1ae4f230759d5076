"""Time a training step against the hardware floor, on this machine (what each figure means: docs/speed.md).

    python -m tools.benchmark --batch-sizes 1000 256 --precision float32 bf16 --breakdown
    python -m tools.benchmark --device cuda --batch-sizes 1000 6144 --precision float32 tf32 --compile --sync-count
"""

import contextlib
import functools
import itertools
import time
import types
from statistics import mean, median

import torch
from torch.utils.benchmark import Timer

import encoders
from tools import host_sync
import invertible_network_utils
import main_mlp
from plumbing import argparse_utils
from plumbing.survival import keep_freed_memory

README_ARGS = ["--n", "10", "--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
               "--only-unsupervised", "--gt-lambda-1", "5", "--gt-lambda-2", "25"]
FULL_STEPS = 300_003
LOG_EVERY = 250
PRECISIONS = ("float32", "tf32", "bf16")
# A turn's block (Timer's rule): the fewest calls, a power of ten, that last over this many seconds or
# 10,000 times the timer's own cost (on a GPU, its synchronisations); blocks repeat to this many seconds.
MIN_BLOCK_S = 1e-3


def turn_times(fns, repeats, warmup=2):
    """Seconds per call of each function, timed in turns (a Timer block each) so that all see the same load:
    one list of ``repeats`` times per function, entry i of each from turn i."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    # num_threads: a Timer would otherwise time on one thread, where a run uses all of them.
    timers = [Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()) for fn in fns]
    turns = [[t.blocked_autorange(min_run_time=MIN_BLOCK_S).median for t in timers] for _ in range(repeats)]
    return [list(times) for times in zip(*turns)]


@contextlib.contextmanager
def tf32_matmuls(enabled):
    """TF32 matmuls on CUDA inside the block when ``enabled`` (main_mlp.py --allow-tf32), IEEE float32 when not."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gemm_shape(n, batch_size):
    """(M, K, N) of the encoder's widest product at this batch, the float32 GEMM behind the floor: both views'
    2B rows through the widest layer, (2B × 500) @ (500 × 500) for n = 10."""
    width = max(encoders.layer_widths(n))
    return 2 * batch_size, width, width


def encoder_step_flops(n, batch_size):
    """Matmul FLOPs of one step: forward (2 per MAC) and backward (twice that) of 2B samples."""
    dims = encoders.layer_widths(n)
    forward_per_sample = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return 3 * forward_per_sample * 2 * batch_size


def floor_op(device, n, batch_size):
    """The floor's GEMMs of one call: as many widest-layer float32 products as the step has FLOPs,
    so that a turn times the floor and the step over about the same stretch. Returns (op, its FLOPs)."""
    m, k, width = gemm_shape(n, batch_size)
    a = torch.randn(m, k, device=device)  # (2B, K)
    b = torch.randn(k, width, device=device)  # (K, N)
    rounds = max(1, round(encoder_step_flops(n, batch_size) / (2 * m * k * width)))

    def run():
        with tf32_matmuls(False):  # the float32 floor, whatever the step's precision
            for _ in range(rounds):
                a @ b

    return run, rounds * 2 * m * k * width


def build(args, device, seed=0):
    """The objects of a run, as main_mlp builds them. Returns (experiment, data generator, start-up seconds)."""
    t = time.perf_counter()
    data_gen = torch.Generator(device=device).manual_seed(seed)
    exp = main_mlp.build_experiment(args, device, torch.Generator().manual_seed(seed), data_gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return exp, data_gen, time.perf_counter() - t


def build_training(args, device, batch_size, precision, compile_):
    """What a step needs, as main_mlp builds it (``f_step``, ``loss_step``: ``torch.compile``d with ``compile_``),
    and ``step``: one that does not log, as the training loop runs it."""
    exp, gen, _ = build(args, device)
    f = encoders.build_encoder(args.n).to(device)
    t = types.SimpleNamespace(exp=exp, gen=gen, f=f, optimizer=main_mlp.build_optimizer(args, f, exp.loss_fn),
                              autocast=main_mlp.autocast_for(precision, device),
                              f_step=torch.compile(f) if compile_ else f,
                              loss_step=torch.compile(exp.loss_fn) if compile_ else exp.loss_fn)

    def step():
        x, _ = main_mlp.sample_views(exp.latent, exp.g, batch_size, gen, device, False)  # (2B, n)
        main_mlp.optimise(t.f_step, t.loss_step, t.optimizer, x, None, t.autocast)

    t.step = step
    return t


def bench_batch(args, device, batch_size, opts, precision, startup):
    """One row of the speed table and one of the host syncs per step (None without --sync-count)."""
    t = build_training(args, device, batch_size, precision, opts.compile)
    latent, gen = t.exp.latent, t.gen
    h = torch.nn.Sequential(t.exp.g, t.f)

    def sample():
        latent.sample_conditional(latent.sample_marginal(batch_size, gen, device), gen)

    def log_eval():
        main_mlp.evaluate(latent, h, main_mlp.N_EVAL_SAMPLES, gen, device)
        t.exp.loss_fn.lambdas().tolist()  # the lambda line's host copy

    floor_gemms, floor_flops = floor_op(device, args.n, batch_size)
    step_flops = encoder_step_flops(args.n, batch_size)
    step_times, gemm_times, sample_times = turn_times([t.step, floor_gemms, sample], opts.repeats, opts.warmup)
    gemm_rate, step, sampler = floor_flops / median(gemm_times), median(step_times), median(sample_times)
    # Turn by turn, step / floor: the ratio within a turn cancels most of a shared machine's drift.
    ratio = median(s / g for s, g in zip(step_times, gemm_times)) * floor_flops / step_flops
    evaluation = median(turn_times([log_eval], max(3, opts.repeats // 4), warmup=1)[0])
    logs = FULL_STEPS // LOG_EVERY + 1
    total = FULL_STEPS * step + logs * evaluation + startup
    overhead = (FULL_STEPS * sampler + logs * evaluation) / total
    row = (precision, str(batch_size), f"{gemm_rate / 1e9:.0f}", f"{step_flops / gemm_rate * 1e3:.2f}",
           f"{step * 1e3:.2f}", f"{ratio:.2f}", f"{sampler * 1e3:.2f}", f"{evaluation * 1e3:.1f}",
           f"{100 * overhead:.1f}", f"{total / 3600:.2f} h")
    if not opts.sync_count:
        return row, None
    # Host syncs per step: on CUDA as the runtime reports them, elsewhere the calls that would wait for a GPU.
    cuda, counts = device.type == "cuda", []
    for _ in range(opts.sync_steps):
        with (host_sync.count_cuda_syncs() if cuda else host_sync.count_host_syncs()) as found:
            t.step()
        counts.append(len(found) if cuda else found.total)
    return row, (precision, str(batch_size), f"{mean(counts):.2f}", str(min(counts)), str(max(counts)))


def encoder_gemms_op(f, x, grad_out, dtype):
    """The encoder's matrix products alone, in a step's order, without bias, activation, autograd or Adam:
    forward h_l = h_(l-1) W_lᵀ; backward dW_l = g_lᵀ h_(l-1) and g_(l-1) = g_l W_l (none for the input).
    x (2B, n) the input, grad_out (2B, n) the gradient at the last Linear."""
    weights = [m.weight.detach().to(dtype) for m in f if isinstance(m, torch.nn.Linear)]
    x, grad_out = x.to(dtype), grad_out.to(dtype)

    def run():
        hs = [x]
        for w in weights:
            hs.append(hs[-1] @ w.T)  # (2B, out)
        g = grad_out
        for i in reversed(range(len(weights))):
            g.T @ hs[i]  # (out, in): the weight's gradient
            if i > 0:
                g = g @ weights[i]  # (2B, in)

    return run


def breakdown(args, device, batch_size, opts, precision):
    """Each stage of a step timed in turns with the floor. Returns [(stage, ms, stage / floor)]."""
    t = build_training(args, device, batch_size, precision, opts.compile)
    latent, g, gen = t.exp.latent, t.exp.g, t.gen
    # Fixed inputs for the stages timed alone: a batch of the mixing's
    # outputs and unit-norm representations like the encoder's.
    x, _ = main_mlp.sample_views(latent, g, batch_size, gen, device, False)  # (2B, n)
    reps = torch.nn.functional.normalize(torch.randn(2 * batch_size, args.n, device=device), dim=1)
    gemms = encoder_gemms_op(t.f, x, torch.randn(2 * batch_size, args.n, device=device),
                             torch.bfloat16 if precision == "bf16" else torch.float32)

    def encoder():
        t.f.zero_grad(set_to_none=True)
        with t.autocast():
            h = t.f_step(x)
        h.float().backward(reps)

    def loss():
        h = reps.clone().requires_grad_()
        t.loss_step(h[:batch_size], h[batch_size:]).backward()

    sampler_and_mixing = functools.partial(main_mlp.sample_views, latent, g, batch_size, gen, device, False)
    stages = [("GEMM floor", floor_op(device, args.n, batch_size)[0]), ("full step", t.step),
              ("encoder matrix products alone", gemms), ("encoder forward + backward", encoder),
              ("loss forward + backward", loss), ("sampler + mixing g", sampler_and_mixing),
              ("Adam", t.optimizer.step)]
    t.step()  # Adam's state exists before the optimiser is timed alone
    encoder()  # with --compile, the compilations happen here, not in the timing
    loss()
    times = turn_times([fn for _, fn in stages], opts.repeats, opts.warmup)
    return [(name, f"{median(ts) * 1e3:.2f}", f"{median(a / b for a, b in zip(ts, times[0])):.3f}")
            for (name, _), ts in zip(stages, times)]


def parse_options(argv=None):
    """The benchmark's flags, validated (one-line errors naming the flag, exit 2). Returns (options, device)."""
    parser = argparse_utils.ArgumentParser(prog="tools.benchmark", description=__doc__.splitlines()[0])
    add, count = parser.add_argument, argparse_utils.positive_int
    add("--batch-sizes", type=argparse_utils.bounded(int, at_least=2), nargs="+", default=[1000, 256],
        help="batch sizes to time (the first one is the README's 1000)")
    add("--repeats", type=count, default=15, help="timed turns per figure (median)")
    add("--warmup", type=argparse_utils.bounded(int, at_least=0), default=3,
        help="untimed calls before each figure (allocator, cuBLAS and --compile's first calls)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to time")
    add("--precision", choices=PRECISIONS, nargs="+", default=["float32"],
        help="one row each: float32; tf32: float32 with TF32 matmuls (main_mlp.py --allow-tf32, CUDA only); "
             "bf16: autocast the encoder to bfloat16 (main_mlp.py --precision bf16)")
    add("--compile", action="store_true", help="torch.compile the encoder and the loss, as main_mlp.py --compile does")
    add("--breakdown", action="store_true",
        help="also time each stage of the step against the floor (first batch size and precision)")
    add("--sync-count", action="store_true", help="also count the host synchronisations of a step that does not log")
    add("--sync-steps", type=count, default=20, help="steps whose synchronisations --sync-count counts")
    add("--startup-repeats", type=count, default=3, help="repetitions of the start-up timing")
    opts = parser.parse_args(argv)
    if opts.compile and "bf16" in opts.precision:
        parser.error("arguments --compile and --precision bf16: choose at most one")
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda requested but CUDA is not available")
    device = main_mlp.resolve_device(opts.device)
    if "tf32" in opts.precision and device.type != "cuda":
        parser.error(f"argument --precision: tf32 needs CUDA (the device here is {device.type})")
    return opts, device


def print_table(header, rows):
    print(f"\n{' | '.join(header)}\n{' | '.join('---' for _ in header)}")
    for row in rows:
        print(" | ".join(row), flush=True)


def print_header(args, device, opts):
    """The lines above the tables (the device and timer, the floor, the start-up); returns the start-up seconds."""
    name = "CPU"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, precision "
          f"{' '.join(opts.precision)}{', compiled' if opts.compile else ''}; timer: wall clock"
          f"{', the GPU synchronised around each block' if device.type == 'cuda' else ''}, {opts.warmup} warm-up calls")
    # Timed by hand: each repetition builds with another seed, where a Timer repeats one statement.
    startup = median(build(args, device, seed)[2] for seed in range(opts.startup_repeats))
    width = gemm_shape(args.n, 1)[1]
    print(f"floor: the encoder's matmul FLOPs at the float32 rate of its widest product, (2B×{width}) @ "
          f"({width}×{width}), timed in turns with the step; step/floor: median over {opts.repeats} turns "
          "of the turn's ratio")
    print(f"start-up (mixing g with {invertible_network_utils.N_COND_SAMPLES:,} condition numbers, "
          f"sampler check), median of {opts.startup_repeats} seeds: {startup:.3f} s")
    return startup


def main(argv=None):
    opts, device = parse_options(argv)
    keep_freed_memory()  # as a run does: without it a CPU step page-faults ~3,000 times
    _, args = main_mlp.parse_args(README_ARGS + ["--device", device.type])
    startup = print_header(args, device, opts)
    syncs = []

    def rows():
        for precision, batch_size in itertools.product(opts.precision, opts.batch_sizes):
            with tf32_matmuls(precision == "tf32"):  # the whole row, as main_mlp.py --allow-tf32 sets it
                row, sync_row = bench_batch(args, device, batch_size, opts, precision, startup)
            syncs.append(sync_row)  # None without --sync-count, which prints no sync table
            yield row

    print_table(("precision", "batch", "GEMM GFLOP/s", "floor ms", "step ms", "step/floor", "sampler ms",
                 "eval ms", "log+sampler %", "projected 300,003 steps"), rows())
    if opts.sync_count:
        counted = ("as the CUDA runtime reports them (torch.cuda.set_sync_debug_mode)" if device.type == "cuda"
                   else "the calls that would wait for a GPU (host_sync)")
        print(f"\nhost synchronisations of a step that does not log, over {opts.sync_steps} steps, {counted}:")
        print_table(("precision", "batch", "syncs/step", "min", "max"), syncs)
    if opts.breakdown:
        batch_size, precision = opts.batch_sizes[0], opts.precision[0]
        print(f"\nwhere the step's time goes (batch {batch_size}, {precision}; each stage timed in turns "
              f"with the floor, median over {opts.repeats} turns):")
        with tf32_matmuls(precision == "tf32"):
            print_table(("stage", "ms", "/ floor"), breakdown(args, device, batch_size, opts, precision))


if __name__ == "__main__":
    main()
