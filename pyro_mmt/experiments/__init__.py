"""Experiments: the accuracy benchmark (splits x methods x seeds), its baselines and the demo."""
