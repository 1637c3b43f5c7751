"""Progress: plain lines every N % off a terminal (or under CI), a tqdm bar on one, silence for nested bars."""

from __future__ import annotations

import io

import pytest

from amlx.progress import Progress, quiet


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, total=20, every=25, **kw) -> list[str]:
    with Progress(total, "step", every=every, stream=stream, **kw) as bar:
        for _ in range(total):
            bar.update()
    return stream.getvalue().splitlines()


def test_off_a_terminal_one_line_each_time_another_every_percent_is_done():
    lines = run(io.StringIO())
    assert [line.split(" ")[2] for line in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert lines[0].startswith("[amlx] step: 5/20 (25%)") and "left" in lines[0] and "left" not in lines[-1]


def test_a_resumed_bar_says_where_it_resumed_and_counts_on_from_there():
    stream = io.StringIO()
    with Progress(10, "step", every=50, initial=5, stream=stream) as bar:
        for _ in range(5):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[amlx] step: resumed at 5/10" and lines[1].startswith("[amlx] step: 10/10 (100%)")
    assert len(lines) == 2


def test_on_a_terminal_a_redrawn_bar_unless_ci_is_set(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    drawn = Tty()
    run(drawn)
    assert "\r" in drawn.getvalue() and "[amlx]" not in drawn.getvalue()
    monkeypatch.setenv("CI", "true")
    assert len(run(Tty())) == 4


def test_a_bar_inside_another_prints_nothing_off_a_terminal():
    stream = io.StringIO()
    with Progress(2, "outer", every=50, stream=stream) as outer:
        for _ in range(2):
            run(stream, total=4, every=25)  # e.g. a method's bar inside the evaluate job's
            outer.update()
    assert stream.getvalue().splitlines() == [line for line in stream.getvalue().splitlines() if "outer" in line]
    assert len(stream.getvalue().splitlines()) == 2
    assert len(run(io.StringIO(), total=4)) == 4  # closed: the next bar is top-level again


def test_disabled_or_empty_bars_show_nothing():
    assert run(io.StringIO(), enabled=False) == [] and run(io.StringIO(), total=0) == []
    with quiet():  # a distributed job's rank > 0
        assert run(io.StringIO()) == [] and run(Tty()) == []
    assert len(run(io.StringIO())) == 4
    with pytest.raises(ValueError, match="every"):
        Progress(3, "x", every=0)


def test_a_method_that_optimizes_per_instance_reports_progress_over_its_examples(explained, capsys):
    from amlx import methods
    from tests.tiny import TEXTS

    methods.get("marc", steps=1, internal_batch_size=2).attribute(list(TEXTS), explained("bert", "encoder"))
    lines = [line for line in capsys.readouterr().err.split("\n") if line.startswith("[amlx] marc:")]
    assert [line.split(" ")[2] for line in lines] == ["2/3", "3/3"]
