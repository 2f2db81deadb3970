"""The stage cache with stub stages (no model, no images): how a declared stage is keyed,
skipped, forced and re-run, and how a method routes flat options to its stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reidctl.pipeline import rundir
from reidctl.errors import ReidctlError
from reidctl.methods import get_method
from reidctl.methods.plan import route
from reidctl.pipeline.loop import STAGES, StageCall, artifact_digest
from reidctl.pipeline.rundir import RunDir, StageResult


def _writer(calls: list[str], text: str = "out"):
    def run(out: Path) -> dict:
        calls.append(out.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        return {"wrote": text}
    return run


def _call(calls: list[str], **kw) -> StageCall:
    base = dict(stage="cluster", folder="epoch_000", output="labels.json", run=_writer(calls),
                options={"eps": 0.5}, seed=1, inputs={"features": StageResult(Path("/x/f.h5"), "d1", {}, True)},
                reads={"data": "fp1"})
    base.update(kw)
    return StageCall(**base)


def _result(digest: str) -> StageResult:
    return StageResult(Path("/elsewhere/f.h5"), digest, {}, True)


def test_the_key_covers_options_seed_input_digests_reads_and_version(monkeypatch):
    calls: list[str] = []
    key = _call(calls).key()
    assert _call(calls, options={"eps": 0.6}).key() != key
    assert _call(calls, seed=2).key() != key
    assert _call(calls, inputs={"features": _result("d2")}).key() != key
    assert _call(calls, inputs={"features": None}).key() != key
    assert _call(calls, reads={"data": "fp2"}).key() != key
    assert _call(calls, stage="refine").key() != key
    monkeypatch.setattr(rundir, "__version__", "999")
    assert _call(calls).key() != key


def test_the_key_ignores_where_things_lie_and_how_they_run():
    calls: list[str] = []
    key = _call(calls).key()
    assert _call(calls, inputs={"features": _result("d1")}).key() == key  # same digest, another path
    assert _call(calls, folder="epoch_009", output="other.json", run=_writer(calls, "x")).key() == key
    assert _call(calls, group="prelude").key() == key


def _run(root: Path, call: StageCall, *, force_from: str | None = None, notices: list | None = None) -> StageResult:
    with RunDir(root, stages=STAGES, force_from=force_from, notice=None if notices is None else notices.append) as run:
        return run.stage(call.folder, call.stage, call.output, call.key(), call.run, artifact_digest, 0,
                         group=call.group)


def test_a_stub_stage_runs_once_then_comes_from_the_cache(tmp_path):
    calls: list[str] = []
    first = _run(tmp_path, _call(calls))
    again = _run(tmp_path, _call(calls))
    assert calls == ["labels.json"] and not first.cached and again.cached
    assert again.summary["wrote"] == "out" and again.digest == first.digest
    _run(tmp_path, _call(calls, seed=7))  # another key: runs again
    assert calls == ["labels.json"] * 2
    record = json.loads((tmp_path / "epoch_000" / "cluster.done.json").read_text())
    assert record["output"] == "epoch_000/labels.json"  # relative to the run folder


def test_force_from_reruns_a_stage_by_its_group(tmp_path):
    calls: list[str] = []
    call = _call(calls, stage="intra", folder="intra", group="prelude")
    _run(tmp_path, call)
    _run(tmp_path, call, force_from="extract")  # later than the prelude: cached
    assert len(calls) == 1
    _run(tmp_path, call, force_from="prelude")
    assert len(calls) == 2


def test_a_changed_output_is_noticed_and_the_stage_reruns(tmp_path):
    calls: list[str] = []
    _run(tmp_path, _call(calls))
    (tmp_path / "epoch_000" / "labels.json").write_text("edited by hand")
    notices: list[str] = []
    res = _run(tmp_path, _call(calls), notices=notices)
    assert len(calls) == 2 and not res.cached
    assert any("changed since the stage wrote it" in n for n in notices)
    assert (tmp_path / "epoch_000" / "labels.json").read_text() == "out"


def test_a_method_routes_flat_options_to_its_stages():
    routed = route(get_method("icrefine"),
                   {"eps": 0.4, "decay": "cosine", "iters": 3, "intra_epochs": 2, "intra": "s1.h5", "beta": None})
    assert routed.cluster == {"eps": 0.4} and routed.refine == {"decay": "cosine"}
    assert routed.train == {"iters": 3} and routed.preludes == {"intra": {"epochs": 2}}
    assert routed.given == {"intra": "s1.h5"}
    pplr = route(get_method("pplr"), {"k": 5, "beta": 0.3})
    assert pplr.refine == {"k": 5} and pplr.train == {"beta": 0.3}


@pytest.mark.parametrize(("method", "options", "message"), [
    ("cc", {"beta": 0.3}, r"^--beta does not apply to --method cc \(an option of pplr\)$"),
    ("cc", {"intra_epochs": 2}, r"^--intra-epochs does not apply to --method cc \(an option of icrefine\)$"),
    ("pplr", {"decay": "cosine", "k": 3}, r"^--decay does not apply to --method pplr \(an option of icrefine\)$"),
    ("icrefine", {"epoch": 3}, r"^--epoch does not apply to --method icrefine$"),  # the loop sets it
    ("cc", {"nonsense": 1}, r"^--nonsense does not apply to --method cc$"),
])
def test_options_of_another_stage_or_method_are_refused_by_name(method, options, message):
    with pytest.raises(ReidctlError, match=message):
        route(get_method(method), options)


def test_outside_the_loop_refine_takes_what_the_loop_supplies():
    routed = route(get_method("icrefine"), {"epoch": 3, "epochs": 10, "intra": "s1.h5"}, stage="refine")
    assert routed.refine == {"epoch": 3, "epochs": 10, "intra": "s1.h5"} and not routed.given


def test_a_stage_note_reaches_the_run_output_once(tmp_path):
    """A default the stage chose for the data's size (``knn_note`` when auto left exact search,
    ``jaccard_note`` for the bounded distances) is said when the stage runs, not when cached."""
    def run(out: Path) -> dict:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("x")
        return {"knn_note": "switched to faiss-hnsw", "jaccard_note": "kept ≤ 0.6", "clusters": 3}

    notices: list[str] = []
    _run(tmp_path, _call([], run=run), notices=notices)
    assert notices == ["kept ≤ 0.6", "switched to faiss-hnsw"]
    _run(tmp_path, _call([], run=run), notices=notices)  # from the cache: nothing new to say
    assert notices == ["kept ≤ 0.6", "switched to faiss-hnsw"]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["notice"] for e in log if "notice" in e] == ["kept ≤ 0.6", "switched to faiss-hnsw"]
