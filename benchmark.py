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
    loss, the sampler with the mixing, Adam) timed in turns with the floor;
  - with ``--sync-count``, the host synchronisations of a step that does not
    log (on CUDA as the CUDA runtime reports them, elsewhere the calls that
    would wait for a GPU).

On CUDA every figure is the device's time between two CUDA events around
the call, which starts on an empty queue; elsewhere the wall time. Each
precision is a row: float32, tf32 (float32 with TF32 matmuls, as
main_mlp.py --allow-tf32; CUDA only) and bf16 (as main_mlp.py --precision
bf16); the floor stays the float32 one, so a row's ratio shows its gain.

    python benchmark.py                       # CPU, batch 1000, float32
    python benchmark.py --batch-sizes 1000 256 --precision float32 bf16
    python benchmark.py --batch-sizes 1000 --breakdown
    python benchmark.py --batch-sizes 1000 --compile   # as main_mlp.py --compile
    python benchmark.py --device cuda --batch-sizes 1000 6144 --precision float32 tf32 bf16 --sync-count
"""

import contextlib
import statistics
import time

import torch

import encoders
from argparse_utils import ArgumentParser
import host_sync
import invertible_network_utils
import main_mlp
import run_support
import settings

README_ARGS = ["--n", "10", "--space-type", "extended_sphere", "--c-p", "0", "--p", "0",
               "--only-unsupervised", "--gt-lambda-1", "5", "--gt-lambda-2", "25"]
FULL_STEPS = 300_003
LOG_EVERY = 250
# The float32 GEMM behind the floor: the encoder's widest layer, (2B × 500) @ (500 × 500) for n = 10.
WIDEST_FACTOR = max(encoders.HIDDEN_FACTORS)
PRECISIONS = ("float32", "tf32", "bf16")


def time_call(fn, device):
    """Seconds of one ``fn()``: on CUDA the device's time between two events (the queue empty at the
    first, drained after the second), elsewhere the wall time."""
    if device.type != "cuda":
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3  # elapsed_time is in ms


def median_time(fn, device, repeats, warmup=2):
    """Median time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_call(fn, device) for _ in range(repeats))


@contextlib.contextmanager
def tf32_matmuls(device, enabled):
    """TF32 matmuls on CUDA inside the block when ``enabled`` (main_mlp.py --allow-tf32), IEEE float32 when not."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gemm_shape(n, batch_size):
    """(M, K, N) of the encoder's widest product at this batch: both views' 2B rows through the widest layer."""
    width = WIDEST_FACTOR * n
    return 2 * batch_size, width, width


def floor_op(device, n, batch_size):
    """The floor's GEMMs of one turn: as many widest-layer float32 products as the step has FLOPs.

    Each turn then times the floor and the step over about the same stretch
    of machine time. Returns (op, the FLOPs it runs).
    """
    m, k, width = gemm_shape(n, batch_size)
    a = torch.randn(m, k, device=device)  # (2B, K)
    b = torch.randn(k, width, device=device)  # (K, N)
    gemm_flops = 2 * m * k * width
    rounds = max(1, round(encoder_step_flops(n, batch_size) / gemm_flops))

    def run():
        with tf32_matmuls(device, False):  # the float32 floor, whatever the step's precision
            for _ in range(rounds):
                a @ b

    return run, rounds * gemm_flops


def interleaved_times(fns, device, repeats, warmup=2):
    """Times of each function, taken in turns so that all see the same machine load.

    Returns one list of ``repeats`` times per function; entry i of each list
    comes from the same turn.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            bucket.append(time_call(fn, device))
    return times


def encoder_step_flops(n, batch_size):
    """Matmul FLOPs of one step: forward (2 per MAC) and backward (twice that) of 2B samples."""
    dims = encoders.layer_widths(n)
    forward_per_sample = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return 3 * forward_per_sample * 2 * batch_size


