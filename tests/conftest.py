"""Shared fixtures: paths to ../shared (skipped with a reason when absent) and tiny images."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared material sits beside the repository in CI)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Synthetic datasets built by tests go to one per-session cache, never ~/.cache."""
    import os

    if "REIDCTL_CACHE" not in os.environ:
        monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path_factory.getbasetemp() / "reidctl-cache"))


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _offline_imagenet():
    """No test downloads anything: fetching torchvision's ImageNet weights fails as it does offline
    (a test that wants a random start says ``--pretrained none``; one that checks the ImageNet
    start patches ``reidctl.models.weights.fetch_imagenet`` itself). Session-wide, so module
    fixtures are covered too."""
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network disabled in the tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
        yield
