"""reidctl: unsupervised person re-identification, one inspectable stage at a time."""

from reidctl.version import __version__

__all__ = ["__version__", "load_model"]


def load_model(path, device="cpu"):
    """The model of a reidctl checkpoint as a ``torch.nn.Module`` in eval mode: a normalised image
    batch → L2-normalised features; ``.preprocessing`` gives the input size, mean and std
    (:func:`reidctl.models.deploy.load_model`)."""
    from reidctl.models.deploy import load_model as _load

    return _load(path, device)
