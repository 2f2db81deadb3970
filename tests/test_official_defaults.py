"""`reidctl loop --method NAME` with no other option is the official command (issue 26).

docs/methods.md holds, per method, a table of every option the loop resolves, with the official
script's value and where it sets it (transcribed from the official repositories and
ALGORITHMS.md §9). This resolves each method's loop through the CLI (``--dry-run``: nothing runs)
on a Market-sized folder of empty files and checks every row both ways: the reidctl column is
what the loop resolved, the official column equals it unless the row says **deviation**, and no
resolved option lacks a row.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from reidctl.methods import METHODS
from tests.clitools import run_ok
from tests.fakedata import named_market, named_msmt_lists

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOC = Path(__file__).resolve().parent.parent / "docs" / "methods.md"
#: Resolved keys that are not hyperparameters: where the data and the run live, how it computes.
NOT_HYPERPARAMETERS = {"data", "dataset", "run_dir", "method", "no_eval_init", "checkpoint", "keep", "aux_data",
                       "aux_dataset", "device", "workers", "extract_batch_size", "deterministic", "skip_bad_images"}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Every method's resolved loop options (the dry run's config.toml, flattened)."""
    root = tmp_path_factory.mktemp("official")
    market, msmt = named_market(root / "market1501"), named_msmt_lists(root / "msmt17")
    return {m: resolved(m, market, msmt, root / f"run-{m}") for m in METHODS}


def resolved(method: str, market: Path, msmt: Path, run_dir: Path) -> dict[str, object]:
    extra = ["--aux-data", msmt] if method == "mar" else []
    out = run_ok("loop", "--method", method, "--data", market, "--run-dir", run_dir, "--dry-run", *extra)
    assert not run_dir.exists()  # a dry run writes nothing
    flat = {}
    for section in tomllib.loads(out.stdout).values():
        for table in (section.values() if all(isinstance(v, dict) for v in section.values()) else [section]):
            flat.update(table)
    return {k: v for k, v in flat.items() if k not in NOT_HYPERPARAMETERS}


def doc_table(method: str) -> dict[str, dict[str, str]]:
    """The rows of ``method``'s table in docs/methods.md: option key → its cells."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"<!-- defaults: {method} -->")
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| option |"))
    header = [c.strip() for c in lines[first].strip("|").split("|")]
    rows = {}
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        key = cells["option"].strip("`").removeprefix("--").replace("-", "_")
        assert key not in rows, f"{method}: two rows for {cells['option']}"
        rows[key] = cells
    return rows


def value(cell: str, like: object) -> object:
    """A table cell as the TOML value it stands for, read as the resolved value ``like`` is: a
    boolean's on/off, a number, or the text (``--amp off`` is text)."""
    text = cell.strip().strip("`")
    if isinstance(like, bool):
        return {"on": True, "off": False}.get(text, text)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def same(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


@pytest.mark.parametrize("method", list(METHODS))
def test_loop_defaults_are_the_official_command(method, configs):
    got = configs[method]
    rows = doc_table(method)
    assert sorted(set(got) - set(rows)) == [], f"{method}: resolved options without a row in docs/methods.md"
    assert sorted(set(rows) - set(got)) == [], f"{method}: rows for options the loop does not resolve"
    for key, cells in rows.items():
        ours = value(cells["reidctl"], got[key])
        assert same(got[key], ours), f"{method} --{key}: the loop resolves {got[key]!r}, the table says {ours!r}"
        if cells["official"] in ("—", ""):
            continue
        official = value(cells["official"], got[key])
        deviation = cells["note"].startswith("**deviation**")
        assert same(official, ours) != deviation, (
            f"{method} --{key}: official {official!r}, reidctl {ours!r}"
            + (" (marked as a deviation, but equal)" if deviation else " (not marked as a deviation)"))
        assert cells["official source"], f"{method} --{key}: the official value names no source"


def test_the_values_the_issue_names(configs):
    """Spot checks by hand (ALGORITHMS.md §2.3, §6.4, §9), independent of the docs."""
    mar = configs["mar"]
    assert (mar["epochs"], mar["eval_every"], mar["schedule_epochs"], mar["lr_drops"], mar["aux_splits"]) == (
        20, 20, 20, "milestones", "train,test")
    assert (configs["cc"]["epochs"], configs["cc"]["eval_every"]) == (50, 10)
    assert configs["pplr"]["eval_every"] == 5
    for method in ("icrefine", "ncplr", "gl-ncplr"):
        assert configs[method]["eval_every"] == 1
    gl = configs["gl-ncplr"]
    assert (gl["global_local"], gl["parts"], gl["branches"]) == (True, 2, "global=0.6,part0=0.2,part1=0.2")
    assert configs["ncplr"]["global_local"] is False and configs["ncplr"]["parts"] == 0
    assert configs["icrefine"]["n_clusters"] == 1200
    for method in METHODS:
        assert configs[method]["pretrained"] == "imagenet"


def test_mar_lr_drops_at_12_and_17():
    import torch

    from reidctl.train.optim import multistep_at_epoch_start, official_milestones

    def lrs(drops):
        out = []
        for epoch in range(20):
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            multistep_at_epoch_start(opt, epoch, official_milestones(20), 0.1, drops)
            out.append(round(opt.param_groups[0]["lr"], 9))
        return out

    assert lrs("milestones") == [1.0] * 12 + [0.1] * 5 + [0.01] * 3  # PyTorch 1.0.0, the published run
    assert lrs("early") == [1.0] * 11 + [0.1] * 5 + [0.01] * 4  # the same code on PyTorch >= 1.1
    with pytest.raises(ValueError, match=r"drops must be one of"):
        lrs("late")