def build(args, device, seed=0):
    """The objects of a run, as main_mlp builds them. Returns (experiment, data generator, start-up seconds)."""
    t = time.perf_counter()
    init_gen = torch.Generator().manual_seed(seed)
    data_gen = torch.Generator(device=device).manual_seed(seed)
    exp = main_mlp.build_experiment(args, settings.derive_from_args(args), device, init_gen, data_gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
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
    autocast = main_mlp.autocast_for(precision, device)  # tf32 is float32 with TF32 matmuls: no autocast
    if compile_:
        return exp, gen, f, optimizer, autocast, torch.compile(f), torch.compile(exp.loss_fn)
    return exp, gen, f, optimizer, autocast, f, exp.loss_fn


def training_step(exp, gen, f_step, loss_step, optimizer, autocast, device, batch_size, precision):
    """A step that does not log, as the training loop runs it (fresh views, one optimiser step)."""

    def step():
        with tf32_matmuls(device, precision == "tf32"):
            x, _ = main_mlp.sample_views(exp.latent, exp.g, batch_size, gen, device, False)  # (2B, n)
            main_mlp.optimise(f_step, loss_step, optimizer, x, None, autocast)

    return step


def count_syncs(step, device, steps):
    """Host synchronisations of each of ``steps`` calls of ``step``: on CUDA as the runtime reports them,
    elsewhere the calls that would wait for a GPU (host_sync). Returns a list of counts."""
    counts = []
    for _ in range(steps):
        if device.type == "cuda":
            with host_sync.count_cuda_syncs() as found:
                step()
            counts.append(len(found))
        else:
            with host_sync.count_host_syncs() as syncs:
                step()
            counts.append(syncs.total)
    return counts


def bench_batch(args, device, batch_size, repeats, warmup, precision, compile_=False, sync_steps=0):
    exp, gen, f, optimizer, autocast, f_step, loss_step = build_training(args, device, precision, compile_)
    latent, g, loss_fn = exp.latent, exp.g, exp.loss_fn
    step = training_step(exp, gen, f_step, loss_step, optimizer, autocast, device, batch_size, precision)

    def sample():
        z = latent.sample_marginal(batch_size, gen, device)
        latent.sample_conditional(z, gen)

    h = torch.nn.Sequential(g, f)

    def log_eval():
        main_mlp.evaluate(latent, h, main_mlp.N_EVAL_SAMPLES, gen, device)
        loss_fn.lambdas().tolist()  # the lambda line's host copy

    floor_gemms, floor_flops = floor_op(device, args.n, batch_size)
    step_flops = encoder_step_flops(args.n, batch_size)
    step_times, gemm_times = interleaved_times([step, floor_gemms], device, repeats, warmup)
    gemm_rate = floor_flops / statistics.median(gemm_times)
    # Turn by turn, step / floor: a shared machine's speed drifts between
    # turns, and the ratio within a turn cancels most of that drift.
    ratios = [s / (step_flops * g / floor_flops) for s, g in zip(step_times, gemm_times)]
    return {
        "step": statistics.median(step_times),
        "ratio": statistics.median(ratios),
        "gemm_rate": gemm_rate,
        "sampler": median_time(sample, device, repeats, warmup),
        "eval": median_time(log_eval, device, max(3, repeats // 4), warmup=1),
        "syncs": count_syncs(step, device, sync_steps),
    }


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

    return run


def breakdown(args, device, batch_size, repeats, warmup, precision, compile_=False):
    """Each stage of a step timed in turns with the floor. Returns [(stage, ms, stage / floor)]."""
    exp, gen, f, optimizer, autocast, f_step, loss_step = build_training(args, device, precision, compile_)
    latent, g = exp.latent, exp.g
    floor, _ = floor_op(device, args.n, batch_size)
    tf32 = precision == "tf32"
    # Fixed inputs for the stages timed alone: a batch of the mixing's
    # outputs and unit-norm representations like the encoder's.
    x, _ = main_mlp.sample_views(latent, g, batch_size, gen, device, False)  # (2B, n)
    reps = torch.nn.functional.normalize(torch.randn(2 * batch_size, args.n, device=device), dim=1)
    grad_out = torch.randn(2 * batch_size, args.n, device=device)
    step = training_step(exp, gen, f_step, loss_step, optimizer, autocast, device, batch_size, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gemms = encoder_gemms_op(f, x, grad_out, dtype)

    def encoder_gemms():
        with tf32_matmuls(device, tf32):
            gemms()

    def encoder():
        f.zero_grad(set_to_none=True)
        with tf32_matmuls(device, tf32):
            with autocast():
                h = f_step(x)
            h.float().backward(reps)

    def loss():
        h = reps.clone().requires_grad_()
        with tf32_matmuls(device, tf32):
            loss_step(h[:batch_size], h[batch_size:]).backward()

    def sampler_and_mixing():
        with tf32_matmuls(device, tf32):
            main_mlp.sample_views(latent, g, batch_size, gen, device, False)

    def adam():
        optimizer.step()

    stages = [("GEMM floor", floor), ("full step", step), ("encoder matrix products alone", encoder_gemms),
              ("encoder forward + backward", encoder), ("loss forward + backward", loss),
              ("sampler + mixing g", sampler_and_mixing), ("Adam", adam)]
    step()  # Adam's state exists before the optimiser is timed alone
    encoder()  # with --compile, the compilations happen here, not in the timing
    loss()
    times = interleaved_times([fn for _, fn in stages], device, repeats, warmup)
    rows = []
    for (name, _), t in zip(stages, times):
        ratios = [a / b for a, b in zip(t, times[0])]
        rows.append((name, statistics.median(t) * 1e3, statistics.median(ratios)))
    return rows


def parse_options(argv=None):
    """The benchmark's flags, validated (one-line errors naming the flag, exit 2). Returns (options, device)."""
    parser = ArgumentParser(prog="benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 256],
                        help="batch sizes to time (the first one is the README's 1000)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per figure (median)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed calls before each figure (allocator, cuBLAS and --compile's first calls)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to time")
    parser.add_argument("--precision", choices=PRECISIONS, nargs="+", default=["float32"],
                        help="one row each: float32; tf32: float32 with TF32 matmuls (main_mlp.py --allow-tf32, "
                             "CUDA only); bf16: autocast the encoder to bfloat16 (main_mlp.py --precision bf16)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the encoder and the loss, as main_mlp.py --compile does")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each stage of the step against the floor (first batch size and precision)")
    parser.add_argument("--sync-count", action="store_true",
                        help="also count the host synchronisations of a step that does not log")
    parser.add_argument("--sync-steps", type=int, default=20, help="steps whose synchronisations --sync-count counts")
    parser.add_argument("--startup-repeats", type=int, default=3, help="repetitions of the start-up timing")
    opts = parser.parse_args(argv)
    if opts.compile and "bf16" in opts.precision:
        parser.error("arguments --compile and --precision bf16: choose at most one")
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda requested but CUDA is not available")
    for flag, values, low in (("--batch-sizes", opts.batch_sizes, 2), ("--repeats", [opts.repeats], 1),
                              ("--warmup", [opts.warmup], 0), ("--sync-steps", [opts.sync_steps], 1),
                              ("--startup-repeats", [opts.startup_repeats], 1)):
        if min(values) < low:
            parser.error(f"argument {flag}: must be at least {low}, got {min(values)}")
    device = main_mlp.resolve_device(opts.device)
    if "tf32" in opts.precision and device.type != "cuda":
        parser.error(f"argument --precision: tf32 needs CUDA (the device here is {device.type})")
    return opts, device


def device_line(device, opts):
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        timer = "CUDA events"
    else:
        name, timer = "CPU", "wall clock"
    return (f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"precision {' '.join(opts.precision)}{', compiled' if opts.compile else ''}; timer: {timer}, "
            f"{opts.warmup} warm-up calls")


def main(argv=None):
    opts, device = parse_options(argv)
    run_support.keep_freed_memory()  # as a run does: without it a CPU step page-faults ~3,000 times
    _, args, _ = main_mlp.parse_args(README_ARGS + ["--device", device.type])
    print(device_line(device, opts))

    startup = statistics.median(build(args, device, seed)[2] for seed in range(opts.startup_repeats))
    print("floor: the encoder's matmul FLOPs at the float32 rate of its widest product, "
          f"(2B×{WIDEST_FACTOR * args.n}) @ ({WIDEST_FACTOR * args.n}×{WIDEST_FACTOR * args.n}), timed in turns "
          f"with the step; step/floor: median over {opts.repeats} turns of the turn's ratio")
    print(f"start-up (mixing g with {invertible_network_utils.N_COND_SAMPLES:,} condition numbers, "
          f"sampler check), median of {opts.startup_repeats} seeds: {startup:.3f} s")
    print()
    header = ("precision", "batch", "GEMM GFLOP/s", "floor ms", "step ms", "step/floor", "sampler ms", "eval ms",
              "log+sampler %", "projected 300,003 steps")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    syncs = []
    for precision in opts.precision:
        for batch_size in opts.batch_sizes:
            t = bench_batch(args, device, batch_size, opts.repeats, opts.warmup, precision, opts.compile,
                            opts.sync_steps if opts.sync_count else 0)
            floor = encoder_step_flops(args.n, batch_size) / t["gemm_rate"]
            logs = FULL_STEPS // LOG_EVERY + 1
            total = FULL_STEPS * t["step"] + logs * t["eval"] + startup
            overhead = (FULL_STEPS * t["sampler"] + logs * t["eval"]) / total
            print(f"{precision} | {batch_size} | {t['gemm_rate'] / 1e9:.0f} | {floor * 1e3:.2f} | "
                  f"{t['step'] * 1e3:.2f} | {t['ratio']:.2f} | {t['sampler'] * 1e3:.2f} | {t['eval'] * 1e3:.1f} | "
                  f"{100 * overhead:.1f} | {total / 3600:.2f} h", flush=True)
            syncs.append((precision, batch_size, t["syncs"]))
    if opts.sync_count:
        counted = ("as the CUDA runtime reports them (torch.cuda.set_sync_debug_mode)" if device.type == "cuda"
                   else "the calls that would wait for a GPU (host_sync)")
        print()
        print(f"host synchronisations of a step that does not log, over {opts.sync_steps} steps, {counted}:")
        print()
        print("precision | batch | syncs/step | min | max")
        print("--- | --- | --- | --- | ---")
        for precision, batch_size, counts in syncs:
            print(f"{precision} | {batch_size} | {statistics.mean(counts):.2f} | {min(counts)} | {max(counts)}")
    if opts.breakdown:
        batch_size, precision = opts.batch_sizes[0], opts.precision[0]
        print()
        print(f"where the step's time goes (batch {batch_size}, {precision}; each stage timed in turns "
              f"with the floor, median over {opts.repeats} turns):")
        print()
        print("stage | ms | / floor")
        print("--- | --- | ---")
        for name, ms, ratio in breakdown(args, device, batch_size, opts.repeats, opts.warmup, precision,
                                         opts.compile):
            print(f"{name} | {ms:.2f} | {ratio:.3f}")


if __name__ == "__main__":
    main()
