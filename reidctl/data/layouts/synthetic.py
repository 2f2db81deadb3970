"""``--data synthetic:NAME``: a generated set (made once, cached) read as a Market-style folder."""

from __future__ import annotations

from pathlib import Path

from reidctl.data.base import Dataset
from reidctl.data.layouts.base import Layout
from reidctl.data.layouts.market import FOLDER_EXPECTS, FOLDER_RULE, read_market_style
from reidctl.errors import DatasetError


class Synthetic(Layout):
    name = "synthetic"
    expects = "synthetic dataset (selected as --data synthetic:NAME)"
    folders = False
    prefix = "synthetic:"

    def read_named(self, name: str) -> Dataset:
        if not name:
            raise DatasetError("synthetic: needs a name, e.g. --data synthetic:tiny")
        # the generator, imported only when a synthetic set is asked for
        from reidctl.data.synthetic import ensure_synthetic

        root = Path(ensure_synthetic(name))
        return read_market_style(root, name=f"synthetic:{name}", layout=self.name, rule=FOLDER_RULE,
                                 expects=FOLDER_EXPECTS, require_all=False)
