"""Backbones, pooling, part heads and weight loading."""

from reidctl.models.backbones import BACKBONES
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.weights import build_model

__all__ = ["BACKBONES", "ModelConfig", "ReidModel", "build_model"]
