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
from sjfsched.predictors._evaluate import compare, other_answers_accuracy


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


def test_compare_draws_a_panel_per_table(tmp_path: Path) -> None:
    records = _records(tmp_path)
    seen: list[str] = []
    both, alone = tmp_path / "both.png", tmp_path / "alone.png"
    compare(records, methods=["length", "lexical"], test_fraction=0.2, seed=0, loco=True, min_long=1,
            log=seen.append, plot=both)  # fmt: skip
    compare(records, methods=["length"], test_fraction=0.2, seed=0, loco=False, plot=alone)
    (w2, h2), (w1, h1) = _png_size(both), _png_size(alone)
    assert h1 == h2 and 1.9 < w2 / w1 < 2.1, ((w2, h2), (w1, h1))  # two panels side by side, one alone
    assert f"wrote {both}" in seen


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plot", "x.png"], "--plot is for --compare"),
        (["--calibration", "--plot", "x.png"], "--plot is for --compare, not --calibration"),
        (["--compare", "--plot", "{tmp}"], "--plot {tmp}: is a directory; give the PNG file to write"),
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
    assert main(["evaluate", str(tmp_path / "nope.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"sjfsched evaluate: {message.replace('{tmp}', str(tmp_path))}\n"


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    argv = ["evaluate", str(tmp_path / "nope.jsonl"), "--compare", "--plot", str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "sjfsched evaluate: --plot needs matplotlib (No module named 'matplotlib'): "
        "pip install 'sjfsched[bench]'\n"
    )
    assert not (tmp_path / "x.png").exists()


def test_no_table_to_draw_still_writes_a_figure(tmp_path: Path) -> None:
    from sjfsched.predictors._evaluate import plot_compare

    plot_compare(tmp_path / "none.png", [], ["length"])  # an empty legend once raised in matplotlib
    assert _png_size(tmp_path / "none.png")[0] > 0
