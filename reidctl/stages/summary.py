"""What a stage's ``run_*`` returns: a typed summary, and its JSON record.

A stage summary is a dataclass of what the stage did (rows, timings, the labels' report ...);
``to_json()`` is the record ``--json`` prints, the loop keeps in the run folder and the
artifact stores in its attributes — one spelling of every key, here, per stage. Open-ended
reports that methods and stages extend (a labels report, a method's own figures) are kept as
JSON objects inside the typed fields, and flattened into the record as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class StageSummary:
    """Base of the stage summaries (dataclasses): ``to_json()`` is their fields, in order."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
