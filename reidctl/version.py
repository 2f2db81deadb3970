"""The package version, in a module of its own so that any module can record it in what it
writes without importing the package's public entry points (:mod:`reidctl`)."""

__version__ = "0.1.0"
