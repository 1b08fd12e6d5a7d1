"""Evaluation: classification metrics, ArviZ diagnostics and plots.

``metrics`` (scikit-learn metrics per split), ``diagnostics`` (InferenceData, PSIS k̂,
importance-weighted log p(x), calibration; the only module that imports ArviZ),
``diagnostic_plots`` (figures of the diagnostics), ``plots`` (benchmark and training figures)
and ``diagnose`` (all of it written to one folder).
"""
