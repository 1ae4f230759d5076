"""Time a training step against the hardware floor, on this machine.

Prints, for the README configuration of the AnInfoNCE experiment:
  - the GEMM floor of one step: the encoder's matmul FLOPs (forward and
    backward of 2B samples) divided by the float32 GEMM rate measured here
    (the widest layer's product, repeated to the step's FLOPs);
  - the median time of a full training step (sample positives, forward,
    loss, backward, optimiser) and its ratio to the floor: the two are timed
    in turns, and the ratio is the median of the per-turn ratios (on a
    shared machine whose speed drifts, that is steadier than a ratio of
    two medians);
  - the sampler's time per batch, the time of one logged evaluation, the
    start-up time (mixing g with its 25,000 condition numbers);
  - the projected wall time of the full 300,003-step run with its logging;
  - with ``--breakdown``, where the step's time goes: each stage (the
    encoder's matrix products alone, the encoder's forward and backward, the
    loss, the sampler with the mixing, Adam) timed in turns with the floor.

    python benchmark.py                       # CPU, batch 1000, float32
    python benchmark.py --batch-sizes 1000 256 --precision bf16
    python benchmark.py --batch-sizes 1000 --breakdown
    python benchmark.py --batch-sizes 1000 --compile   # as main_mlp.py --compile
"""

import contextlib
import functools
import statistics
import time

import torch

import encoders
from argparse_utils import ArgumentParser
import invertible_network_utils
import main_mlp
import settings

README_ARGS = ["--n", "10", "--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
               "--only-unsupervised", "--gt-lambda-1", "5", "--gt-lambda-2", "25"]
FULL_STEPS = 300_003
LOG_EVERY = 250
# The float32 GEMM behind the floor: the encoder's widest layer at B = 1000.
GEMM_SHAPE = (2000, 500, 500)


def median_time(fn, repeats, warmup=2):
    """Median wall time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_op(device, dtype=torch.float32):
    """One (M×K)·(K×N) float32 matrix product, the widest layer's shape; returns (op, FLOPs)."""
    m, k, n = GEMM_SHAPE
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)

    def run():
        a @ b
        sync(device)

    return run, 2 * m * k * n


def floor_op(device, n, batch_size):
    """The floor's GEMMs of one turn: as many widest-layer products as the step has FLOPs.

    Each turn then times the floor and the step over about the same stretch
    of machine time. Returns (op, the FLOPs it runs).
    """
    gemm, gemm_flops = gemm_op(device)
    rounds = max(1, round(encoder_step_flops(n, batch_size) / gemm_flops))

    def run():
        for _ in range(rounds):
            gemm()

    return run, rounds * gemm_flops


