"""Progress you can follow without a terminal (issue 26): plain lines at most every 10 % or 30 s
when stderr is not a terminal, the rich bar on one, ``--quiet``, and the run folder's log."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
import torch

from reidctl import progress
from reidctl.progress import Reporter, format_clock, format_line, format_rate, progress_bar
from reidctl.pipeline.rundir import RunDir
from tests.clitools import invoke, run_ok
from tests.fakedata import colour_market

LINE = re.compile(r"^(?P<step>[^:]+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\) ")
TINY = ["--data", "synthetic:tiny", "--arch", "resnet18", "--height", "64", "--width", "32", "--pretrained", "none",
        "--device", "cpu", "--workers", "0"]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _reporter(total: int, clock: Clock, step: str = "step", **kw) -> tuple[Reporter, list[str]]:
    lines: list[str] = []
    return Reporter(step, total, write=lines.append, clock=clock, **kw), lines


def _done(lines: list[str]) -> list[int]:
    return [int(LINE.match(line)["done"]) for line in lines]


# ------------------------------------------------------------------------------ the rate limit


def test_a_line_every_ten_percent_once_the_step_has_run_a_second():
    clock = Clock()
    rep, lines = _reporter(100, clock)
    for _ in range(100):
        clock.t += 0.5
        rep.advance(1)
    rep.close()
    assert _done(lines) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    # at 10/100 after 5 s: 2 it/s, 90 left → ETA 45 s
    assert lines[0] == "step: 10/100 (10%) 2.0 it/s, ETA 0:45"
    assert lines[-1] == "step: 100/100 (100%) 2.0 it/s, took 0:50"


def test_no_line_in_the_first_second():
    clock = Clock()
    rep, lines = _reporter(10, clock)
    for _ in range(5):
        clock.t += 0.1
        rep.advance(1)  # 10 % each, but only 0.5 s into the step
    assert lines == []
    clock.t += 0.6  # 1.1 s: the next advance is due again (50 % since the last line, which was none)
    rep.advance(1)
    assert _done(lines) == [6]
    for _ in range(4):
        rep.advance(1)
    rep.close()
    assert _done(lines) == [6, 7, 8, 9, 10]  # 10 % each; the close has nothing left to say


def test_a_short_step_stays_silent_even_at_its_end():
    clock = Clock()
    rep, lines = _reporter(4, clock)
    for _ in range(4):
        clock.t += 0.2
        rep.advance(1)
    rep.close()
    assert lines == []


def test_a_heartbeat_every_30_seconds_on_a_slow_step():
    clock = Clock()
    rep, lines = _reporter(1000, clock)
    for _ in range(10):  # one step every 10 s: 0.1 % each
        clock.t += 10
        rep.advance(1)
    assert _done(lines) == [3, 6, 9]  # at 30, 60 and 90 s
    # 3 steps in 30 s: 0.1 it/s shown as 10.0 s/it; 997 steps left at 10 s → 9970 s = 2:46:10
    assert lines[0] == "step: 3/1000 (0%) 10.0 s/it, ETA 2:46:10"


def test_the_ten_percent_rule_wins_when_it_comes_first():
    clock = Clock()
    rep, lines = _reporter(20, clock)
    clock.t += 5
    rep.advance(2)  # 10 % at 5 s
    clock.t += 20
    rep.advance(1)  # 5 % more, 20 s later: nothing due
    clock.t += 10
    rep.advance(1)  # 30 s since the last line: the heartbeat
    clock.t += 1
    rep.advance(2)  # 10 % since the heartbeat's line
    assert _done(lines) == [2, 4, 6]


def test_the_fast_reid_style_line_with_its_loss():
    clock = Clock()
    rep, lines = _reporter(200, clock, step="train epoch 3")
    clock.t += 21
    rep.advance(40, loss=3.4123)
    # 40 / 21 s = 1.905 it/s; 160 left / (40 / 21) = 84 s = 1:24
    assert lines == ["train epoch 3: 40/200 (20%) 1.9 it/s, ETA 1:24, loss 3.412"]
    event = rep.event(clock.t)
    assert event == {"step": "train epoch 3", "done": 40, "total": 200, "unit": "it", "rate": 1.905, "eta_s": 84.0,
                     "elapsed_s": 21.0, "loss": pytest.approx(3.4123)}


def test_the_loss_is_converted_only_when_a_line_is_due():
    clock = Clock()
    rep, lines = _reporter(100, clock)
    calls = []

    def loss():  # what the trainer passes: a function of its 0-d loss tensor on the device
        calls.append(1)
        return torch.tensor(2.25, dtype=torch.float64)

    for _ in range(9):
        clock.t += 0.5
        rep.advance(1, loss=loss)
    assert calls == [] and lines == []
    clock.t += 0.5
    rep.advance(1, loss=loss)  # 10 %
    assert len(calls) == 1 and lines[0].endswith(", loss 2.250")


def test_the_trainer_passes_the_mean_of_its_last_20_step_losses():
    from reidctl.train.trainer import _recent_loss

    per_step = torch.arange(1, 31, dtype=torch.float64)  # losses 1..30
    assert _recent_loss(per_step, 3)().item() == pytest.approx(2.0)  # mean of 1, 2, 3
    assert _recent_loss(per_step, 30)().item() == pytest.approx(20.5)  # mean of 11..30


def test_formats():
    assert format_clock(84.2) == "1:24" and format_clock(3723) == "1:02:03" and format_clock(0) == "0:00"
    assert format_rate(412.46, "img") == "412.5 img/s" and format_rate(0.25, "it") == "4.0 s/it"
    assert format_rate(None, "it") == "? it/s"
    line = format_line({"step": "kNN", "done": 7, "total": 9, "unit": "rows", "rate": 3.5, "eta_s": None,
                        "elapsed_s": 2.0})
    assert line == "kNN: 7/9 (77%) 3.5 rows/s"


# --------------------------------------------------------------------- progress_bar on stderr


@pytest.fixture
def no_grace(monkeypatch):
    """Lines from the first 10 % on, however fast the step (tests run short steps)."""
    monkeypatch.setattr(progress, "GRACE_S", 0.0)


def test_piped_stderr_gets_plain_lines_and_stdout_nothing(no_grace, capsys):
    with progress_bar("extract train", 50, unit="img") as advance:
        for _ in range(50):
            advance(1)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert _done(lines) == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert all(re.match(r"extract train: \d+/50 \(\d+%\) (\?|[\d.]+) (img/s|s/img)", line) for line in lines), lines
    assert lines[-1].startswith("extract train: 50/50 (100%)") and ", took " in lines[-1]


def test_work_without_progress_lines_gets_a_heartbeat(monkeypatch, capsys):
    """A log never goes quiet for longer than HEARTBEAT_S while an activity (a loop stage, a
    command) runs, even inside work that has no progress of its own (DBSCAN, a slow step)."""
    import time

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.2)
    with progress.activity("loop"), progress.activity("cluster (epoch 3)"):
        time.sleep(0.9)
    with progress.activity("extract"):
        pass  # shorter than the heartbeat: nothing
    with progress.quiet(), progress.activity("quiet work"):
        time.sleep(0.5)
    out, err = capsys.readouterr()
    beats = err.splitlines()
    assert out == "" and 2 <= len(beats) <= 5, beats
    assert all(re.fullmatch(r"cluster \(epoch 3\): still running, 0:0[01] so far", b) for b in beats), beats


def test_quiet_prints_nothing_but_the_sinks_still_hear(no_grace, capsys):
    events = []
    with progress.quiet(), progress.sink(events.append):
        with progress_bar("train epoch 0", 10) as advance:
            for _ in range(10):
                advance(1, loss=1.5)
        progress.report("pretrain epoch 0: loss 1.500", {"step": "pretrain", "done": 1, "total": 2})
    assert not progress.is_quiet()  # restored after the block
    assert capsys.readouterr() == ("", "")
    assert [e["done"] for e in events if e["step"] == "train epoch 0"] == list(range(1, 11))
    assert events[0]["loss"] == 1.5 and events[-1] == {"step": "pretrain", "done": 1, "total": 2}


def test_a_terminal_keeps_the_rich_bar_and_gets_no_plain_lines(no_grace, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bars = []

    class FakeBar:  # stands for rich's Progress: records what the bar was told
        def __init__(self, *columns, **kw):
            self.advanced, self.tasks = 0, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def add_task(self, description, total):
            self.tasks.append((description, total))
            return 0

        def advance(self, task, n):
            self.advanced += n

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "Progress", FakeBar)
    events = []
    with progress_bar("extract test", 20, unit="img") as advance:
        for _ in range(20):
            advance(1)
    with progress.sink(events.append), progress_bar("kNN", 10) as advance:  # a run folder's log, on a terminal
        for _ in range(10):
            advance(1)
    assert [b.tasks for b in bars] == [[("extract test", 20)], [("kNN", 10)]]
    assert [b.advanced for b in bars] == [20, 10]
    assert terminal.getvalue() == ""  # the fake bar drew nothing, and no plain line was written
    assert [e["done"] for e in events] == list(range(1, 11))
    with progress.quiet(), progress_bar("extract test", 20) as advance:
        advance(20)
    assert len(bars) == 2  # --quiet: no bar either


def test_under_torchrun_only_rank_0_reports(no_grace, monkeypatch, capsys):
    events = []
    monkeypatch.setenv("RANK", "1")
    with progress.sink(events.append):
        with progress_bar("train epoch 0", 4) as advance:
            for _ in range(4):
                advance(1)
        progress.report("pretrain epoch 0: loss 1.000", {"step": "pretrain"})
    assert capsys.readouterr().err == "" and events == []
    monkeypatch.setenv("RANK", "0")
    with progress_bar("train epoch 0", 4) as advance:
        advance(4)
    assert capsys.readouterr().err.startswith("train epoch 0: 4/4 (100%)")


def test_a_failed_step_writes_no_final_line(no_grace, capsys, monkeypatch):
    monkeypatch.setattr(progress, "EVERY", 0.5)
    with pytest.raises(RuntimeError, match="boom"):
        with progress_bar("extract train", 10) as advance:
            advance(3)
            raise RuntimeError("boom")
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------ run folder log


def test_a_run_folder_logs_the_progress_of_its_stages(no_grace, tmp_path, capsys):
    def stage(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with progress_bar("train epoch 0", 4) as advance:
            for _ in range(4):
                advance(1, loss=2.0)
        progress.report("pretrain epoch 0: loss 2.000", {"step": "pretrain", "epoch": 0, "done": 1, "total": 1})
        out.write_text("x")
        return {"ok": 1}

    with RunDir(tmp_path / "run", stages=("train",)) as run:
        run.stage("epoch_000", "train", "out.txt", "key", stage, lambda p: "d", 0)
        run.stage("epoch_000", "train", "out.txt", "key", stage, lambda p: "d", 0)  # cached: no progress
        with progress_bar("outside a stage", 2) as advance:
            advance(2)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    prog = [r for r in records if "progress" in r]
    assert [(r["epoch"], r["stage"], r["progress"]["step"], r["progress"]["done"]) for r in prog] == [
        (0, "train", "train epoch 0", 1), (0, "train", "train epoch 0", 2), (0, "train", "train epoch 0", 3),
        (0, "train", "train epoch 0", 4), (0, "train", "pretrain", 1)]
    assert prog[0]["progress"]["loss"] == 2.0 and "time" in prog[0]
    assert {"rate", "eta_s", "elapsed_s", "unit", "total"} <= set(prog[0]["progress"])
    assert [r["cached"] for r in records if "cached" in r] == [False, True]
    assert "outside a stage: 2/2 (100%)" in capsys.readouterr().err  # printed, not logged


# ------------------------------------------------------------------------------------- CLI


def test_piped_extract_prints_progress_lines_and_quiet_silences_them(no_grace, tmp_path):
    args = ["extract", *TINY, "--split", "query", "--batch-size", "2", "--out", tmp_path / "q.h5"]
    result = invoke(*args)
    assert result.exception is None and result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if LINE.match(line)]
    assert lines and all(line.startswith("extract query: ") for line in lines), result.stderr
    total = int(LINE.match(lines[0])["total"])
    assert _done(lines)[-1] == total and re.search(r" (img/s|s/img)", lines[0])
    assert result.stdout == ""  # progress never goes to stdout
    quiet = invoke(*args[:-1], tmp_path / "q2.h5", "--quiet")
    assert quiet.exception is None and quiet.exit_code == 0, quiet.output
    assert not [line for line in quiet.stderr.splitlines() if LINE.match(line)], quiet.stderr
    assert f"wrote {total} × 512 features (query)" in quiet.stderr  # the result is still said


@pytest.mark.slow
def test_pretrain_prints_a_line_per_epoch(tmp_path):
    source = colour_market(tmp_path / "source", train_ids=6, test_ids=2, per_camera=2)
    args = ["pretrain", "--data", source, "--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width",
            "32", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
    result = run_ok(*args, "--epochs", "2", "--out", tmp_path / "a.pt")
    epochs = [line for line in result.stderr.splitlines() if re.match(r"pretrain epoch \d+: loss", line)]
    assert len(epochs) == 2, result.stderr
    pattern = r"pretrain epoch {}: loss \d+\.\d{{3}}, accuracy \d+\.\d%, lr [\d.e-]+, \d+\.\d s; {}/2 epochs done"
    assert re.fullmatch(pattern.format(0, 1) + r", ETA \d+:\d\d", epochs[0]), epochs
    assert re.fullmatch(pattern.format(1, 2), epochs[1]), epochs
    quiet = run_ok(*args, "--epochs", "1", "--out", tmp_path / "b.pt", "-q")
    assert "pretrain epoch" not in quiet.stderr and "identities" in quiet.stdout  # the table stays


@pytest.mark.slow
def test_piped_loop_prints_progress_and_logs_it_in_the_run_folder(no_grace, tmp_path):
    data = colour_market(tmp_path / "market", train_ids=6, test_ids=3)
    run_dir = tmp_path / "run"
    result = run_ok("loop", "--data", data, "--run-dir", run_dir, "--epochs", "1", "--pretrained", "none",
                    "--arch", "resnet18", "--height", "64", "--width", "32", "--k1", "6", "--k2", "2", "--eps", "0.5",
                    "--min-samples", "3", "--iters", "2", "--batch-size", "8", "--num-instances", "4",
                    "--eval-every", "0", "--workers", "0", "--device", "cpu")
    shown = [line for line in result.stderr.splitlines() if LINE.match(line)]
    assert any(re.match(r"train epoch 0: 2/2 \(100%\) .*, took \d+:\d\d, loss \d+\.\d{3}$", line) for line in shown), \
        result.stderr
    assert any(line.startswith("extract train: ") for line in shown)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    prog = [r for r in records if "progress" in r]
    train = [r for r in prog if r["stage"] == "train"]
    assert train and train[-1]["epoch"] == 0 and train[-1]["progress"]["step"] == "train epoch 0"
    assert train[-1]["progress"]["done"] == train[-1]["progress"]["total"] == 2
    assert isinstance(train[-1]["progress"]["loss"], float) and train[-1]["progress"]["eta_s"] == 0.0
    assert {r["stage"] for r in prog} >= {"extract", "train"}
    # every line shown on stderr is in the log, in order
    assert [format_line(r["progress"]) for r in prog] == shown
