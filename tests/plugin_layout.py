"""``pidcam``: a test-only dataset layout. A flat folder of crops named ``PID_CAM_SPLIT[_…].jpg``
(camera numbered from 1, split one of train/query/gallery), marked by a ``layout.txt`` file.

Registering it is one line (``LAYOUTS["pidcam"] = PidCam()``, what :func:`register` does);
nothing else in reidctl knows of it.
"""

from __future__ import annotations

from pathlib import Path

from reidctl.data.base import SPLITS, Dataset, Sample
from reidctl.data.images import is_image_name
from reidctl.data.layouts import LAYOUTS, Layout
from reidctl.errors import DatasetError


class PidCam(Layout):
    name = "pidcam"
    expects = "pidcam folder (expected layout.txt and images named PID_CAM_SPLIT.jpg)"
    looks_like = "a pidcam folder with layout.txt"

    def detect(self, path: Path, names: str) -> bool:
        return (path / "layout.txt").is_file()

    def read(self, path: Path) -> Dataset:
        root = self.locate(path)  # the folder itself, or its one sub-folder with layout.txt
        splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
        for image in root.iterdir():
            if not image.is_file() or not is_image_name(image.name):
                continue
            pid, cam, split = (image.stem.split("_") + ["", ""])[:3]
            if not (pid.isdigit() and cam.isdigit() and split in SPLITS):
                raise DatasetError(f"{image}: not named PID_CAM_SPLIT ({self.expects})")
            splits[split].append(Sample(image.name, image, int(pid), int(cam) - 1))
        return Dataset(name=root.name, root=root, layout=self.name, distractor_pid=None, **splits)


def register() -> None:
    """Register ``pidcam`` for good (a test registers it with monkeypatch instead)."""
    LAYOUTS[PidCam.name] = PidCam()
