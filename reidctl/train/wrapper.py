"""The base of the trainer's own terms around a method (the joint source step, the camera-aware
term): a wrapper that is the method for every hook it does not override."""

from __future__ import annotations

from typing import Any


class MethodWrapper:
    """``method`` seen through a wrapper: attributes and hooks the subclass does not define are
    the method's own (``name``, ``params``, the schedule, ``after_backward`` ...)."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def __getattr__(self, name: str) -> Any:  # only reached for names the wrapper lacks
        return getattr(self.method, name)
