"""Pictures that explain themselves (issue 27): the rank sheet's title, legend and captions, the
worst-queries sheet's readable AP and first right match, the report's legends outside the data
and y axes that do not exaggerate small changes. Checked on what the code lays out and draws,
not by eye: the texts a sheet places, matplotlib's legend and axes boxes and y limits.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

import reidctl.stages.rank as rank_stage
from reidctl.artifacts import write_features
from reidctl.reporting.report import MIN_RELATIVE_SPAN, draw_figure, honest_ylim, read_run, read_runs
from reidctl.evaluation.sheet import FIRST_RIGHT_HEAD, QUERY_COLOUR, RIGHT_COLOUR, WRONG_COLOUR, cell_origin, sheet_size
from tests.clitools import run_ok
from tests.test_report import _cc_epoch, _eval, cc_run, mar_run, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

# Two queries against five gallery images on a circle (angle in degrees = where the feature points):
# query 0001 at 0° has its person at 40°, behind three others (first right match: rank 4, AP 1/4);
# query 0002 at 12° has its person nearest, at 10°.
QUERIES = [("query/0001_c1s1_000000_00.jpg", 1, 0, 0.0), ("query/0002_c1s1_000000_00.jpg", 2, 0, 12.0)]
GALLERY = [("bounding_box_test/0002_c2s1_000001_00.jpg", 2, 1, 10.0),
           ("bounding_box_test/0003_c2s1_000001_00.jpg", 3, 1, 20.0),
           ("bounding_box_test/0004_c2s1_000001_00.jpg", 4, 1, 30.0),
           ("bounding_box_test/0001_c2s1_000001_00.jpg", 1, 1, 40.0),
           ("bounding_box_test/0009_c2s1_000001_00.jpg", 9, 1, 90.0)]


@pytest.fixture
def circle(tmp_path):
    """The features file of :data:`QUERIES` and :data:`GALLERY`, its images on disk."""
    root = tmp_path / "data"
    rows = sorted([(*q, "query") for q in QUERIES] + [(*g, "gallery") for g in GALLERY])
    for rel, *_ in rows:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (120, 60, 30)).save(root / rel)
    angles = np.radians([r[3] for r in rows])
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    f = tmp_path / "test.h5"
    write_features(f, x, camids=np.array([r[2] for r in rows]), paths=[r[0] for r in rows],
                   split=[r[4] for r in rows], pids=np.array([r[1] for r in rows]),
                   params={"model": {"arch": "mobilenet_v2"}, "init": "weights:imagenet.pth", "epoch": 3},
                   attrs={"sources": {"data": str(root), "dataset": "t", "dataset_root": str(root)}})
    return f


@pytest.fixture
def drawn(monkeypatch):
    """Every sheet layout drawn, as the commands draw them."""
    layouts = []
    real = rank_stage.draw_sheet

    def spy(*args, **kwargs):
        layouts.append(real(*args, **kwargs))
        return layouts[-1]

    monkeypatch.setattr(rank_stage, "draw_sheet", spy)
    import reidctl.stages.evaluate as evaluation_stage

    monkeypatch.setattr(evaluation_stage, "draw_sheet", spy)
    return layouts


def _pixel(path, xy):
    with Image.open(path) as im:
        return im.convert("RGB").getpixel(xy)


# ------------------------------------------------------------------------------------ rank sheet


def test_rank_sheet_has_a_title_naming_model_data_and_cameras(tmp_path, circle, drawn):
    run_ok("rank", circle, circle, "--top-k", "3", "--cross-camera-only", "--sheet", tmp_path / "s.png")
    title = " ".join(drawn[0].strings()[:3])
    assert "2 of 2 queries against 5 gallery images" in title
    assert f"both from {circle}" in title  # the data: where the queries and the gallery came from
    assert "mobilenet_v2, weights:imagenet.pth (epoch 3)" in title  # the model the features record
    assert "other cameras only" in title
    run_ok("rank", circle, circle, "--top-k", "3", "--sheet", tmp_path / "all.png")
    assert "all cameras" in " ".join(drawn[1].strings()[:3])


def test_rank_sheet_has_a_colour_legend(tmp_path, circle, drawn):
    run_ok("rank", circle, circle, "--top-k", "3", "--sheet", tmp_path / "s.png")
    texts = drawn[0].strings()
    assert {"query", "same person as the query", "another person"} <= set(texts)
    assert "identity unknown" not in texts  # every identity is known here: no grey border to explain
    assert [s.colour for s in drawn[0].swatches] == [QUERY_COLOUR, RIGHT_COLOUR, WRONG_COLOUR]
    for s in drawn[0].swatches:  # each swatch is drawn in its colour
        assert _pixel(tmp_path / "s.png", (s.x + 5, s.y + 5)) == s.colour


def test_rank_sheet_captions_rank_distance_identity_and_file(tmp_path, circle, drawn):
    run_ok("rank", circle, circle, "--top-k", "3", "--sheet", tmp_path / "s.png", "--queries", "1")
    texts = drawn[0].strings()
    d = [2 - 2 * math.cos(math.radians(a)) for a in (10, 20, 30)]  # query 0001 at 0°: gallery at 10, 20, 30°
    assert [t for t in texts if t.startswith("#")] == [f"#{i + 1}   {d[i]:.3f}" for i in range(3)]
    assert "id 2, camid 1" in texts and "0002_c2s1_000001_00.jpg" in texts  # under the first match
    assert "id 1, camid 0" in texts and "0001_c1s1_000000_00.jpg" in texts  # under the query
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == drawn[0].size == sheet_size(1, 3)


# ------------------------------------------------------------------------------ worst-queries sheet


def test_worst_sheet_ap_reads_with_spaces(tmp_path, circle, drawn):
    run_ok("evaluate", circle, "--sheet", tmp_path / "w.png", "--queries", "1", "--top-k", "2")
    assert "AP 25.0 %" in drawn[0].strings()  # query 0001: one right match, at rank 4


def test_worst_sheet_shows_the_first_right_match_and_its_rank(tmp_path, circle, drawn):
    res = run_ok("evaluate", circle, "--sheet", tmp_path / "w.png", "--queries", "2", "--top-k", "2", "--json")
    sheet = json.loads(res.stdout)["sheet"]
    assert sheet["first_right_rank"] == [4, 1]  # 0001's person at 40°, behind 10, 20 and 30°; 0002's first
    layout = drawn[0]
    texts = layout.strings()
    assert FIRST_RIGHT_HEAD in texts
    assert f"#4   {2 - 2 * math.cos(math.radians(40)):.3f}" in texts  # beyond the top 2, with its rank
    tiles = [(p.x, p.y) for p in layout.tiles if p.tile.right]
    assert cell_origin(0, 2, first_right=True) in tiles and cell_origin(1, 2, first_right=True) in tiles
    x, y = cell_origin(0, 2, first_right=True)
    assert _pixel(tmp_path / "w.png", (x + 1, y + 1)) == RIGHT_COLOUR
    assert tuple(sheet["size"]) == layout.size == sheet_size(2, 2, first_right=True)


# ------------------------------------------------------------------------------------ report


def _drawn_figure(runs):
    fig = draw_figure(runs)
    fig.canvas.draw()  # lays out the constrained figure: the boxes below are final
    return fig


@pytest.mark.filterwarnings("error")  # "constrained_layout not applied": the panels would collapse
def test_report_legends_lie_outside_the_data(tmp_path):
    fig = _drawn_figure(read_runs([cc_run(tmp_path / "cc"), mar_run(tmp_path / "mar")]))  # MAR: empty series
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None, ax.get_title()
        box, data = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert not box.overlaps(data), (ax.get_title(), box, data)
        assert box.x0 >= data.x1  # to the right of its panel


def test_report_per_epoch_mean_legend_entry_has_its_line(tmp_path):
    """With per-iteration losses, the dashed "per-epoch mean" of the legend is drawn too: each
    epoch's mean loss as a level over its iterations."""
    fig = _drawn_figure([read_run(cc_run(tmp_path / "cc"))])  # epochs [3, 2.5, 2] and [1.5, 1]
    ax = fig.axes[3]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["per iteration", "per-epoch mean"]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert list(dashed[0].get_ydata()) == pytest.approx([2.5] * 3 + [1.25] * 2)


def test_report_y_axes_do_not_exaggerate_small_changes(tmp_path):
    epochs = [{"epoch": "init", "eval": _eval(0.30, 0.50)},
              _cc_epoch(0, steps=[2.42, 2.42, 2.42]), _cc_epoch(1, steps=[2.40, 2.40])]
    fig = _drawn_figure([read_run(write_run(tmp_path / "flat", epochs))])
    a, b, c, d = fig.axes
    assert d.get_ylim()[0] == 0 and d.get_ylim()[1] >= 2.42  # a 1 % change stays a 1 % change
    for ax in (a, b, c):  # percentages and counts start at 0
        assert ax.get_ylim()[0] == 0, ax.get_title()
    assert a.get_ylim()[1] >= 60  # rank-1 of epoch 1, 60 %, inside


def test_honest_ylim_keeps_a_minimum_span_around_negative_values():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    ax.plot([0, 1], [-2.42, -2.40])
    honest_ylim(ax, [-2.42, -2.40], zero=True)  # below 0: no zero floor, a minimum span instead
    lo, hi = ax.get_ylim()
    assert hi - lo == pytest.approx(MIN_RELATIVE_SPAN * 2.42) and lo < -2.42 and hi > -2.40
