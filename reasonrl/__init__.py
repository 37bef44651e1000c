"""reasonrl: post-train language models to reason and act, on one small, tested core."""

__version__ = "0.1.0"
