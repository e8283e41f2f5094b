"""`sjfsched evaluate --compare --plot FILE`: the comparison's tables drawn as a PNG, with the mark
of each corpus's other answers; and the one-line refusals before any work."""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="--plot draws with matplotlib (the bench extra)")

from sjfsched._cli import main
from sjfsched.predictors._corpus import LengthRecord, load_records
from sjfsched.predictors._evaluate import (
    OTHER_ANSWERS_LABEL,
    Panel,
    compare,
    other_answers_accuracy,
    plot_compare,
)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _records(tmp_path: Path) -> list[LengthRecord]:
    """Two corpora; each prompt answered by two models, long prompts long, short ones short."""
    rows = [
        {"source": source, "prompt": f"{kind} {source} question {i}", "model": model, "output_tokens": tokens}
        for source in ("alpha", "beta")
        for i in range(40)
        for kind, tokens in (("Write a long essay on", 1200), ("Say yes or no to", 30))
        for model in ("m1", "m2")
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return load_records([path])


def test_other_answers_accuracy_needs_enough_answers_of_each_kind(tmp_path: Path) -> None:
    records = _records(tmp_path)
    assert other_answers_accuracy(records) == 1.0  # 160 short and 160 long answers, models agree
    assert other_answers_accuracy(records, at_least=161) != other_answers_accuracy(
        records, at_least=161
    )  # nan
    one_each = records[:8]  # too few short and long answers for the default 20
    assert math.isnan(other_answers_accuracy(one_each))


def _draw(
    records: list[LengthRecord], path: Path, *, loco: bool, methods: list[str]
) -> tuple[list[Panel], list[str]]:
    panels: list[Panel] = []
    compare(records, methods=methods, test_fraction=0.2, seed=0, loco=loco, min_long=1, panels=panels)
    return panels, plot_compare(path, panels, methods)


def test_a_panel_per_table_and_the_marks_are_the_other_answers(tmp_path: Path) -> None:
    records = _records(tmp_path)
    # beta's two models disagree on every prompt: its other answers rank every pair wrong
    flipped = {"m2": {30.0: 1200.0, 1200.0: 30.0}}
    records = [
        LengthRecord(r.prompt, flipped[r.model][r.output_tokens], r.prompt_id, r.source, r.model)
        if r.source == "beta" and r.model in flipped else r
        for r in records
    ]  # fmt: skip
    both, alone = tmp_path / "both.png", tmp_path / "alone.png"
    panels, labels = _draw(records, both, loco=True, methods=["length", "lexical"])
    _, alone_labels = _draw(records, alone, loco=False, methods=["length"])
    (w2, h2), (w1, h1) = _png_size(both), _png_size(alone)
    assert h1 == h2 and 1.9 < w2 / w1 < 2.1, ((w2, h2), (w1, h1))  # two panels side by side, one alone
    loco = panels[1][2]
    assert loco["alpha"] == 1.0 and loco["beta"] == 0.0, loco
    assert loco["beta"] == other_answers_accuracy([r for r in records if r.corpus == "beta"])
    assert labels == ["length", "lexical", OTHER_ANSWERS_LABEL] and alone_labels[:1] == ["length"]


def test_the_mark_is_in_the_legend_when_only_the_second_panel_has_marks(tmp_path: Path) -> None:
    records = _records(tmp_path)
    panels, _ = _draw(records, tmp_path / "p.png", loco=True, methods=["length"])
    first, second = panels[0][2], panels[1][2]
    for c in first:
        first[c] = math.nan  # as when the held-out part is too small to mark
    assert not math.isnan(second["alpha"])
    assert plot_compare(tmp_path / "p.png", panels, ["length"]) == ["length", OTHER_ANSWERS_LABEL]


def test_the_report_is_printed_before_the_plot_is_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sjfsched.predictors import _evaluate

    def disk_full(path: Path, panels: object, methods: object) -> list[str]:
        raise OSError(f"{path}: no space left on device")

    monkeypatch.setattr(_evaluate, "plot_compare", disk_full)
    data = tmp_path / "data.jsonl"
    _records(tmp_path)  # writes data.jsonl
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(data), "--compare", "--methods", "length", "--plot", str(tmp_path / "p.png")])
    assert exc.value.code == f"sjfsched evaluate: {tmp_path / 'p.png'}: no space left on device"
    assert "| alpha |" in capsys.readouterr().out  # the tables came out whole first


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--compare", "--plot", "{tmp}/d.png"],
            "--plot {tmp}/d.png: is a directory; give the PNG file to write",
        ),
        (
            ["--compare", "--plot", "{tmp}/x.pdf"],
            "--plot {tmp}/x.pdf: give a file name ending in .png (it writes a PNG)",
        ),
        (
            ["--compare", "--plot", "{tmp}/no/x.png"],
            "--plot {tmp}/no/x.png: no folder {tmp}/no to write it in",
        ),
    ],
)
def test_plot_options_are_refused_before_reading_data(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    (tmp_path / "d.png").mkdir()
    assert main(["evaluate", str(tmp_path / "nope.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"sjfsched evaluate: {message.replace('{tmp}', str(tmp_path))}\n"


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    argv = ["evaluate", str(tmp_path / "nope.jsonl"), "--compare", "--plot", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "sjfsched evaluate: not available (No module named 'matplotlib'); "
        "it needs its extra: pip install 'sjfsched[bench]'\n"
    )
    assert not (tmp_path / "x.png").exists()


def test_no_table_to_draw_still_writes_a_figure(tmp_path: Path) -> None:
    plot_compare(tmp_path / "none.png", [], ["length"])  # an empty legend once raised in matplotlib
    assert _png_size(tmp_path / "none.png")[0] > 0
