"""pyro-mmt: semi-supervised classification of class-imbalanced, multimodal, partially labelled
data with a Student-t deep generative model trained by the γ-power divergence, in Pyro."""

__version__ = "0.1.0"
