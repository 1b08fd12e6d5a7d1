"""How to change the model: a linear decoder and its own σ for one modality, still trained with
the γ-power divergence.

The model p(x, y, z) below is written out in full, as a statistician would write a new one:
the same Student-t multimodal model as ``models/multimodal_t.py``, except that one modality
(by default mfeat's six morphological features, ``mor``) is decoded linearly,
μ(y, z) = W z + b_y (a factor-analysis decoder with a class offset), with its own noise scale
σ. It is trained with :func:`pyro_mmt.training.svi.train` and ``GammaPowerELBO``, next to the library's
guide. The comments marked "γ-objective" say what must stay for ``GammaPowerELBO`` (with
``gamma="auto"`` and its closed forms) to remain valid.

    python examples/custom_model.py                                  # mfeat, "mor" linear
    python examples/custom_model.py --dataset digits --modality bottom --sigma 0.5
    python examples/custom_model.py --epochs 1 --subset 200 --hidden 8 --latent-dim 2  # smoke
"""

import argparse
import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_mmt.data import Standardiser, load_dataset, long_tailed_split
from pyro_mmt.distributions import DiagStudentT
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.guides import PoEClassifier, PoETGuide
from pyro_mmt.infer import GammaPowerELBO, StudentTPowerNorm, declare_power_norm
from pyro_mmt.nn import LabelConditionedMLP, observed_dimension
from pyro_mmt.training.svi import predict_proba, train


class LinearDecoder(nn.Module):
    """μ(y, z) = W z + b_y: linear in z, with one offset per class."""

    def __init__(self, latent_dim, num_classes, out_dim):
        super().__init__()
        self.linear = nn.Linear(latent_dim, out_dim)
        self.offset = nn.Embedding(num_classes, out_dim)
        nn.init.zeros_(self.offset.weight)

    def forward(self, z, y):
        # z: [..., B, d]; y: [B], or [K, 1] when the guide enumerates the label
        return self.linear(z) + self.offset(y)


class CustomModel(nn.Module):
    r"""y ~ Cat(π), z ~ t_d(0, I, ν), x | y, z ~ t_n(μ(y, z), s(z)² Λ, ν + d), as in
    ``MultimodalTModel``, with the decoder of modality ``linear`` replaced by a
    :class:`LinearDecoder` (None keeps a network for every modality) and σ_j per modality."""

    def __init__(self, dims, num_classes, classifier, *, linear=None, sigma=None, nu=5.0,
                 latent_dim=16, hidden=(128,), alpha=1.0):
        super().__init__()
        self.modalities = tuple(dims)
        self.dims = {m: int(n) for m, n in dims.items()}
        self.num_classes, self.latent_dim, self.nu, self.alpha = num_classes, latent_dim, nu, alpha
        self.sigma = {m: float((sigma or {}).get(m, 1.0)) for m in self.modalities}  # σ_j
        self.decoders = nn.ModuleDict({
            m: LinearDecoder(latent_dim, num_classes, n) if m == linear
            else LabelConditionedMLP(latent_dim, num_classes, hidden, n)
            for m, n in self.dims.items()
        })
        # the guide's classifier, held by reference: its parameters are registered once, as
        # "classifier", by the guide and by the model's classification term
        self.__dict__["classifier"] = classifier
        self.register_buffer("class_log_prior", torch.full((num_classes,), -math.log(num_classes)))
        self.register_buffer("n_j", torch.tensor([float(n) for n in self.dims.values()]))
        self.register_buffer("log_sigma2",
                             torch.tensor([2 * math.log(self.sigma[m]) for m in self.modalities]))

    def model(self, x, mask=None, y=None):
        pyro.module("model", self)
        labelled = y is not None
        batch = next(iter(x.values())).shape[0]
        if mask is None:
            mask = torch.ones(batch, len(self.modalities), dtype=torch.bool, device=self.n_j.device)
        # n = observed dimension and log|Λ| = Σ_j n_j log σ_j², per datum (missing modalities
        # excluded): the γ-objective's norm needs both
        n_obs, log_det = observed_dimension(mask, self.n_j, self.log_sigma2)
        nu, d = self.nu, self.latent_dim

        # γ-objective: one data plate; every within-datum dimension is an event dimension
        with pyro.plate("data", batch):
            y = pyro.sample("y", dist.Categorical(logits=self.class_log_prior), obs=y)
            zeros = self.n_j.new_zeros(d)
            z = pyro.sample("z", DiagStudentT(zeros.new_tensor(nu), zeros, torch.ones_like(zeros)))

            # γ-objective: the decoder is ONE multivariate t over all modalities, written as a
            # chain of conditionals x_j | z, x_{<j}. Each site's scale and degrees of freedom
            # carry the running sums quad = ‖z‖² + Σ_{k<j} R_k and dof = ν + d + Σ_{k<j} n_k;
            # this makes p(x, y, z) the power form π_y K (1 + Q_y/ν)^{-(ν+n+d)/2} that the norm
            # below and gamma="auto" assume. Only μ_j (here) and σ_j (in Λ) are free to change.
            quad = z.pow(2).sum(-1)
            dof = torch.full_like(n_obs, nu + d)
            for j, m in enumerate(self.modalities):
                loc = self.decoders[m](z, y)  # the one line a new decoder touches
                present = mask[:, j]
                scale = ((nu + quad) / dof).sqrt() * self.sigma[m]
                x_given = DiagStudentT(dof, loc, scale.unsqueeze(-1).expand(loc.shape))
                pyro.sample(f"x_{m}", x_given.mask(present), obs=x[m])
                resid = (x[m] - loc).div(self.sigma[m]).pow(2).sum(-1)
                # a missing modality is left out of the chain: exact marginalisation
                quad = quad + torch.where(present, resid, torch.zeros_like(resid))
                dof = dof + present.to(dof.dtype) * self.dims[m]

            # γ-objective: ‖p‖_{1+γ} is in no trace, so the model declares it. It depends on ν,
            # n, d, log|Λ| and π only, not on the decoders: a new μ_j keeps it unchanged, a
            # new σ_j enters through log|Λ|, a new likelihood family needs a new norm.
            declare_power_norm(StudentTPowerNorm(nu, n_obs, d, log_det, self.class_log_prior))

            # the M2 classification term α log q(y | x) on labelled data: a factor, which the
            # γ-objective adds as it is (not raised to the power γ)
            if labelled and self.alpha > 0:
                pyro.module("classifier", self.classifier)
                log_q = dist.Categorical(logits=self.classifier(x, mask)).log_prob(y)
                pyro.factor("classification", self.alpha * log_q)


