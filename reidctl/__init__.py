"""reidctl: unsupervised person re-identification, one inspectable stage at a time."""

__version__ = "0.1.0"
