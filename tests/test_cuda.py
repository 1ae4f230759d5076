"""The CUDA path, against the CPU: run with ``pytest -m cuda tests`` on a machine with a GPU.

Without CUDA every test here is collected and skipped. What they hold the
CUDA path to:

- a contrastive and a supervised step from the same weights and batches
  give the CPU's loss, and gradients as close to the float64 ones as the
  CPU's are (float32 on both sides, TF32 off);
- the sampler draws the same distribution on CUDA, repeatably from a seed;
  the metrics of the same h(z) agree on both devices;
- a step that does not log synchronises with the host once per round of the
  positive sampler, as the CUDA runtime counts it (and as tests/test_sync.py
  counts it on the CPU); benchmark.py's timer, synchronising the GPU, reads the wall time;
- a seeded CUDA run repeats itself byte for byte (same GPU, same torch);
  g and θ are drawn on the CPU, so its mixing is the CPU run's;
- killed (SIGTERM, SIGKILL) and resumed, a CUDA run's log and metrics files
  are the uninterrupted run's byte for byte: the CUDA generator's state
  (seed and Philox offset) is in the checkpoint, and the step's kernels are
  deterministic for fixed shapes on one GPU. Not bit-identical: the stderr
  progress lines (timings), and a CUDA run against a CPU run (the data come
  from another generator) or on another GPU model, CUDA or torch version
  (other kernels);
- a CUDA checkpoint is refused on the CPU (``device_type`` differs, as any
  other configuration is), while the reference's model files (``g.pth``,
  ``unsup_f.pth``) load on the CPU and compute what they computed on CUDA;
- ``--precision bf16``, ``--allow-tf32`` and ``--compile`` run and stay near
  the float32 run; the memory estimate covers a step's peak on the GPU, and
  a run that would not fit in the GPU's free memory is refused.
"""

import contextlib
import copy
import functools
import json
import shutil
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from tools import benchmark
import encoders
from tools import host_sync
import invertible_network_utils
import latent_spaces
import main_mlp
import spaces
from cli_util import finish_all, parse_log, restore_signal_handlers, start_cli
from plumbing.checkpoint import read_checkpoint
from plumbing.survival import available_memory
from test_spaces import README_LAMBDA, RandnRecorder

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
README = ["--n", "10", "--space-type", "extended_sphere", "--c-p", "0", "--p", "0", "--only-unsupervised",
          "--gt-lambda-1", "5", "--gt-lambda-2", "25"]
# The README configuration, one contrastive run of --n-steps steps.
CONFIG = README + ["--batch-size", "1000", "--more-unsupervised", "1", "--num-eval-batches", "2", "--seed", "3"]
# Long enough between Step lines (100 steps) for a signal to land mid-run.
LONG = CONFIG + ["--n-steps", "400", "--n-log-steps", "100"]
SHORT = CONFIG + ["--n-steps", "60", "--n-log-steps", "20"]
FILES = ["--log-file", "run.log", "--metrics-file", "metrics.jsonl"]
SAVED = LONG + ["--device", "cuda", "--save-dir", "ckpt"] + FILES
# Tolerances of a precision against the float32 run, at every logged step (CPU bf16 differs
# from float32 by 1e-3 in the loss and 7e-3 in Lin. on SHORT; TF32 keeps 3 more mantissa bits).
NEAR_FLOAT32 = {"bf16": (0.01, 0.03), "tf32": (0.005, 0.02), "compile": (1e-3, 0.01)}


