"""Speed benchmarks of pyro-mmt (scripts, not tests): run each with ``python -m benchmarks.NAME``.

- ``overhead``: one training step through Pyro against the same step written in plain PyTorch;
- ``scaling``: step time against batch size, classes, modalities and input dimension;
- ``end_to_end``: wall time, peak memory and samples per second of whole runs;
- ``matmul_peak``: this machine's matrix-multiply throughput (the efficiency yardstick);
- ``profile_step``: where the time of one Pyro step goes (torch.profiler);
- ``gpu_check``: CPU against GPU step times and values (needs a GPU for its second half).

Results go to ``benchmarks/results/`` (CSV, PNG); ``docs/performance.md`` reports them.
"""
