"""The benchmarks: one module per measurement, run from a source checkout as `python -m bench.<name>`.

What several of them repeat (flags, model loading, the drafter warm-up's answers, timing, writing
a result with the machine it ran on) is in `bench.common`.
"""
