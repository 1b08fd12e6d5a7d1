"""Quick start: the Student-t multimodal model trained with the γ-power divergence, by hand.

Loads the bundled UCI Multiple Features data (2000 handwritten digits seen through six feature
sets), draws a long-tailed split (imbalance ratio ρ = 10, 5% of the training rows labelled),
builds the model p(x, y, z) and the product-of-experts guide q(y, z | x), runs Pyro's SVI with
``GammaPowerELBO`` over interleaved labelled / unlabelled mini-batches, and prints the test
metrics (balanced accuracy, macro-F1, G-mean, minority recall).

    python examples/quickstart.py                         # the full run (~5 min on 2 cores)
    python examples/quickstart.py --epochs 1 --subset 200 --hidden 8 --latent-dim 2  # smoke
"""

import argparse

import pyro
from pyro import poutine
from pyro.infer import SVI

from pyro_mmt import ModelConfig, MultimodalM2
from pyro_mmt.data import InterleavedLoader, Standardiser, load_dataset, long_tailed_split
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.training import calibrate_decision_shift, default_optimizer, predict_proba


def main(args):
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()

    # data: a long-tailed, partially labelled split (y = -1 unlabelled), standardised on train
    split = long_tailed_split(load_dataset("mfeat"), rho=10, beta=0.05, seed=args.seed)
    train, test = split.train, split.test
    if args.subset:
        train = train.subsample(args.subset, seed=args.seed)
        test = test.subsample(args.subset, seed=args.seed)
    scaler = Standardiser().fit(train)
    train, test = scaler.transform(train), scaler.transform(test)
    print(train)

    # one object holds the model, the guide and the classifier q(y | x) they share, built from
    # one ModelConfig whose defaults are the estimator's (α = 1.5 per observed dimension of a
    # labelled datum, logit adjustment and prior shift, which read the labelled counts); only
    # the network sizes are changed here, and only when given (smoke runs)
    sizes = {k: v for k, v in (("latent_dim", args.latent_dim), ("hidden", args.hidden))
             if v is not None}
    m2 = MultimodalM2(ModelConfig(train.dims, train.num_classes,
                                  label_counts=train.class_counts(), **sizes))

    # SVI with the estimator's objective (the γ-power divergence for (x, z) given y, with
    # γ = -2/(ν + n + d) per datum, and the label under the KL; label_divergence="gamma" is
    # the paper's single divergence over (x, y, z)) and the estimator's optimiser (Adam, lr
    # 1e-3, gradients clamped to ±10)
    svi = SVI(m2.model, m2.guide, default_optimizer(),
              loss=GammaPowerELBO(label_divergence="kl", max_plate_nesting=1))
    loader = InterleavedLoader(train, seed=args.seed)
    for epoch in range(args.epochs):
        total = 0.0
        for batch, num_data in loader:  # a labelled batch, then an unlabelled one, ...
            # scaled up to its group, each pair of batches estimates the whole objective
            # Σ_labelled L(x, y) + Σ_unlabelled L(x)
            with poutine.scale(scale=num_data / batch.size):
                total += svi.step(batch.x, batch.mask, batch.y)
        print(f"epoch {epoch + 1:3d}  loss per datum {total / (len(loader) / 2) / len(train):.3f}")

    # the decision rule learns its reference shares from the fitted classifier: its mean
    # prediction on the unlabelled rows (pyro_mmt.training.train and the estimator do this at
    # the end of training; a loop written by hand calls it)
    calibrate_decision_shift(m2, train)

    # the classifier q(y | x) on the class-balanced test set, shifted by the decision rule
    pred = predict_proba(m2, test).argmax(axis=1)
    metrics = classification_metrics(test.y.numpy(), pred, split.train_class_counts)
    print(metrics.round(3).to_string())
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--latent-dim", type=int, default=None,
                        help="d (default: ModelConfig's)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="hidden layer sizes (default: ModelConfig's)")
    parser.add_argument("--subset", type=int, default=None,
                        help="use at most N training and N test rows (smoke runs)")
    main(parser.parse_args())
