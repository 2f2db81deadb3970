"""CUHK03-NP: ``labeled/`` (``cuhk03``, ``cuhk03-labeled``) or ``detected/``, each Market-style."""

from __future__ import annotations

from pathlib import Path

from reidctl.data.layouts.market import (
    FOLDER_RULE,
    MARKET_EXPECTED,
    MarketStyle,
    has_market_dirs,
)


class CUHK03(MarketStyle):
    name = "cuhk03"
    expects = f"CUHK03-NP layout (expected labeled/ and/or detected/, each with {MARKET_EXPECTED})"
    looks_like = "a CUHK03-NP folder with labeled/ or detected/"
    rule = FOLDER_RULE
    #: The sub-folder read: ``labeled`` or ``detected``.
    variant = "labeled"

    def fits(self, path: Path) -> bool:
        return has_market_dirs(path / self.variant)

    def locate(self, root: Path) -> Path:
        other = "labeled" if self.variant == "detected" else "detected"
        if not self.fits(root) and has_market_dirs(root) and root.name.lower() != other:
            return root  # pointed at the split folder itself, e.g. .../cuhk03-np/labeled
        return super().locate(root) / self.variant

    def dataset_name(self, base: Path) -> str:
        return f"cuhk03-{self.variant}"


class CUHK03Labeled(CUHK03):
    name = "cuhk03-labeled"


class CUHK03Detected(CUHK03):
    name = "cuhk03-detected"
    variant = "detected"
