"""Generate data from the fitted model, and impute a missing modality from the others.

The model is a generative model: every site ``x_<modality>`` returns the value the rest of the
model uses, so Pyro's ``Predictive`` can

- draw new data from the prior, for a chosen class: ``Predictive(m2.model, num_samples=S)``
  called with ``x=None`` and the labels;
- impute: called with only some modalities in ``x`` and with the guide,
  ``Predictive(m2.model, guide=m2.guide, ...)`` draws y and z from q(y, z | observed
  modalities) and the left-out modalities from p(x_missing | y, z).

On scikit-learn's digits (8×8 images cut into a top and a bottom half) this fits the model on a
long-tailed, partly labelled split, imputes the bottom half of held-out digits from their top
half, compares the error with filling in the training mean, and draws a figure
(``imputation.png``: top half given, bottom half true and imputed; plus digits generated per
class, shown as the decoder's location μ(y, z) for z drawn from the prior).

    python examples/imputation.py                        # ~1 min on 2 cores
    python examples/imputation.py --epochs 1 --num-samples 4 --out /tmp/imp   # smoke
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import Predictive  # noqa: E402

from pyro_mmt import MultimodalSemiSupervisedClassifier  # noqa: E402
from pyro_mmt.data import load_dataset, long_tailed_split  # noqa: E402


def main(args):
    torch.set_num_threads(1)
    pyro.set_rng_seed(args.seed)
    split = long_tailed_split(load_dataset("digits"), rho=10, beta=0.2, seed=args.seed)
    clf = MultimodalSemiSupervisedClassifier(epochs=args.epochs, seed=args.seed).fit(split.train)
    m2, scaler = clf.model_, clf.standardiser_

    # held-out digits in the model's units; keep only the top half as the observed modality
    test = scaler.transform(split.test)
    top = {"top": test.x["top"]}
    draws = Predictive(m2.model, guide=m2.guide, num_samples=args.num_samples,
                       return_sites=["x_bottom", "y"])(top)
    imputed = draws["x_bottom"].mean(0)  # posterior predictive mean of the bottom half

    def pixels(values):  # back to pixel units
        return values.detach().numpy() * scaler.scale_["bottom"] + scaler.mean_["bottom"]

    truth = split.test.x["bottom"].numpy()
    mse = float(np.mean((pixels(imputed) - truth) ** 2))
    baseline = float(np.mean((scaler.mean_["bottom"] - truth) ** 2))
    print(f"bottom half imputed from the top half: mean squared error {mse:.4f} "
          f"(filling in the training mean: {baseline:.4f})")

    # new digits from the prior, one column per class: z ~ p(z), shown as the decoder's
    # location μ(y, z) (a draw adds the decoder's noise, σ = 1 standard deviation per pixel)
    labels = torch.arange(m2.config.num_classes)
    prior = Predictive(m2.model, num_samples=1, return_sites=["z"])(None, None, labels)
    with torch.no_grad():
        generated = {m: m2.decoders[m](prior["z"][0], labels).numpy() * scaler.scale_[m]
                     + scaler.mean_[m] for m in ("top", "bottom")}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = min(8, len(truth))
    fig, axes = plt.subplots(3, max(shown, len(labels)), figsize=(1.2 * max(shown, 10), 4.2))
    for ax in axes.flat:
        ax.axis("off")
    top_pixels = split.test.x["top"].numpy()
    for i in range(shown):
        given = top_pixels[i].reshape(4, 8)
        axes[0, i].imshow(np.vstack([given, truth[i].reshape(4, 8)]), cmap="gray_r")
        axes[1, i].imshow(np.vstack([given, pixels(imputed[i:i + 1])[0].reshape(4, 8)]),
                          cmap="gray_r")
    for k in range(len(labels)):
        axes[2, k].imshow(np.vstack([generated["top"][k].reshape(4, 8),
                                     generated["bottom"][k].reshape(4, 8)]), cmap="gray_r")
        axes[2, k].set_title(f"class {k}", fontsize=8)
    axes[0, 0].set_title("true", fontsize=8, loc="left")
    axes[1, 0].set_title("bottom imputed", fontsize=8, loc="left")
    fig.suptitle(f"digits: bottom halves imputed from top halves (MSE {mse:.3f} vs "
                 f"{baseline:.3f} for the mean); row 3: generated per class (decoder means, z from "
                 f"the prior)", fontsize=9)
    fig.savefig(out / "imputation.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {out / 'imputation.png'}")
    return {"mse": mse, "baseline_mse": baseline}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Impute a missing modality and generate data with the fitted model.")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--num-samples", type=int, default=32,
                        help="posterior predictive draws per held-out digit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/imputation", help="folder for imputation.png")
    main(parser.parse_args())
