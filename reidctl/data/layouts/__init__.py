"""Dataset layouts: each one a module (or a family of them), registered here under its
``--dataset`` name.

The order below is the order detection asks them in (the first that claims a folder wins;
layouts that share looks, the Market-1501 family, decide among themselves in
:func:`~reidctl.data.layouts.market.family_member`) and the order ``--dataset`` lists them in.
A later layout adds its module and one line to the registration below (or, from outside,
``LAYOUTS[layout.name] = layout``).
"""

from __future__ import annotations

from reidctl.data.layouts.base import Layout
from reidctl.data.layouts.cuhk03 import CUHK03, CUHK03Detected, CUHK03Labeled
from reidctl.data.layouts.images import Images
from reidctl.data.layouts.manifest import Manifest
from reidctl.data.layouts.market import DukeMTMC, Folder, Market1501
from reidctl.data.layouts.msmt17 import MSMT17
from reidctl.data.layouts.registry import LAYOUTS, get_layout
from reidctl.data.layouts.synthetic import Synthetic

LAYOUTS.update({
    "market1501": Market1501(),
    "dukemtmc": DukeMTMC(),
    "msmt17": MSMT17(),
    "cuhk03": CUHK03(),
    "cuhk03-labeled": CUHK03Labeled(),
    "cuhk03-detected": CUHK03Detected(),
    "folder": Folder(),
    "manifest": Manifest(),
    "images": Images(),
    "synthetic": Synthetic(),
})

__all__ = ["LAYOUTS", "Layout", "get_layout"]