@pytest.fixture
def ieee_float32():
    """TF32 off for the block, whatever the process had set."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def experiment():
    """(args, args.derived, experiment built on the CPU): the README configuration at batch 1000."""
    _, args = main_mlp.parse_args(README + ["--batch-size", "1000", "--device", "cpu"])
    with pytest.MonkeyPatch.context() as patch:
        # g's threshold from 1,000 random condition numbers instead of 25,000: the same
        # kind of mixing, sooner (what is compared here does not depend on it).
        patch.setattr(invertible_network_utils, "construct_invertible_mlp",
                      functools.partial(invertible_network_utils.construct_invertible_mlp, n_iter_cond_thresh=1000))
        exp = main_mlp.build_experiment(args, CPU, torch.Generator().manual_seed(0),
                                        torch.Generator().manual_seed(0))
    return args, args.derived, exp


# ------------------------------------------------------------ one step, CPU against CUDA


def float64_gradients(f, loss_fn, x, target):
    """The gradients of f's (and the loss's) parameters in float64, on the CPU: the exact values that both
    float32 steps approximate. x (2B, n) or (B, n); target (B, n) or None."""
    f64 = copy.deepcopy(f).double()
    loss64 = copy.deepcopy(loss_fn).double() if loss_fn is not None else None
    h = f64(x.double())
    if target is None:
        half = h.shape[0] // 2
        loss = loss64(h[:half], h[half:])
    else:
        loss = F.mse_loss(h, target.double())
    loss.backward()
    params = list(f64.parameters()) + (list(loss64.parameters()) if loss64 is not None else [])
    return loss.item(), [p.grad.float() for p in params]


def steps_on_both_devices(args, f, loss_fn, batches):
    """Train copies of f (and the loss) on the CPU and on CUDA with the same batches.

    Returns (CPU losses, CUDA losses, CPU parameters, CUDA parameters on the CPU,
    the first step's CPU and CUDA gradients).
    """
    out = []
    for device in (CPU, CUDA):
        f_d = copy.deepcopy(f).to(device)
        loss_d = copy.deepcopy(loss_fn).to(device) if loss_fn is not None else None
        optimizer = main_mlp.build_optimizer(args, f_d, loss_d)
        params = list(f_d.parameters()) + (list(loss_d.parameters()) if loss_d is not None else [])
        losses, first_grads = [], None
        for x, target in batches:
            target = target.to(device) if target is not None else None
            loss = main_mlp.optimise(f_d, loss_d, optimizer, x.to(device), target, contextlib.nullcontext)
            losses.append(loss.item())
            if first_grads is None:
                first_grads = [p.grad.detach().cpu().clone() for p in params]
        out.append((losses, [p.detach().cpu() for p in params], first_grads))
    (cpu_losses, cpu_params, cpu_grads), (cuda_losses, cuda_params, cuda_grads) = out
    return cpu_losses, cuda_losses, cpu_params, cuda_params, cpu_grads, cuda_grads


def assert_step_agrees(args, f, loss_fn, batches, lr):
    cpu_losses, cuda_losses, cpu_params, cuda_params, cpu_grads, cuda_grads = \
        steps_on_both_devices(args, f, loss_fn, batches)
    x, target = batches[0]
    exact_loss, exact_grads = float64_gradients(f, loss_fn, x, target)
    assert cuda_losses[0] == pytest.approx(exact_loss, abs=2e-5)
    assert cuda_losses == pytest.approx(cpu_losses, abs=2e-5)
    for g_cpu, g_cuda, g_exact in zip(cpu_grads, cuda_grads, exact_grads):
        # At initialisation the contrastive gradient is a difference of nearly equal terms:
        # float32 keeps only some of its digits on either device (the CPU's error is up to
        # 7 % of the largest entry for θ). CUDA must be about as close to the exact value.
        cpu_error, cuda_error = (g_cpu - g_exact).norm(), (g_cuda - g_exact).norm()
        assert cuda_error <= 4 * cpu_error + 1e-6 * g_exact.norm()
    # Adam moves a parameter by at most ~lr a step, whatever its gradient: where a
    # gradient entry is rounding noise its sign may differ, and the copies then part
    # by up to 2 lr a step; every other entry must agree.
    steps = len(batches)
    differences = torch.cat([(a - b).abs().flatten() for a, b in zip(cpu_params, cuda_params)])
    assert differences.max() <= 2 * lr * steps
    assert (differences > 1e-6).float().mean() < 0.01


@pytest.mark.parametrize("supervised", [False, True])
def test_steps_on_cuda_match_the_cpu(experiment, ieee_float32, supervised):
    """Contrastive (encoder and Λ̂) and supervised steps."""
    args, derived, exp = experiment
    torch.manual_seed(int(supervised))
    f = encoders.build_encoder(args.n, derived.normalization)
    gen = torch.Generator().manual_seed(1 + int(supervised))
    batches = [main_mlp.sample_views(exp.latent, exp.g, args.batch_size, gen, CPU, supervised) for _ in range(5)]
    if supervised:
        assert_step_agrees(args, f, None, batches, args.lr)
    else:
        assert_step_agrees(args, f, exp.loss_fn, batches, max(args.lr, args.lr_lambda))


# ------------------------------------------------------------ sampler and metrics


def test_the_sampler_on_cuda_draws_the_cpu_distribution(experiment):
    _, _, exp = experiment
    space, std = spaces.ExtendedSphereSpace(10), README_LAMBDA.rsqrt()  # (n,)
    candidates = exp.latent.conditional.candidates
    spread = []
    for device in (CPU, CUDA):
        gen = torch.Generator(device=device).manual_seed(4)
        z = space.uniform(20_000, gen, device)  # (N, n)
        pos = space.anisotropic_normal(z, std.to(device), 0.1, gen, candidates)  # (N, n)
        assert pos.device.type == device.type
        torch.testing.assert_close(pos.norm(dim=1), torch.ones(20_000, device=device), atol=1e-5, rtol=0)
        spread.append((pos - z).std(dim=0).cpu())  # (n,)
        rate = spaces.acceptance_rate(space, std.to(device), 0.1, gen, device)
        assert rate == pytest.approx(exp.acceptance, abs=0.01)  # 0.097 at λ 5 / 25
    # Another generator on each device: the same distribution, not the same numbers.
    torch.testing.assert_close(spread[1], spread[0], rtol=0.05, atol=0)
    again = [space.anisotropic_normal(space.uniform(1000, g, CUDA), std.to(CUDA), 0.1, g, candidates)
             for g in (torch.Generator(device=CUDA).manual_seed(5) for _ in range(2))]
    assert torch.equal(again[0], again[1])


class FixedLatents:
    """A latent space whose marginal is a fixed batch, so both devices score the same z."""

    def __init__(self, z):
        self.z = z

    def sample_marginal(self, size, generator, device):
        return self.z[:size].to(device)


def test_metrics_of_the_same_latents_agree_on_both_devices(experiment):
    _, _, exp = experiment
    z = spaces.ExtendedSphereSpace(10).uniform(main_mlp.N_EVAL_SAMPLES, torch.Generator().manual_seed(6), CPU)
    latents = FixedLatents(z)
    identity = main_mlp.evaluate(latents, torch.nn.Identity(), main_mlp.N_EVAL_SAMPLES, None, CUDA)
    assert identity["lin"] == pytest.approx(1.0, abs=1e-6) and identity["perm"] == pytest.approx(1.0, abs=1e-6)
    on_cpu = main_mlp.evaluate(latents, exp.g, main_mlp.N_EVAL_SAMPLES, None, CPU)
    on_cuda = main_mlp.evaluate(latents, copy.deepcopy(exp.g).to(CUDA), main_mlp.N_EVAL_SAMPLES, None, CUDA)
    assert on_cuda["lin"] == pytest.approx(on_cpu["lin"], abs=1e-5)
    assert on_cuda["perm"] == pytest.approx(on_cpu["perm"], abs=1e-5)
    assert on_cuda["lin_dims"] == pytest.approx(on_cpu["lin_dims"], abs=1e-5)


# ------------------------------------------------------------ host synchronisations and the timer


def test_a_cuda_step_syncs_once_per_sampler_round(experiment, monkeypatch):
    args, derived, exp = experiment
    # The README's latent space with its sampler's (n,) spreads on CUDA, as a CUDA run builds it.
    latent = latent_spaces.build_latent_space(args, latent_spaces.build_space(args), derived.conditional,
                                              exp.latent.conditional.std.to(CUDA), exp.acceptance)
    g, loss_fn = copy.deepcopy(exp.g).to(CUDA), copy.deepcopy(exp.loss_fn).to(CUDA)
    f = encoders.build_encoder(args.n, derived.normalization).to(CUDA)
    optimizer = main_mlp.build_optimizer(args, f, loss_fn)
    gen = torch.Generator(device=CUDA).manual_seed(8)

    def step():
        x, _ = main_mlp.sample_views(latent, g, args.batch_size, gen, CUDA, False)  # (2B, n)
        main_mlp.optimise(f, loss_fn, optimizer, x, None, contextlib.nullcontext)

    step()  # Adam's state exists, as in every later step
    torch.cuda.synchronize()
    for _ in range(3):
        recorder = RandnRecorder(monkeypatch)  # one (m, K, n) proposal draw per sampler round
        with host_sync.count_cuda_syncs() as found:
            step()
        monkeypatch.undo()
        rounds = len(recorder.batches)
        assert rounds >= 1 and len(found) == rounds
        # What the CPU-side counter sees on CUDA is what the runtime reports.
        recorder = RandnRecorder(monkeypatch)
        with host_sync.count_host_syncs() as syncs:
            step()
        monkeypatch.undo()
        assert syncs.calls == {"aten.nonzero.default": len(recorder.batches)}


def test_the_benchmark_times_cuda_synchronised():
    a = torch.randn(4096, 4096, device=CUDA)

    def work():
        for _ in range(10):
            a @ a

    work()
    torch.cuda.synchronize()
    t = time.perf_counter()
    work()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    seconds = benchmark.turn_times([work], 1, warmup=0)[0][0]
    # The timer synchronises the GPU around its block: about the wall time of the same call.
    assert 0.3 * wall < seconds < 1.5 * wall + 1e-3


# ------------------------------------------------------------ memory


@pytest.mark.parametrize("extra", [[], ["--hn-beta", "1"]], ids=["plain", "hard-negatives"])
def test_the_memory_estimate_covers_a_step_at_the_reference_batch(extra):
    _, args = main_mlp.parse_args(README + ["--batch-size", "6144", "--device", "cuda"] + extra)
    free, total = torch.cuda.mem_get_info(CUDA)
    have = available_memory(CUDA)
    assert 0 < have <= total and have == pytest.approx(free, rel=0.05)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(CUDA)
    torch.cuda.reset_peak_memory_stats(CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    exp = main_mlp.build_experiment(args, CUDA, torch.Generator().manual_seed(0), gen)
    f = encoders.build_encoder(args.n, args.derived.normalization).to(CUDA)
    optimizer = main_mlp.build_optimizer(args, f, exp.loss_fn)
    for _ in range(2):  # the second step also holds Adam's moments
        x, _ = main_mlp.sample_views(exp.latent, exp.g, args.batch_size, gen, CUDA, False)
        main_mlp.optimise(f, exp.loss_fn, optimizer, x, None, contextlib.nullcontext)
    h = torch.nn.Sequential(exp.g, f)
    main_mlp.evaluate(exp.latent, h, args.batch_size, gen, CUDA)  # the final evaluation's batch
    torch.cuda.synchronize()
    used = torch.cuda.max_memory_allocated(CUDA) - before
    assert 0 < used <= main_mlp.peak_memory(args)


def test_a_run_beyond_the_free_gpu_memory_is_refused(capsys):
    # Three (B × B) float32 blocks at B = 400,000 are 1.9 TB: more than any GPU holds.
    argv = README + ["--batch-size", "400000", "--device", "cuda", "--n-steps", "1"]
    with restore_signal_handlers(), pytest.raises(SystemExit) as exc:
        main_mlp.main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main_mlp.py: error: arguments --n/--batch-size:")
    assert "GiB available" in lines[0] and "the cuda has" in lines[0]


# ------------------------------------------------------------ the command line on CUDA


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (returncode, stdout, stderr, directory)}: CUDA runs of the README configuration, at once."""
    first = {
        "full": SAVED, "again": SAVED, "sigterm": SAVED, "sigkill": SAVED,
        "cpu": CONFIG + ["--n-steps", "1", "--device", "cpu"] + FILES,  # its header: the same g and θ
        "float32": SHORT + ["--device", "cuda"] + FILES,
        "bf16": SHORT + ["--device", "cuda", "--precision", "bf16"] + FILES,
        "tf32": SHORT + ["--device", "cuda", "--allow-tf32"] + FILES,
        "compile": SHORT + ["--device", "cuda", "--compile"] + FILES,
    }
    dirs = {name: tmp_path_factory.mktemp(name) for name in
            list(first) + ["resume_sigterm", "resume_sigkill", "on_cpu"]}
    out = {}
    procs = {name: start_cli(argv, dirs[name]) for name, argv in first.items()}
    out.update(finish_all(procs, dirs, [("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL)]))
    second = {"resume_sigterm": ("sigterm", SAVED + ["--resume-training"]),
              "resume_sigkill": ("sigkill", SAVED + ["--resume-training"]),
              # The finished CUDA run's checkpoint, resumed on the CPU.
              "on_cpu": ("full", LONG + ["--device", "cpu", "--save-dir", "ckpt", "--resume-training"] + FILES)}
    for name, (source, _) in second.items():
        shutil.rmtree(dirs[name])
        shutil.copytree(dirs[source], dirs[name])  # keep the first run's files to inspect
    procs = {name: start_cli(argv, dirs[name]) for name, (_, argv) in second.items()}
    out.update(finish_all(procs, dirs))
    return out


def metrics(cwd):
    """The step records of a run's metrics file."""
    records = [json.loads(line) for line in (cwd / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "step"]


@pytest.mark.slow
def test_a_seeded_cuda_run_repeats_itself(runs):
    rc, stdout, stderr, cwd = runs["full"]
    assert rc == 0, stderr
    log = parse_log(stdout)
    assert [s["step"] for s in log["phases"][0]["steps"]] == [1, 101, 201, 301, 400]
    assert log["final"] is not None
    assert "device='cuda:0'" in stdout  # the ground-truth Λ, printed where it lives, as the reference
    rc_again, stdout_again, stderr_again, cwd_again = runs["again"]
    assert rc_again == 0, stderr_again
    assert stdout_again == stdout
    assert (cwd_again / "metrics.jsonl").read_text() == (cwd / "metrics.jsonl").read_text()
    config = json.loads((cwd / "metrics.jsonl").read_text().splitlines()[0])
    assert config["device"] == "cuda"


@pytest.mark.slow
def test_g_and_theta_are_the_cpu_runs(runs):
    rc, stdout, stderr, _ = runs["cpu"]
    assert rc == 0, stderr
    cpu, cuda = parse_log(stdout), parse_log(runs["full"][1])
    assert cuda["lambda_init"] == cpu["lambda_init"]
    assert cuda["layer_conds"] == cpu["layer_conds"] and cuda["cond_threshold"] == cpu["cond_threshold"]
    assert cuda["gt_lambda"] == cpu["gt_lambda"]


@pytest.mark.slow
@pytest.mark.parametrize("stopped, resumed, code, first", [("sigterm", "resume_sigterm", 143, 101),
                                                           ("sigkill", "resume_sigkill", -signal.SIGKILL, 1)])
def test_a_killed_cuda_run_resumes_to_the_uninterrupted_files(runs, stopped, resumed, code, first):
    rc, _, stderr, stopped_dir = runs[stopped]
    assert rc == code, stderr
    state = read_checkpoint(str(stopped_dir / "ckpt" / "checkpoint.pth"), main_mlp.CHECKPOINT_LAYOUT)
    # Stopped mid-run, after the second Step line: SIGTERM checkpoints the step it stops at,
    # SIGKILL leaves the last log step's checkpoint (step 1 when it lands before step 101's).
    assert first <= state["step"] < 400
    rc, stdout, stderr, cwd = runs[resumed]
    assert rc == 0, stderr
    assert f"resumed the unsupervised run after step {state['step']}" in stderr
    full_dir = runs["full"][3]
    assert (cwd / "run.log").read_text() == (full_dir / "run.log").read_text()
    assert (cwd / "metrics.jsonl").read_text() == (full_dir / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_a_cuda_checkpoint_is_refused_on_the_cpu_and_the_models_load_there(runs, experiment):
    rc, stdout, stderr, cwd = runs["on_cpu"]
    assert rc == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main_mlp.py: error: argument --resume-training:")
    assert "device_type ('cuda' there, 'cpu' here)" in lines[0]
    # The checkpoint itself reads on the CPU, and says where it was written.
    state = read_checkpoint(str(cwd / "ckpt" / "checkpoint.pth"), main_mlp.CHECKPOINT_LAYOUT)
    assert state["config"]["device_type"] == "cuda" and state["step"] == 400
    # The reference's files: g and the trained encoder compute on the CPU what they did on CUDA.
    _, derived, _ = experiment
    g, _, _ = invertible_network_utils.construct_invertible_mlp(10, 3, "leaky_relu", 0.0, torch.Generator(),
                                                                n_iter_cond_thresh=100)
    f = encoders.build_encoder(10, derived.normalization)
    for module, name in ((g, "g.pth"), (f, "unsup_f.pth")):
        module.load_state_dict(torch.load(cwd / "ckpt" / name, map_location="cpu", weights_only=True))
    h = torch.nn.Sequential(g, f).eval()
    z = spaces.ExtendedSphereSpace(10).uniform(512, torch.Generator().manual_seed(7), CPU)  # (512, n)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(h).to(CUDA)(z.to(CUDA)).cpu(), h(z), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bf16", "tf32", "compile"])
def test_bf16_tf32_and_compile_run_near_float32(runs, name):
    rc, stdout, stderr, _ = runs["float32"]
    assert rc == 0, stderr
    rc, stdout, stderr, cwd = runs[name]
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert parse_log(stdout)["final"] is not None
    reference, records = metrics(runs["float32"][3]), metrics(cwd)
    assert [r["step"] for r in records] == [r["step"] for r in reference] == [1, 21, 41, 60]
    loss_tol, lin_tol = NEAR_FLOAT32[name]
    for ours, theirs in zip(records, reference):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=loss_tol)
        assert ours["lin"] == pytest.approx(theirs["lin"], abs=lin_tol)
    if name != "compile":  # the flag changed the arithmetic: the full-precision losses differ
        assert any(ours["loss"] != theirs["loss"] for ours, theirs in zip(records, reference))
