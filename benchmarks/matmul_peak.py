"""This machine's matrix-multiply throughput: the yardstick of the steps' compute efficiency.

Times ``torch.mm`` (float32) on square matrices and on the shapes the benchmarked networks
multiply (rows = K x batch under enumeration, hidden 256), interleaved, and reports GFLOP/s
(2mnk / time). ``docs/performance.md`` divides the plain step's achieved GFLOP/s by the best
of these.

    python -m benchmarks.matmul_peak                 # 1 thread (as the other benchmarks)
    python -m benchmarks.matmul_peak --threads 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from benchmarks.timing import interleaved, machine, parse_threads

RESULTS = Path(__file__).parent / "results"

#: (m, k, n): square sizes, then the networks' shapes (decoder and encoder layers at batch 256).
SHAPES = [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
          (2560, 32, 256), (2560, 256, 392), (2560, 256, 216), (2560, 256, 64),
          (256, 392, 256), (10240, 256, 392)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None,
                   help="default benchmarks/results/matmul_peak_<threads>t.csv")
    args = p.parse_args(argv)
    threads = parse_threads(args.threads)
    shapes = SHAPES[:1] + SHAPES[3:4] if args.quick else SHAPES
    print(f"machine: {machine()}")
    gen = torch.Generator().manual_seed(0)
    pairs = {s: (torch.randn(s[0], s[1], generator=gen), torch.randn(s[1], s[2], generator=gen))
             for s in shapes}
    timings = interleaved({s: (lambda a=a, b=b: torch.mm(a, b)) for s, (a, b) in pairs.items()},
                          rounds=1 if args.quick else args.rounds,
                          repeats=1 if args.quick else args.repeats)
    rows = [{"m": m, "k": k, "n": n, "threads": threads, "ms": 1e3 * timings.median((m, k, n)),
             "gflops": 2 * m * k * n / timings.median((m, k, n)) / 1e9} for m, k, n in shapes]
    table = pd.DataFrame(rows)
    out = args.out or RESULTS / f"matmul_peak_{threads}t.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4g")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"peak {table['gflops'].max():.0f} GFLOP/s; wrote {out}")


if __name__ == "__main__":
    main()
