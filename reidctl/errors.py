"""User-facing errors.

Library code raises :class:`ReidctlError` for anything the user can fix (a missing folder, a bad
layout, a corrupt image, a wrong artifact). The CLI turns it into one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""


class ReidctlError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class DatasetError(ReidctlError):
    """A dataset folder, manifest or image cannot be used."""


class ArtifactError(ReidctlError):
    """An HDF5/checkpoint artifact is missing, of the wrong schema, or does not line up."""


def naming(path: object, exc: ReidctlError) -> ReidctlError:
    """``exc`` with ``path`` in front of its message, unless it already names a file (an
    ArtifactError always does) or ``path``: an error about a file's content must say which file."""
    text = str(exc)
    return exc if isinstance(exc, ArtifactError) or str(path) in text else type(exc)(f"{path}: {text}")
