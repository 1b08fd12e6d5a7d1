"""Data-parallel training with torch.distributed: several processes, one model.

Each process (launched by torchrun) builds the same model (with its guide), trains on its share of the
data with Pyro's SVI, and sums the gradients of the Pyro parameters with the other processes
before every update (``pyro_mmt.training.distributed``), so that all processes hold the same weights and
P processes with batches of B/P rows make the steps of one process with batches of B. CPU
processes talk through gloo, GPUs through nccl. Rank 0 prints the history and the test metrics.

    torchrun --nproc_per_node=2 examples/distributed.py                 # 2 CPU processes
    torchrun --nproc_per_node=4 examples/distributed.py --device cuda   # 4 GPUs
    python examples/distributed.py --epochs 1 --subset 200 --hidden 8 --latent-dim 2  # 1 process

Set ``--threads`` so that processes x threads does not exceed the cores.
"""

import argparse
import os

import numpy as np
import pyro
import torch
from torch import distributed as dist

from pyro_mmt import ModelConfig, MultimodalM2
from pyro_mmt.data import Standardiser, load_dataset, long_tailed_split
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.training.distributed import init_from_env, train_distributed
from pyro_mmt.training.svi import predict_proba


def main(args):
    rank, world = init_from_env("nccl" if args.device == "cuda" else "gloo")
    torch.set_num_threads(args.threads)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.device == "cuda" else "cpu"

    # the same split and the same initial weights on every process (rank 0's are broadcast)
    pyro.set_rng_seed(args.seed)
    split = long_tailed_split(load_dataset(args.dataset), rho=args.rho, beta=args.beta,
                              seed=args.seed)
    train, test = split.train, split.test
    if args.subset:
        rows = np.random.default_rng(args.seed).permutation(len(train))[: args.subset]
        train = train[np.sort(rows)]
    scaler = Standardiser().fit(train)
    train, test = scaler.transform(train), scaler.transform(test)
    # the estimator's model (ModelConfig's defaults), with the network sizes when given
    sizes = {k: v for k, v in (("latent_dim", args.latent_dim), ("hidden", args.hidden))
             if v is not None}
    m2 = MultimodalM2(ModelConfig(train.dims, train.num_classes,
                                  label_counts=train.class_counts(), **sizes)).to(device)
    if rank == 0:
        print(f"{world} process(es); {train}")

    # each process: its partition, batches of batch_size / P rows, gradients summed
    history = train_distributed(
        m2.model, m2.guide, train, objective=GammaPowerELBO(label_divergence="kl",
                                                           max_plate_nesting=1),
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=device,
        progress=not args.quiet,
    )
    if rank == 0:
        print(history[["epoch", "loss", "seconds"]].to_string(index=False))
        proba = predict_proba(m2, test, device=device)
        metrics = classification_metrics(test.y.numpy(), proba.argmax(1),
                                         split.train_class_counts)
        print(metrics.to_string())
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mfeat")
    parser.add_argument("--rho", type=float, default=10.0, help="imbalance ratio")
    parser.add_argument("--beta", type=float, default=0.05, help="labelled fraction")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="hidden layer sizes (default: ModelConfig's)")
    parser.add_argument("--latent-dim", type=int, default=None, help="d (default: ModelConfig's)")
    parser.add_argument("--subset", type=int, default=0, help="train on this many rows (smoke)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    main(parser.parse_args())