def main(args):
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    split = long_tailed_split(load_dataset(args.dataset), rho=10, beta=0.05, seed=args.seed)
    train_data, test = split.train, split.test
    if args.subset:
        train_data = train_data.subsample(args.subset, seed=args.seed)
        test = test.subsample(args.subset, seed=args.seed)
    scaler = Standardiser().fit(train_data)
    train_data, test = scaler.transform(train_data), scaler.transform(test)
    if args.modality not in train_data.dims:
        raise ValueError(f"--modality: expected one of {list(train_data.dims)}, found "
                         f"{args.modality!r}")

    dims, num_classes = train_data.dims, train_data.num_classes
    sigma = {m: args.sigma if m == args.modality else 1.0 for m in dims}
    classifier = PoEClassifier(dims, num_classes, args.hidden)
    model = CustomModel(dims, num_classes, classifier, linear=args.modality, sigma=sigma,
                        nu=args.nu, latent_dim=args.latent_dim, hidden=args.hidden,
                        alpha=args.alpha)
    # the guide must know the same ν, d and σ_j: its prior expert τ_0 depends on them
    guide = PoETGuide(dims, num_classes, classifier=classifier, latent_dim=args.latent_dim,
                      hidden=args.hidden, nu=args.nu, sigma=sigma)

    history = train(model.model, guide.guide, train_data,
                    objective=GammaPowerELBO(gamma="auto", max_plate_nesting=1),
                    optimizer=pyro.optim.ClippedAdam({"lr": args.lr}), epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    print(history[["epoch", "loss_labelled", "loss_unlabelled"]].round(2).to_string(index=False))

    pred = predict_proba(guide, test).argmax(axis=1)
    metrics = classification_metrics(test.y.numpy(), pred, split.train_class_counts)
    print(f"{args.dataset}, linear decoder for {args.modality!r} (σ = {args.sigma}):")
    print(metrics.round(3).to_string())
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="mfeat")
    parser.add_argument("--modality", default="mor", help="the modality decoded linearly")
    parser.add_argument("--sigma", type=float, default=0.5,
                        help="its decoder scale σ (the others keep 1)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--nu", type=float, default=5.0)
    parser.add_argument("--alpha", type=float, default=1000.0,
                        help="weight of the classification term per labelled datum")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128])
    parser.add_argument("--subset", type=int, default=None,
                        help="use at most N training and N test rows (smoke runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    main(parser.parse_args())