def interleaved_times(fns, repeats, warmup=2):
    """Wall times of each function, timed in turns so that all see the same machine load.

    Returns one list of ``repeats`` times per function; entry i of each list
    comes from the same turn.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            t = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t)
    return times


def encoder_step_flops(n, batch_size):
    """Matmul FLOPs of one step: forward (2 per MAC) and backward (twice that) of 2B samples."""
    dims = [n] + [k * n for k in encoders.HIDDEN_FACTORS] + [n]
    forward_per_sample = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return 3 * forward_per_sample * 2 * batch_size


def build(args, device, seed=0):
    """The objects of a run, as main_mlp builds them. Returns (experiment, data generator, start-up seconds)."""
    t = time.perf_counter()
    init_gen = torch.Generator().manual_seed(seed)
    data_gen = torch.Generator(device=device).manual_seed(seed)
    exp = main_mlp.build_experiment(args, settings.derive_from_args(args), device, init_gen, data_gen)
    sync(device)
    return exp, data_gen, time.perf_counter() - t


def build_training(args, device, precision, compile_):
    """What a step needs, as main_mlp builds it.

    Returns (experiment, data generator, f, optimizer, autocast, f_step,
    loss_step); f_step and loss_step are the encoder and the loss the step
    calls (``torch.compile``d with ``compile_``).
    """
    exp, gen, _ = build(args, device)
    f = encoders.build_encoder(args.n).to(device)
    optimizer = main_mlp.build_optimizer(args, f, exp.loss_fn)
    autocast = autocast_for(device, precision)
    if compile_:
        return exp, gen, f, optimizer, autocast, torch.compile(f), torch.compile(exp.loss_fn)
    return exp, gen, f, optimizer, autocast, f, exp.loss_fn


def bench_batch(args, device, batch_size, repeats, precision, compile_=False):
    exp, gen, f, optimizer, autocast, f_step, loss_step = build_training(args, device, precision, compile_)
    latent, g, loss_fn = exp.latent, exp.g, exp.loss_fn

    def step():
        x, _ = main_mlp.sample_views(latent, g, batch_size, gen, device, False)
        main_mlp.optimise(f_step, loss_step, optimizer, x, None, autocast)
        sync(device)

    def sample():
        z = latent.sample_marginal(batch_size, gen, device)
        latent.sample_conditional(z, gen)
        sync(device)

    h = torch.nn.Sequential(g, f)

    def log_eval():
        main_mlp.evaluate(latent, h, main_mlp.N_EVAL_SAMPLES, gen, device)
        loss_fn.lambdas().tolist()  # the lambda line's host copy

    floor_gemms, floor_flops = floor_op(device, args.n, batch_size)
    step_flops = encoder_step_flops(args.n, batch_size)
    step_times, gemm_times = interleaved_times([step, floor_gemms], repeats)
    gemm_rate = floor_flops / statistics.median(gemm_times)
    # Turn by turn, step / floor: a shared machine's speed drifts between
    # turns, and the ratio within a turn cancels most of that drift.
    ratios = [s / (step_flops * g / floor_flops) for s, g in zip(step_times, gemm_times)]
    return {
        "step": statistics.median(step_times),
        "ratio": statistics.median(ratios),
        "gemm_rate": gemm_rate,
        "sampler": median_time(sample, repeats),
        "eval": median_time(log_eval, max(3, repeats // 4), warmup=1),
    }


def autocast_for(device, precision):
    if precision == "bf16":
        return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def encoder_gemms_op(f, x, grad_out, dtype):
    """The encoder's matrix products alone, in the order of a step.

    Forward h_l = h_(l-1) W_lᵀ, backward dW_l = g_lᵀ h_(l-1) and g_(l-1) = g_l W_l
    (none for the input, which needs no gradient), on fresh outputs as in a
    step, but without bias, activation, autograd or optimiser. Args: f the
    encoder, x (2B, n) its input, grad_out (2B, n) the gradient at its last
    Linear, dtype the products' precision.
    """
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
        sync(x.device)

    return run


def breakdown(args, device, batch_size, repeats, precision, compile_=False):
    """Each stage of a step timed in turns with the floor. Returns [(stage, ms, stage / floor)]."""
    exp, gen, f, optimizer, autocast, f_step, loss_step = build_training(args, device, precision, compile_)
    latent, g = exp.latent, exp.g
    floor, _ = floor_op(device, args.n, batch_size)
    # Fixed inputs for the stages timed alone: a batch of the mixing's
    # outputs and unit-norm representations like the encoder's.
    x, _ = main_mlp.sample_views(latent, g, batch_size, gen, device, False)  # (2B, n)
    reps = torch.nn.functional.normalize(torch.randn(2 * batch_size, args.n, device=device), dim=1)
    grad_out = torch.randn(2 * batch_size, args.n, device=device)

    def step():
        x, _ = main_mlp.sample_views(latent, g, batch_size, gen, device, False)
        main_mlp.optimise(f_step, loss_step, optimizer, x, None, autocast)
        sync(device)

    def encoder():
        f.zero_grad(set_to_none=True)
        with autocast():
            h = f_step(x)
        h.float().backward(reps)
        sync(device)

    def loss():
        h = reps.clone().requires_grad_()
        loss_step(h[:batch_size], h[batch_size:]).backward()
        sync(device)

    def sampler_and_mixing():
        main_mlp.sample_views(latent, g, batch_size, gen, device, False)
        sync(device)

    def adam():
        optimizer.step()
        sync(device)

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    stages = [("GEMM floor", floor), ("full step", step),
              ("encoder matrix products alone", encoder_gemms_op(f, x, grad_out, dtype)),
              ("encoder forward + backward", encoder), ("loss forward + backward", loss),
              ("sampler + mixing g", sampler_and_mixing), ("Adam", adam)]
    step()  # Adam's state exists before the optimiser is timed alone
    encoder()  # with --compile, the compilations happen here, not in the timing
    loss()
    times = interleaved_times([fn for _, fn in stages], repeats)
    rows = []
    for (name, _), t in zip(stages, times):
        ratios = [a / b for a, b in zip(t, times[0])]
        rows.append((name, statistics.median(t) * 1e3, statistics.median(ratios)))
    return rows


def main():
    parser = ArgumentParser(prog="benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 256],
                        help="batch sizes to time (the first one is the README's 1000)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per figure (median)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to time")
    parser.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                        help="autocast the encoder to bfloat16")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the encoder and the loss, as main_mlp.py --compile does")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each stage of the step against the floor (first batch size)")
    parser.add_argument("--startup-repeats", type=int, default=3, help="repetitions of the start-up timing")
    opts = parser.parse_args()
    if opts.compile and opts.precision == "bf16":
        parser.error("arguments --compile and --precision bf16: choose at most one")
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda requested but CUDA is not available")
    for flag, values in (("--batch-sizes", opts.batch_sizes), ("--repeats", [opts.repeats]),
                         ("--startup-repeats", [opts.startup_repeats])):
        if min(values) < 1:
            parser.error(f"argument {flag}: must be at least 1, got {min(values)}")

    device = main_mlp.resolve_device(opts.device)
    main_mlp.keep_freed_memory()
    _, args, _ = main_mlp.parse_args(README_ARGS)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"precision {opts.precision}{', compiled' if opts.compile else ''}")

    startup = statistics.median(build(args, device, seed)[2] for seed in range(opts.startup_repeats))
    print(f"floor: the encoder's matmul FLOPs at the float32 rate of a {GEMM_SHAPE[0]}x{GEMM_SHAPE[1]} @ "
          f"{GEMM_SHAPE[1]}x{GEMM_SHAPE[2]} GEMM, timed in turns with the step; "
          f"step/floor: median over {opts.repeats} turns of the turn's ratio")
    print(f"start-up (mixing g with {invertible_network_utils.N_COND_SAMPLES:,} condition numbers, "
          f"sampler check), median of {opts.startup_repeats} seeds: {startup:.3f} s")
    print()
    header = ("batch", "GEMM GFLOP/s", "floor ms", "step ms", "step/floor", "sampler ms", "eval ms", "log+sampler %",
              "projected 300,003 steps")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for batch_size in opts.batch_sizes:
        t = bench_batch(args, device, batch_size, opts.repeats, opts.precision, opts.compile)
        floor = encoder_step_flops(args.n, batch_size) / t["gemm_rate"]
        logs = FULL_STEPS // LOG_EVERY + 1
        total = FULL_STEPS * t["step"] + logs * t["eval"] + startup
        overhead = (FULL_STEPS * t["sampler"] + logs * t["eval"]) / total
        print(f"{batch_size} | {t['gemm_rate'] / 1e9:.0f} | {floor * 1e3:.1f} | {t['step'] * 1e3:.1f} | "
              f"{t['ratio']:.2f} | "
              f"{t['sampler'] * 1e3:.2f} | {t['eval'] * 1e3:.1f} | {100 * overhead:.1f} | "
              f"{total / 3600:.2f} h")
    if opts.breakdown:
        batch_size = opts.batch_sizes[0]
        print()
        print(f"where the step's time goes (batch {batch_size}, {opts.precision}; each stage timed in turns "
              f"with the floor, median over {opts.repeats} turns):")
        print()
        print("stage | ms | / floor")
        print("--- | --- | ---")
        for name, ms, ratio in breakdown(args, device, batch_size, opts.repeats, opts.precision, opts.compile):
            print(f"{name} | {ms:.2f} | {ratio:.3f}")


if __name__ == "__main__":
    main()
