r"""How many ancestral draws S the Monte Carlo power norm needs: noise, bias and cost against S.

For a model whose ‖p‖_{1+γ} has no closed form (a Student-t, a Bernoulli and a Poisson
modality), :class:`~pyro_mmt.infer.MonteCarloPowerNorm` estimates log ‖p‖_{1+γ} from S draws of
the model itself (``docs/derivation.md`` §9). For each S this script measures

1. the norm alone: the standard deviation of log ‖p‖ over repeated estimates and of
   d log ‖p‖/dν (ν learned), and their biases where the closed form is known: the
   all-Student-t model of the same sizes, whose closed form (``StudentTPowerNorm``) is compared
   with the Monte Carlo norm of the same model;
2. the norm inside a step: what its noise adds to the gradient of GammaPowerELBO on an
   unlabelled batch of 128 of the mixed model, over the parameters the norm reaches (the
   decoders and ν), against the step's own noise; at the random start and again after some SVI
   steps on data drawn from the model;
3. the cost: one norm evaluation (forward and backward), and one SVI step (``pyro.infer.SVI``,
   ``pyro.optim.ClippedAdam``) of the mixed model against the same step of the t model, whose
   norm is closed-form.

**Separating the noise of a step.** The loss J = Σ_i L_i depends on the norm through log ‖p‖
only, with c = ∂J/∂log‖p‖ = Σ_i T1_i (T1 the cross term), so the norm's error adds about
c (ĝ_S − ∇log‖p‖) to the step's gradient, ĝ_S being the Monte Carlo gradient. The step is run
with a *noise-free* norm (the value and gradient of a pooled estimate from
``--reference-draws`` draws, plus a zero shift whose gradient is c), which gives the step's own
gradient variance V_0 (summed over the decoders' weights and ν) and E[c²]; the norm adds
E[c²] Var(ĝ_S). V_0 is measured twice: on one fixed batch (only the draws of z vary) and on
random minibatches from a pool of data drawn from the model (the minibatch noise of SGD as
well). A direct check runs the step with the Monte Carlo norm at ``--check-draws`` and compares
its gradient variance with V_0 + E[c²] Var(ĝ_S).

    python -m benchmarks.power_norm_draws           # CSV + log in benchmarks/results/ (3-4 minutes)
    python -m benchmarks.power_norm_draws --quick   # a smoke run (writes to the temporary directory)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro import poutine

from benchmarks.timing import interleaved, machine
from pyro_mmt.estimator import build_model, make_objective
from pyro_mmt.infer import MonteCarloPowerNorm
from pyro_mmt.models.multimodal_m2 import LatentMonteCarloPowerNorm

#: The Monte Carlo norm under study (``--norm``): "ancestral" draws x, y and z
#: (:class:`MonteCarloPowerNorm`); "latent" sums x and y exactly and draws z only
#: (:class:`LatentMonteCarloPowerNorm`, what the model declares for these families).
NORMS = {"ancestral": MonteCarloPowerNorm, "latent": LatentMonteCarloPowerNorm}
NORM = {"class": MonteCarloPowerNorm}

RESULTS = Path(__file__).parent / "results"

DIMS = {"lab": 30, "symptoms": 20, "visits": 10}
MIXED = {"lab": "student_t", "symptoms": "bernoulli", "visits": "poisson"}
NUM_CLASSES = 3
NU = 5.0
DRAWS = (8, 16, 32, 64, 128, 256, 1024, 4096)


# ------------------------------------------------------------------------------- the models
def build(likelihood, *, hidden, latent_dim, seed):
    """A model with random networks and ν learned (so that d/dν exists); a mixed model
    declares the norm under study (``--norm``)."""
    pyro.set_rng_seed(seed)
    m2 = build_model(DIMS, NUM_CLASSES, likelihood=likelihood, nu=NU, hidden=hidden,
                     latent_dim=latent_dim, learn_nu=True)
    if likelihood != "student_t":
        m2.power_norm = lambda observed, m2=m2: make_norm(m2, observed)
    return m2


def make_norm(m2, observed, num_draws=None):
    """The norm under study for ``observed`` (bool [B, M])."""
    obs_dim = (observed.to(m2._dims.dtype) @ m2._dims)
    if NORM["class"] is LatentMonteCarloPowerNorm:
        return LatentMonteCarloPowerNorm(m2, observed, obs_dim, nu=m2.nu, num_draws=num_draws)
    return MonteCarloPowerNorm(m2.model, observed, obs_dim, m2.config.latent_dim, nu=m2.nu,
                               num_draws=num_draws)


def reached(m2) -> list[torch.Tensor]:
    """The parameters the norm's gradient reaches: the decoders' weights and ν."""
    return list(m2.decoders.parameters()) + [m2.nu_unconstrained]


def model_batch(m2, batch_size: int, seed: int):
    """A batch drawn from the model itself (all modalities observed), unlabelled and labelled."""
    pyro.set_rng_seed(seed)
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(m2.model).get_trace(batch_size=batch_size)
    x = {m: trace.nodes[f"x_{m}"]["value"] for m in m2.modalities}
    mask = torch.ones(batch_size, len(x), dtype=torch.bool)
    return x, mask, trace.nodes["y"]["value"]


def dnu_factor(m2) -> float:
    """dν/dθ for ν = 2 + softplus(θ): turns a gradient in θ into one in ν."""
    return torch.sigmoid(m2.nu_unconstrained).item()


class Moments:
    """Running sums of a vector's draws, for its mean and the sum of its coordinates'
    variances."""

    def __init__(self):
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, vector: torch.Tensor) -> None:
        v = vector.detach().double()
        self.n += 1
        self.total = self.total + v
        self.squares = self.squares + v * v

    def mean(self) -> torch.Tensor:
        return self.total / self.n

    def total_variance(self) -> float:
        mean = self.mean()
        return float(((self.squares / self.n - mean * mean) * self.n / (self.n - 1)).sum())


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def gradient(value, params):
    """d value / d params, zeros for the parameters it does not use (the latent norm never
    uses the Student-t decoder: its integral does not depend on the mean)."""
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


# --------------------------------------------------------------------------- the norm alone
def monte_carlo_norm(m2, num_draws: int):
    return make_norm(m2, torch.ones(1, len(DIMS), dtype=torch.bool), num_draws)


def auto_gamma(m2) -> torch.Tensor:
    observed = torch.ones(1, len(DIMS), dtype=torch.bool)
    return torch.as_tensor(m2.power_norm(observed).auto_gamma()).detach()


def norm_draws(m2, num_draws: int, repeats: int, gamma):
    """``repeats`` estimates of log‖p‖ and their gradients: values, d/dν, the moments of the
    gradient over :func:`reached`, and the time of each forward + backward."""
    params = reached(m2)
    factor = dnu_factor(m2)
    values, dnu, seconds, moments = [], [], [], Moments()
    for _ in range(repeats):
        tic = time.perf_counter()
        value = monte_carlo_norm(m2, num_draws).log_norm(gamma).sum()
        grads = gradient(value, params)
        seconds.append(time.perf_counter() - tic)
        values.append(value.item())
        dnu.append(grads[-1].item() / factor)
        moments.add(flat(grads))
    return values, dnu, seconds, moments


def reference_norm(m2, gamma, total_draws: int, chunk: int = 4096):
    """log‖p‖ and its gradient over :func:`reached` from ``total_draws`` draws, pooled over
    chunks as one self-normalised estimate: log of the mean of all p^γ, and the gradient
    Σ_chunks (weight of the chunk) × (the chunk's gradient)."""
    params = reached(m2)
    values, grads = [], []
    for _ in range(max(1, total_draws // chunk)):
        value = monte_carlo_norm(m2, chunk).log_norm(gamma).sum()
        values.append(value.detach())
        grads.append(flat(gradient(value, params)).detach())
    g = float(gamma.reshape(-1)[0])
    scaled = (1 + g) * torch.stack(values)
    weights = torch.softmax(scaled, 0)
    value = (torch.logsumexp(scaled, 0) - math.log(len(values))) / (1 + g)
    return value, (weights.unsqueeze(-1) * torch.stack(grads)).sum(0)


def closed_norm(m2, gamma):
    """The closed form of the all-Student-t model: log‖p‖ and d log‖p‖/dν."""
    observed = torch.ones(1, len(DIMS), dtype=torch.bool)
    value = m2.power_norm(observed).log_norm(gamma).sum()
    (grad,) = torch.autograd.grad(value, [m2.nu_unconstrained])
    return value.item(), grad.item() / dnu_factor(m2)


# ------------------------------------------------------------------ the norm inside a step
class NoiseFreeNorm(MonteCarloPowerNorm):
    """The Monte Carlo norm replaced by a fixed reference: its value, its gradient over
    :func:`reached` (a first-order term in the parameters) and a zero ``shift`` whose gradient
    is ∂J/∂log‖p‖."""

    def __init__(self, like: MonteCarloPowerNorm, value, grad, params, shift):
        self.__dict__.update(like.__dict__)
        self.value, self.grad, self.params, self.shift = value, grad, params, shift

    def log_norm(self, gamma):
        moved = flat([p - p.detach() for p in self.params])
        out = self.value + self.shift + (moved * self.grad).sum()
        return out.expand(self.batch_shape)


def step_gradients(m2, batches, repeats: int, *, noise_free=None):
    """The moments of the loss's gradient over :func:`reached` and over ν alone, and E[c²]
    (with ``noise_free`` = (value, grad)) over ``repeats`` evaluations, the r-th on the batch
    ``batches(r)``."""
    elbo = make_objective("gamma_power")
    params = reached(m2)
    factor = dnu_factor(m2)
    moments, nu_grads, c2, values = Moments(), [], [], []
    for r in range(repeats):
        x, mask, y = batches(r)
        shift = torch.zeros((), requires_grad=True)
        previous = m2.__dict__.get("power_norm")  # the norm under study (see build)
        if noise_free is not None:
            value, grad = noise_free

            def declared(observed, value=value, grad=grad, shift=shift):
                like = make_norm(m2, observed)
                return NoiseFreeNorm(like, value, grad, params, shift)

            m2.power_norm = declared
        try:
            loss = elbo.differentiable_loss(m2.model, m2.guide, x, mask, y)
            wrt = params + ([shift] if noise_free is not None else [])
            grads = gradient(loss, wrt)
        finally:
            if noise_free is not None:
                if previous is None:
                    del m2.power_norm
                else:
                    m2.power_norm = previous
        if noise_free is not None:
            c2.append(grads[-1].item() ** 2)
            grads = grads[:-1]
        moments.add(flat(grads))
        nu_grads.append(grads[-1].item() / factor)
        values.append(loss.item())
    return moments, nu_grads, (statistics.fmean(c2) if c2 else math.nan), values


# ---------------------------------------------------------------------------------- timing
def svi_step(m2, batch, num_draws=None):
    """One SVI step of GammaPowerELBO with ClippedAdam; the mixed model's norm at
    ``num_draws``."""
    svi = pyro.infer.SVI(m2.model, m2.guide, pyro.optim.ClippedAdam({"lr": 1e-3}),
                         loss=make_objective("gamma_power"))
    x, mask, y = batch

    def step():
        saved = NORM["class"].default_num_draws
        if num_draws is not None:
            NORM["class"].default_num_draws = num_draws
        try:
            return svi.step(x, mask, y)
        finally:
            NORM["class"].default_num_draws = saved

    return step


# ------------------------------------------------------------------------------ the parts
def norm_rows(m2, name, state, args, say):
    """Part 1: the norm alone, S by S. Returns the rows and the reference (value, gradient)."""
    gamma = auto_gamma(m2)
    g = float(gamma.reshape(-1)[0])
    ref_value, ref_grad = reference_norm(m2, gamma, args.reference_draws)
    factor = dnu_factor(m2)
    if name == "t":
        exact, exact_dnu = closed_norm(m2, gamma)
        reference = "closed form"
    else:
        exact, exact_dnu = ref_value.item(), ref_grad[-1].item() / factor
        reference = f"{args.reference_draws} draws"
    say(f"{name} model ({state}): gamma {g:.5f}, nu {m2.nu.item():.3f}; log-norm {exact:.4f}, "
        f"d/dnu {exact_dnu:.4f} ({reference}); pooled {args.reference_draws}-draw estimate "
        f"{ref_value.item():.4f}")
    rows = []
    for num in args.draws:
        values, dnu, seconds, moments = norm_draws(m2, num, args.repeats, gamma)
        n, sd = len(values), statistics.stdev(values)
        row = {"model": name, "state": state, "S": num, "gamma": g, "nu": m2.nu.item(),
               "repeats": n, "reference": reference, "log_norm_reference": exact,
               "log_norm_mean": statistics.fmean(values), "log_norm_sd": sd,
               "log_norm_se_of_mean": sd / math.sqrt(n),
               "implied_cv2": num * (1 + g) ** 2 * sd**2,
               "delta_method_bias": -(1 + g) * sd**2 / 2,
               "dnu_reference": exact_dnu, "dnu_mean": statistics.fmean(dnu),
               "dnu_sd": statistics.stdev(dnu), "grad_total_variance": moments.total_variance(),
               "norm_ms": 1e3 * statistics.median(seconds)}
        if name == "t":  # bias only where the closed form is known
            row["bias"] = row["log_norm_mean"] - exact
            row["dnu_bias"] = row["dnu_mean"] - exact_dnu
        else:
            row["bias"] = row["dnu_bias"] = math.nan
        rows.append(row)
        say(f"  S={num:4d}: log-norm sd {sd:.4f}, bias {row['bias']:+.4f} (SE "
            f"{row['log_norm_se_of_mean']:.4f}; delta method {row['delta_method_bias']:+.4f}), "
            f"d/dnu sd {row['dnu_sd']:.4f} (bias {row['dnu_bias']:+.4f}, SE "
            f"{row['dnu_sd'] / math.sqrt(n):.4f}), {row['norm_ms']:.1f} ms")
    return rows, (ref_value, ref_grad)


def step_shares(m2, rows, noise_free, pool, args, say, check=False):
    """Part 2: the norm's share of an SVI step's gradient variance, against a fixed batch (z
    draws only) and random minibatches from ``pool`` (minibatch noise as well)."""
    pool_x, pool_mask = pool
    gen = torch.Generator().manual_seed(args.seed + 4)
    rows_of = [torch.randperm(len(pool_mask), generator=gen)[:args.batch_size]
               for _ in range(args.step_repeats)]

    def fixed(r):
        return ({m: v[: args.batch_size] for m, v in pool_x.items()},
                pool_mask[: args.batch_size], None)

    def minibatch(r):
        return {m: v[rows_of[r]] for m, v in pool_x.items()}, pool_mask[rows_of[r]], None

    baselines = {}
    for tag, batches in (("fixed", fixed), ("minibatch", minibatch)):
        pyro.set_rng_seed(args.seed + 3)
        v0, nu0, c2, loss0 = step_gradients(m2, batches, args.step_repeats, noise_free=noise_free)
        baselines[tag] = (v0.total_variance(), statistics.variance(nu0), c2,
                          statistics.stdev(loss0))
        say(f"  step on an unlabelled {tag} batch of {args.batch_size}, noise-free norm "
            f"({args.step_repeats} repeats): gradient variance (decoders + nu) "
            f"{baselines[tag][0]:.4g}, d/dnu sd {math.sqrt(baselines[tag][1]):.4g}, loss sd "
            f"{baselines[tag][3]:.4g}, sqrt E[c^2] = {math.sqrt(c2):.4g} (c = dJ/dlog-norm)")
    for row in rows:
        for tag, (var0, var0_nu, c2, loss_sd) in baselines.items():
            row[f"grad_var_share_{tag}"] = c2 * row["grad_total_variance"] / var0
            row[f"nu_var_share_{tag}"] = c2 * row["dnu_sd"] ** 2 / var0_nu
            row[f"loss_sd_{tag}"] = loss_sd
        c2 = baselines["fixed"][2]
        row["c_rms"] = math.sqrt(c2)
        row["loss_sd_from_norm"] = math.sqrt(c2) * row["log_norm_sd"]
        say(f"  S={row['S']:4d}: the norm adds {row['grad_var_share_fixed']:.3g} x (fixed batch)"
            f" / {row['grad_var_share_minibatch']:.3g} x (minibatches) the step's gradient "
            f"variance over decoders + nu, {row['nu_var_share_fixed']:.3g} x / "
            f"{row['nu_var_share_minibatch']:.3g} x that of d/dnu; loss sd from the norm "
            f"{row['loss_sd_from_norm']:.3g}")
    target = next((r for r in rows if r["S"] == args.check_draws), None)
    if check and target is not None:
        saved = NORM["class"].default_num_draws
        NORM["class"].default_num_draws = args.check_draws
        try:
            pyro.set_rng_seed(args.seed + 5)
            vs, _, _, _ = step_gradients(m2, fixed, args.step_repeats)
        finally:
            NORM["class"].default_num_draws = saved
        var0, _, c2, _ = baselines["fixed"]
        predicted = var0 + c2 * target["grad_total_variance"]
        say(f"  direct check at S={args.check_draws} (fixed batch): gradient variance with the "
            f"Monte Carlo norm {vs.total_variance():.4g}, predicted V0 + E[c^2] Var(g_S) = "
            f"{predicted:.4g} (ratio {vs.total_variance() / predicted:.2f})")


def train(m2, pool, args, say):
    """SVI on minibatches of ``pool`` (labelled and unlabelled in turn), the norm at
    ``--train-draws``: a model and guide past their random start."""
    pool_x, pool_mask, pool_y = pool
    svi = pyro.infer.SVI(m2.model, m2.guide, pyro.optim.ClippedAdam({"lr": args.lr}),
                         loss=make_objective("gamma_power"))
    gen = torch.Generator().manual_seed(args.seed + 7)
    losses = []
    saved = NORM["class"].default_num_draws
    NORM["class"].default_num_draws = args.train_draws
    try:
        for step in range(args.train_steps):
            rows = torch.randperm(len(pool_mask), generator=gen)[:args.batch_size]
            y = pool_y[rows] if step % 2 else None
            loss = svi.step({m: v[rows] for m, v in pool_x.items()}, pool_mask[rows], y)
            if y is None:
                losses.append(loss)
    finally:
        NORM["class"].default_num_draws = saved
    k = max(1, len(losses) // 10)
    say(f"trained the mixed model: {args.train_steps} SVI steps (ClippedAdam lr {args.lr}, norm "
        f"at S = {args.train_draws}); unlabelled loss per batch {statistics.fmean(losses[:k]):.1f}"
        f" (first tenth) -> {statistics.fmean(losses[-k:]):.1f} (last tenth)")


def norm_step(m2, num_draws: int):
    """One evaluation of the Monte Carlo norm, forward and backward (as a step needs it)."""
    gamma = auto_gamma(m2)
    params = reached(m2)

    def step():
        value = monte_carlo_norm(m2, num_draws).log_norm(gamma).sum()
        return gradient(value, params)

    return step


def step_times(models, rows, args, say):
    """Part 3: one SVI step of the mixed model at each S against the t model's closed form,
    and one evaluation of the norm, all timed interleaved."""
    batches = {name: model_batch(models[name], args.batch_size, args.seed + 6)
               for name in ("t", "mixed")}
    for labelled in (False, True):
        tag = "labelled" if labelled else "unlabelled"
        steps = {f"norm_S{num}": norm_step(models["mixed"], num) for num in args.draws}
        for name, (x, mask, y) in batches.items():
            batch = (x, mask, y if labelled else None)
            if name == "t":
                steps["t_closed"] = svi_step(models["t"], batch)
            else:
                for num in args.draws:
                    steps[f"mixed_S{num}"] = svi_step(models["mixed"], batch, num)
        timings = interleaved(steps, rounds=args.rounds, repeats=3, warmup=1)
        ref = timings.median("t_closed")
        say(f"SVI step, {tag} batch of {args.batch_size}: t model (closed-form norm) "
            f"{1e3 * ref:.1f} ms")
        for row in rows:
            key = f"mixed_S{row['S']}"
            ms, norm_ms = 1e3 * timings.median(key), 1e3 * timings.median(f"norm_S{row['S']}")
            row[f"step_ms_{tag}"] = ms
            row[f"step_ms_t_closed_{tag}"] = 1e3 * ref
            row[f"step_ratio_{tag}"] = timings.median(key) / ref
            row[f"norm_ms_interleaved_{tag}"] = norm_ms
            row[f"norm_share_of_step_{tag}"] = norm_ms / ms
            say(f"  S={row['S']:4d}: mixed step {ms:.1f} ms ({row[f'step_ratio_{tag}']:.2f} x "
                f"the t step); one norm evaluation {norm_ms:.1f} ms "
                f"({100 * row[f'norm_share_of_step_{tag}']:.0f}% of the step)")


# ------------------------------------------------------------------------------------ main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, nargs="+", default=list(DRAWS))
    p.add_argument("--repeats", type=int, default=400,
                   help="estimates of the norm per S and model (default 400)")
    p.add_argument("--step-repeats", type=int, default=100,
                   help="loss gradients per setting of the step-noise comparison (default 100)")
    p.add_argument("--reference-draws", type=int, default=262144,
                   help="draws of the reference norm (default 262144)")
    p.add_argument("--check-draws", type=int, default=64,
                   help="S of the direct check of the step-noise decomposition (default 64)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pool-size", type=int, default=4096,
                   help="data drawn from the mixed model, for minibatches (default 4096)")
    p.add_argument("--train-steps", type=int, default=600,
                   help="SVI steps before the second measurement (default 600; 0: none)")
    p.add_argument("--train-draws", type=int, default=1024, help="S while training (default 1024)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6, help="timing rounds (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--norm", choices=sorted(NORMS), default="ancestral",
                   help="the Monte Carlo norm: 'ancestral' draws x, y, z; 'latent' sums x and y "
                   "exactly and draws z (default ancestral)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few repeats")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV path (default benchmarks/results/power_norm_draws.csv; with "
                   "--quick, power_norm_draws_quick.csv in the temporary directory); the log "
                   "goes beside it")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "power_norm_draws_quick.csv" if args.quick
                    else RESULTS / "power_norm_draws.csv")
    if args.quick:
        args.draws, args.repeats, args.step_repeats = args.draws[:2], 4, 3
        args.reference_draws, args.check_draws = 512, args.draws[0]
        args.batch_size, args.pool_size, args.hidden, args.latent_dim = 16, 64, 8, 2
        args.train_steps, args.train_draws, args.rounds = 4, 16, 1
    torch.set_num_threads(args.threads)
    NORM["class"] = NORMS[args.norm]
    lines = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    tic0 = time.perf_counter()
    hidden = (args.hidden,)
    say(f"machine: {machine()}")
    given = sys.argv[1:] if argv is None else list(argv)
    say("command: python -m benchmarks.power_norm_draws" + "".join(f" {a}" for a in given))
    say(f"models: dims {DIMS}, K = {NUM_CLASSES}, nu = {NU} (learned), hidden {hidden}, "
        f"d = {args.latent_dim}, seed {args.seed}; mixed = {MIXED}; t = every modality "
        "student_t; all modalities observed; gamma = auto; float32")
    models = {
        "t": build("student_t", hidden=hidden, latent_dim=args.latent_dim, seed=args.seed),
        "mixed": build(MIXED, hidden=hidden, latent_dim=args.latent_dim, seed=args.seed),
    }
    pool_x, pool_mask, pool_y = model_batch(models["mixed"], args.pool_size, args.seed + 2)

    # 1. the norm alone (both models), 2. its share of a step's noise (mixed model)
    pyro.set_rng_seed(args.seed + 1)
    rows, _ = norm_rows(models["t"], "t", "initial", args, say)
    mixed_rows, reference = norm_rows(models["mixed"], "mixed", "initial", args, say)
    step_shares(models["mixed"], mixed_rows, reference, (pool_x, pool_mask), args, say,
                check=True)
    rows += mixed_rows
    if args.train_steps:
        train(models["mixed"], (pool_x, pool_mask, pool_y), args, say)
        pyro.set_rng_seed(args.seed + 8)
        trained_rows, reference = norm_rows(models["mixed"], "mixed", "trained", args, say)
        step_shares(models["mixed"], trained_rows, reference, (pool_x, pool_mask), args, say)
        rows += trained_rows

    # 3. cost
    step_times(models, mixed_rows, args, say)

    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.5g")
    say(f"wall time {time.perf_counter() - tic0:.0f} s; wrote {args.out}")
    args.out.with_suffix(".log").write_text("\n".join(lines) + "\n")
    return table


if __name__ == "__main__":
    main()
