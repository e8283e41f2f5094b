"""LexicalPredictor: the bundled model, real ONNX inference, bad model files."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sjfsched import Prediction, PredictorError, Request, Scheduler
from sjfsched.predictors import HeuristicPredictor, LexicalPredictor, _default, _lexical, default_predictor
from sjfsched.predictors._features import HEAD_CHARS, SIGNALS, TAIL_CHARS, LexicalFeaturizer, _prompt_parts
from sjfsched.predictors._lexical import bundled_model_has_vectors, bundled_model_path

SHORT_ASKS = [
    "What is 2+2?",
    "Translate 'good morning' into French.",
    "Is Paris the capital of France? Answer yes or no.",
    "What year did World War II end?",
    "Give me a synonym for happy.",
]
LONG_ASKS = [
    "Write a detailed 2000-word essay on the causes and consequences of the French Revolution.",
    "Write a complete Python web application with Flask: user login, a database, templates and tests.",
    "Write a long story about a dragon who learns to fly, with at least five chapters.",
    "Explain in detail how transformers work, with equations, examples and code.",
    "Create a comprehensive 12-week marketing plan for a new coffee shop, week by week.",
]


@pytest.fixture(scope="module")
def predictor() -> LexicalPredictor:
    return LexicalPredictor(calibrate=False)


def test_bundled_model_is_small_and_in_the_package() -> None:
    path = bundled_model_path()
    assert path.is_file()
    assert path.stat().st_size < 5_000_000
    assert path.parent.name == "data" and path.parent.parent.name == "sjfsched"


def test_bundled_model_follows_the_data_policy(predictor: LexicalPredictor) -> None:
    """Trained on the permissive sources and ShareGPT: never Alpaca (non-commercial) or CNN/DailyMail."""
    from sjfsched.predictors._licenses import BUNDLED_SOURCES

    sources = json.loads(predictor.metadata["sjfsched.trained_on"])
    assert sources and set(sources) <= set(BUNDLED_SOURCES)
    assert not [s for s in sources if "alpaca" in s.lower() or "cnn" in s.lower()]


def _demo_trace() -> list[dict[str, object]]:
    text = (bundled_model_path().parent / "demo_trace.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_bundled_model_never_saw_the_demo_prompts(predictor: LexicalPredictor) -> None:
    """`sjfsched demo` replays prompts the bundled model was not trained on, and it still ranks them."""
    from sjfsched.predictors._corpus import prompt_id_of
    from sjfsched.predictors._evaluate import ranking_accuracy

    trace = _demo_trace()
    held_out = set(json.loads(predictor.metadata["sjfsched.holdout_prompts"]))
    assert {prompt_id_of(str(r["prompt"])) for r in trace} <= held_out
    assert len(trace) == 120
    tokens = np.array([float(r["output_tokens"]) for r in trace])  # type: ignore[arg-type]
    scores = predictor.scores([str(r["prompt"]) for r in trace])
    length = np.array([float(len(str(r["prompt"]))) for r in trace])
    ours = ranking_accuracy(scores, tokens)
    assert ours > 0.7
    assert ours > ranking_accuracy(length, tokens) + 0.05


def test_ranks_obvious_long_asks_above_obvious_short_ones(predictor: LexicalPredictor) -> None:
    short = [predictor.predict(Request(p)) for p in SHORT_ASKS]
    long = [predictor.predict(Request(p)) for p in LONG_ASKS]
    assert max(p.tokens for p in short) < min(p.tokens for p in long)
    assert max(p.p_long for p in short if p.p_long is not None) < min(
        p.p_long for p in long if p.p_long is not None
    )


def test_requested_quantity_matters(predictor: LexicalPredictor) -> None:
    few = predictor.predict(Request("Write a poem about the sea in 20 words."))
    many = predictor.predict(Request("Write a poem about the sea in 2000 words."))
    assert many.tokens > few.tokens


@pytest.mark.parametrize("calibrated", [False, True])
def test_predict_many_matches_predict(calibrated: bool) -> None:
    predictor = LexicalPredictor()
    if calibrated:  # a calibration that has moved away from the identity map
        for text, tokens in [(a, 5) for a in SHORT_ASKS] + [(a, 3000) for a in LONG_ASKS]:
            request = Request(text)
            predictor.observe(request, predictor.predict(request), tokens)
        assert predictor.calibration.slope != 1.0
    texts = [*SHORT_ASKS, *LONG_ASKS, "", "a", "ab", "abc", "日本語の文章です。" * 50, "x" * 5000, "\x00\xff"]
    requests = [Request(t) for t in texts]
    assert len(requests) > _lexical._SMALL_BATCH  # encoded as one batch
    for batch in (requests, requests[:3], requests[:1], []):  # small ones are predicted one by one
        many = predictor.predict_many(batch)
        for request, prediction in zip(batch, many, strict=True):
            single = predictor.predict(request)
            assert prediction.tokens == pytest.approx(single.tokens, rel=1e-5)
            assert prediction.p_long == pytest.approx(single.p_long, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("adapt", [True, False])
@pytest.mark.parametrize("size", [3, 12])
def test_predict_many_takes_any_iterable(adapt: bool, size: int) -> None:
    """A generator was scored, then sliced (a TypeError) when scores were remembered (adapt=False)."""
    predictor = LexicalPredictor(adapt=adapt)
    requests = [Request(t) for t in [*SHORT_ASKS, *LONG_ASKS, "a", "b"][:size]]
    from_generator = predictor.predict_many(r for r in requests)
    assert from_generator == predictor.predict_many(requests)
    assert len(from_generator) == size


def test_cost_is_bounded_by_the_read_window(predictor: LexicalPredictor) -> None:
    """A 1 MB prompt is read as a head and a tail, so it costs what a short one does."""
    features = predictor._features
    huge = "lorem ipsum dolor sit amet, " * 40_000 + "Summarise the text above."
    raw, words, _ = _prompt_parts(huge)
    assert len(raw) == HEAD_CHARS + TAIL_CHARS + 1
    assert words[-4:] == [b"summarise", b"the", b"text", b"above"]  # the tail is read
    ids, values = features.encode(huge)
    assert len(ids) == len(values) < 2 * (HEAD_CHARS + TAIL_CHARS)
    bounded = features.encode(huge[:HEAD_CHARS] + "\n" + huge[-TAIL_CHARS:])
    assert ids.tolist() == bounded[0].tolist()


def test_non_english_prompts_are_not_all_alike(predictor: LexicalPredictor) -> None:
    scores = {
        predictor.score(t)
        for t in (
            "请写一篇关于人工智能对未来教育影响的详细文章，至少一千字。",
            "你好",
            "Напиши подробное эссе о русской литературе XIX века.",
            "Привет",
            "😀🎉🔥",
        )
    }
    assert len(scores) == 5


def test_batch_byte_hashing_matches_one_by_one() -> None:
    f = LexicalFeaturizer(["a"], [], 12)
    raws = [b"", b"a", b"ab", b"abc", b"abcd", b"hello world", "日本".encode(), b""]
    ids, counts = f.byte_ids_many(raws)
    expected = [f.byte_ids(t) for t in raws]
    assert counts.tolist() == [len(e) for e in expected]
    assert ids.tolist() == np.concatenate(expected).tolist()
    assert (ids >= 0).all() and (ids < 1 << 12).all()


def _assert_batch_matches_one_by_one(features: LexicalFeaturizer, texts: list[str]) -> None:
    ids, values, segments = features.encode_many(texts)
    for i, text in enumerate(texts):
        one_ids, one_values = features.encode(text)
        mine = segments == i
        assert sorted(zip(ids[mine].tolist(), values[mine].tolist(), strict=True)) == sorted(
            zip(one_ids.tolist(), one_values.tolist(), strict=True)
        )


def test_encode_many_matches_encode(predictor: LexicalPredictor) -> None:
    texts = ["", "Write 500 words\nabout cats", "x" * 3000, "日本語", "a b c d e f"]
    _assert_batch_matches_one_by_one(predictor._features, texts)


_PIECES = [
    "Write", " 500", " words", "1,000", " 3-paragraph", "examples", " 10 ", "\n", "def f(x):", " = ", ";",
    "{", "日本語", "😀", "?", " ", "word", "0", "steps", "abc12 items", "\x00", "\ud800", "x" * 700,
]  # fmt: skip


@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join), max_size=8))
@settings(max_examples=150, deadline=None)
def test_batch_encoding_matches_one_by_one(texts: list[str]) -> None:
    """encode_batch (one pass over all texts) gives each text the rows and values encode gives it."""
    with_units = LexicalFeaturizer(["words", "write", "10", "examples", "日本語"], [(1, 0)], 12)
    assert with_units._unit_rows is None  # not every unit word has a row: the slower lookup
    learnt = LexicalFeaturizer.learn(["write 500 words", "10 examples please"], byte_bits=12, min_count=1)
    assert learnt._unit_rows is not None  # learn gives every unit word a row: found by row
    # with word-vector rows (a second row per word), with and without pairs
    vectors = LexicalFeaturizer.learn(
        ["write 500 words"], byte_bits=12, vector_words=["steps", "日本語", "word"]
    )
    paired = LexicalFeaturizer.learn(
        ["write 500 words", "write 500 words"], byte_bits=12, max_bigrams=5, vector_words=["steps", "abc12"]
    )
    assert vectors.vector_rows and paired.vector_rows and paired.bigrams
    for features in (with_units, learnt, vectors, paired):
        _assert_batch_matches_one_by_one(features, texts)


def test_word_vector_rows() -> None:
    """Vector words join the vocabulary; each known word adds its row shifted, valued 1/#words."""
    f = LexicalFeaturizer.learn(
        ["write a poem", "write a story", "a poem"],
        byte_bits=8,
        min_count=2,
        max_bigrams=10,
        vector_words=["novel", "poem", "stanza"],
    )
    assert f.vector_rows
    assert {"novel", "poem", "stanza", "write", "a"} <= set(f.unigrams)
    assert "story" not in f.unigrams  # one prompt only: not learnt, and no vector
    words = [f.unigrams[i] for pair in f.bigrams for i in pair]
    assert "novel" not in words and ("write", "a") in [(f.unigrams[i], f.unigrams[j]) for i, j in f.bigrams]
    assert f.table_size == f.vector_offset + len(f.unigrams)
    ids, values = f.encode("Write a novel, a NOVEL!")
    row = {w: f.word_offset + i for i, w in enumerate(f.unigrams)}
    word_rows = [row[w] for w in ("write", "a", "novel", "a", "novel")]
    vector_rows = [r - f.word_offset + f.vector_offset for r in word_rows]
    found = ids[values == np.float32(1 / 5)].tolist()
    assert found == vector_rows  # every occurrence, each 1/5: the words' mean
    assert all(r in ids.tolist() for r in word_rows)
    plain = LexicalFeaturizer(f.unigrams, f.bigrams, f.byte_bits)
    plain_ids, _ = plain.encode("Write a novel, a NOVEL!")
    assert not plain.vector_rows and len(ids) == len(plain_ids) + 5
    assert (f.encode("")[0] < f.vector_offset).all()  # no words, no vector rows


def _signal_names(text: str) -> list[str]:
    return [SIGNALS[k] for k in _prompt_parts(text)[2]]


def test_signals() -> None:
    assert _signal_names("Write 500 words about cats") == ["newlines0", "code0", "quantity-w9"]  # 9 bits
    assert _signal_names("List 10 examples of birds") == ["newlines0", "code0", "quantity-n4"]
    assert _signal_names("Is it raining?\nOr not?") == ["newlines1", "code0"]
    assert _signal_names("a 3-paragraph essay, 1,000 words") == ["newlines0", "code0", "quantity-p2"]
    assert _signal_names("write 1,000 words") == ["newlines0", "code0", "quantity-w10"]
    assert _signal_names("x = f(y);\ny = {}\n") == ["newlines2", "code3"]


# ------------------------------------------------------------------ the default


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": -500}, "base must be a finite number >= 0, got -500"),
        ({"cap": math.nan}, "cap must be a finite number > 0, got nan"),
        ({"cap": 0}, "cap must be a finite number > 0, got 0"),
        ({"per_prompt_token": "0.5"}, "per_prompt_token must be a finite number >= 0, got '0.5'"),
        ({"base": True}, "base must be a finite number >= 0, got True"),
    ],
)
def test_heuristic_predictor_refuses_bad_parameters_by_name(kwargs: dict[str, object], message: str) -> None:
    """They failed inside predict(), which the scheduler survives with a neutral estimate: a misorder."""
    with pytest.raises(ValueError, match=re.escape(f"HeuristicPredictor.{message}")):
        HeuristicPredictor(**kwargs)  # type: ignore[arg-type]


def test_scheduler_default_is_the_lexical_predictor() -> None:
    before = _default.default_predictor_fallbacks()
    assert isinstance(default_predictor(), LexicalPredictor)
    assert isinstance(Scheduler().predictor, LexicalPredictor)
    assert _default.default_predictor_fallbacks() == before


def test_default_falls_back_to_heuristic_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_lexical, "bundled_model_path", lambda: tmp_path / "gone.onnx")
    before = _default.default_predictor_fallbacks()
    with caplog.at_level(logging.WARNING, logger="sjfsched"):
        predictor = default_predictor()
    assert isinstance(predictor, HeuristicPredictor)
    assert _default.default_predictor_fallbacks() == before + 1
    assert "gone.onnx" in caplog.text and "HeuristicPredictor" in caplog.text


# ------------------------------------------------------------------- bad files


def test_missing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(PredictorError, match=r"nope\.onnx: model file not found") as missing:
        LexicalPredictor(path)
    assert isinstance(missing.value.__cause__, FileNotFoundError)  # the original kept, as at every boundary


def test_corrupt_model_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(PredictorError, match=r"junk\.onnx: not a valid ONNX model"):
        LexicalPredictor(path)


def test_truncated_model_file(tmp_path: Path) -> None:
    path = tmp_path / "half.onnx"
    data = bundled_model_path().read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PredictorError, match=r"half\.onnx"):
        LexicalPredictor(path)


def test_a_model_cut_at_the_end_of_a_metadata_entry_is_refused(tmp_path: Path) -> None:
    """Cut where an entry ends, the file still parses, without the last entries (the target's map)."""
    model = onnx.load(str(bundled_model_path()))
    props = list(model.metadata_props)
    sizes = []
    for keep in (len(props) - 2, len(props) - 4):  # from sjfsched.trained_on on; from sjfsched.target on
        del model.metadata_props[:]
        model.metadata_props.extend(props[:keep])
        path = tmp_path / f"cut{keep}.onnx"
        path.write_bytes(model.SerializeToString())
        sizes.append(path.stat().st_size)
        lost = {p.key for p in props[keep:]} & {"sjfsched.target", "sjfsched.trained_on"}
        assert lost, "the test cuts off an entry the loader needs"
        with pytest.raises(PredictorError, match=rf"cut{keep}\.onnx: model metadata lacks .*cut short"):
            LexicalPredictor(path)
    cut = (tmp_path / f"cut{len(props) - 2}.onnx").read_bytes()
    assert bundled_model_path().read_bytes()[: sizes[0]] == cut  # the bundled file, cut short


def test_a_model_path_that_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)  # reading it would wait for a writer for ever
    for path in (tmp_path, fifo, Path("/dev/zero")):  # /dev/zero would fill memory
        with pytest.raises(PredictorError, match=re.escape(f"{path}: not a regular file")):
            LexicalPredictor(path)
    with pytest.raises(PredictorError, match=r"pipe\.onnx: cannot load calibration \(not a regular file\)"):
        LexicalPredictor(calibration_path=fifo)


def test_a_model_with_a_weight_that_is_not_finite_is_refused_when_loaded(tmp_path: Path) -> None:
    model = onnx.load(str(bundled_model_path()))
    (table,) = [t for t in model.graph.initializer if t.name == "weights"]
    weights = onnx.numpy_helper.to_array(table).copy()
    row = int(LexicalPredictor(calibrate=False)._features.encode("A short poem about the sea.")[0][5])
    weights.flat[row] = np.nan  # one weight of one row a common prompt uses, say a flipped word
    table.CopyFrom(onnx.numpy_helper.from_array(weights, "weights"))
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    with pytest.raises(
        PredictorError, match=rf"nan\.onnx: 1 of the model's \d+ weights are not finite \(row {row}\)"
    ):
        LexicalPredictor(path)


def test_a_model_whose_inputs_take_one_row_is_refused_when_loaded(tmp_path: Path) -> None:
    model = onnx.load(str(bundled_model_path()))
    for tensor in model.graph.input:  # the right names and types, but a fixed length of 1
        dim = tensor.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(PredictorError, match=r"fixed\.onnx: model does not run"):
        LexicalPredictor(path)


def test_the_bundled_model_gathers_with_gather_elements() -> None:
    """onnxruntime's GatherElements kernel is several times quicker per row than Gather's."""
    ops = [node.op_type for node in onnx.load(str(bundled_model_path())).graph.node]
    assert ops[0] == "GatherElements" and "Gather" not in ops


def test_a_model_written_with_gather_predicts_as_the_bundled_one(tmp_path: Path) -> None:
    """Models trained before the graph used GatherElements (the same on one axis) still load, and agree."""
    model = onnx.load(str(bundled_model_path()))
    (node,) = [n for n in model.graph.node if n.op_type == "GatherElements"]
    node.op_type = "Gather"
    path = tmp_path / "gather.onnx"
    onnx.save(model, str(path))
    old, new = LexicalPredictor(path, calibrate=False), LexicalPredictor(calibrate=False)
    requests = [Request(t) for t in [*SHORT_ASKS, *LONG_ASKS, "", "日本語" * 400, "x" * 100_000]]
    assert [old.predict(r) for r in requests] == [new.predict(r) for r in requests]
    assert old.predict_many(requests) == new.predict_many(requests)


def _edited(tmp_path: Path, name: str, props: dict[str, str], drop: tuple[str, ...] = ()) -> Path:
    """The bundled model with metadata keys ``drop`` removed and ``props`` set."""
    model = onnx.load(str(bundled_model_path()))
    meta = {p.key: p.value for p in model.metadata_props if p.key not in drop}
    meta.update(props)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_model_of_another_kind(tmp_path: Path) -> None:
    path = _edited(tmp_path, "other.onnx", {"sjfsched.kind": "clairvoyant"})
    with pytest.raises(PredictorError, match=r"other\.onnx: not a sjfsched lexical model"):
        LexicalPredictor(path)


def test_model_from_another_feature_version(tmp_path: Path) -> None:
    path = _edited(tmp_path, "old.onnx", {"sjfsched.feature_version": "999"})
    with pytest.raises(PredictorError, match=r"old\.onnx: model was trained with feature version 999"):
        LexicalPredictor(path)


def test_model_whose_table_does_not_fit_its_vocabulary(tmp_path: Path) -> None:
    meta = LexicalPredictor().metadata
    size = int(meta["sjfsched.table_size"])
    path = _edited(tmp_path, "short.onnx", {"sjfsched.table_size": str(size + 1)})
    with pytest.raises(PredictorError, match=r"short\.onnx: weight table has"):
        LexicalPredictor(path)


def test_model_with_pooled_words_of_an_earlier_version_is_refused(tmp_path: Path) -> None:
    """Word vectors were folded in as a second vocabulary before: such a file says to retrain."""
    path = _edited(tmp_path, "pooled.onnx", {"sjfsched.pooled_words": '["novel"]'})
    with pytest.raises(PredictorError, match=r"pooled\.onnx: .*pooled words.*sjfsched train --word-vectors"):
        LexicalPredictor(path)


@pytest.mark.parametrize("raw", ['"yes"', "1", "[", "null"])
def test_malformed_vector_rows_flag(tmp_path: Path, raw: str) -> None:
    path = _edited(tmp_path, "flag.onnx", {"sjfsched.vector_rows": raw})
    with pytest.raises(PredictorError, match=r"flag\.onnx: model (vocabulary )?metadata is"):
        LexicalPredictor(path)


def test_vector_rows_flag_that_does_not_fit_the_table(tmp_path: Path) -> None:
    """A model's vector rows flag says how large its table is: the wrong one does not fit it."""
    assert bundled_model_has_vectors()  # the bundled model folds word vectors in
    path = _edited(tmp_path, "flagged.onnx", {"sjfsched.vector_rows": "false"})
    with pytest.raises(PredictorError, match=r"flagged\.onnx: weight table has"):
        LexicalPredictor(path)


def test_malformed_target_map(tmp_path: Path) -> None:
    for name, raw in (
        ("notjson.onnx", "{"),
        ("nokeys.onnx", '{"xs": [1, 2]}'),
        ("decreasing.onnx", '{"log_tokens": [5, 4], "score": [1, 2]}'),
    ):
        path = _edited(tmp_path, name, {"sjfsched.target_map": raw})
        with pytest.raises(PredictorError, match=rf"{name.replace('.', '[.]')}: model's sjfsched.target_map"):
            LexicalPredictor(path)


def test_model_without_target_map_reads_its_clip_range(tmp_path: Path) -> None:
    """A model written before sjfsched.target_map existed states only its clip range, in words."""
    target = "mean over answering models of log(1 + output_tokens clipped to [154, 1652])"
    path = _edited(tmp_path, "older.onnx", {"sjfsched.target": target}, drop=("sjfsched.target_map",))
    correction = LexicalPredictor(path).correction
    assert correction is not None and correction.target_map is not None
    assert correction.target(3) == pytest.approx(math.log1p(154))
    assert correction.target(10**5) == pytest.approx(math.log1p(1652))
    assert correction.target(500) == pytest.approx(math.log1p(500))


def test_a_malformed_clip_range_is_a_predictor_error(tmp_path: Path) -> None:
    target = "mean of log(1 + output_tokens clipped to [1-2, 50])"
    path = _edited(tmp_path, "odd.onnx", {"sjfsched.target": target}, drop=("sjfsched.target_map",))
    with pytest.raises(PredictorError, match=r"odd\.onnx: model's sjfsched\.target is malformed"):
        LexicalPredictor(path)


def test_foreign_onnx_model(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    with pytest.raises(PredictorError, match=r"foreign\.onnx: not a sjfsched lexical model"):
        LexicalPredictor(path)


# ----------------------------------------------------------------- calibration


def test_calibration_moves_tokens_and_keeps_the_order(tmp_path: Path) -> None:
    predictor = LexicalPredictor()
    short, long = Request(SHORT_ASKS[0]), Request(LONG_ASKS[0])
    before = predictor.predict(long).tokens
    # a deployment whose model answers 4x longer than the training corpora
    for prompt in SHORT_ASKS + LONG_ASKS:
        request = Request(prompt)
        typical = math.expm1(predictor.score(prompt))
        for _ in range(20):
            predictor.observe(request, Prediction(1.0), round(4 * typical))
    after_long = predictor.predict(long)
    assert after_long.tokens > 2.5 * before
    assert predictor.predict(short).tokens < after_long.tokens
    # saved and loaded, it predicts the same
    path = tmp_path / "cal.json"
    predictor.save_calibration(path)
    again = LexicalPredictor(calibration_path=path)
    assert again.predict(long).tokens == pytest.approx(after_long.tokens)
    assert again.calibration.observations == predictor.calibration.observations
    again.reset_calibration()
    assert again.predict(long).tokens == pytest.approx(before)


def test_calibration_saves_every_n(tmp_path: Path) -> None:
    path = tmp_path / "auto.json"
    predictor = LexicalPredictor(calibration_path=path, save_every=3)
    request = Request("hello")
    for _ in range(2):
        predictor.observe(request, Prediction(1.0), 100)
    assert not path.exists()
    predictor.observe(request, Prediction(1.0), 100)
    assert json.loads(path.read_text())["state"]["n"] == 3


@pytest.mark.parametrize("every", [2.5, math.nan, math.inf, "3", 0, True])
def test_save_every_must_be_a_whole_number(tmp_path: Path, every: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"save_every must be an int >= 1 or None, got {every!r}")):
        LexicalPredictor(calibration_path=tmp_path / "s.json", save_every=every)  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [True, "500", b"5", None])
def test_observe_refuses_a_length_that_is_not_a_number(length: object) -> None:
    predictor = LexicalPredictor()
    request = Request("hello")
    with pytest.raises(TypeError, match="output_tokens must be a number of tokens"):
        predictor.observe(request, predictor.predict(request), length)  # type: ignore[arg-type]
    assert predictor.calibration.observations == 0
    assert predictor.correction is not None and predictor.correction.observations == 0


def test_scores_stay_near_the_training_targets_range(predictor: LexicalPredictor) -> None:
    """A run of one character repeats one n-gram hundreds of times: it must not score far outside."""
    assert predictor._low < predictor._high
    ask = "Write a detailed 2000-word essay on the French Revolution."
    padded = [ask + "\n" + "=" * 256, ask + "\n" * 256, "\n" * 10_000, "=" * 10_000, "a" * 100_000]
    scores = [predictor.score(text) for text in padded]
    assert all(predictor._low <= x <= predictor._high for x in scores), scores
    assert predictor.scores(padded).tolist() == pytest.approx(scores, rel=1e-5)
    # the old model scored "\n" * 10_000 at 12.5 (310,000 tokens): now at most e**0.5 past the longest target
    tokens = predictor.predict(Request("\n" * 10_000)).tokens
    assert tokens < 10_000, tokens


def test_saving_and_resetting_from_another_thread_while_observing() -> None:
    """The scheduler observes on its thread; the program saves or resets on its own."""
    predictor = LexicalPredictor()
    prompts = [f"Question {i}: {'explain ' * (i % 7)}the tides?" for i in range(64)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def observe() -> None:
        i = 0
        while not stop.is_set():
            request = Request(prompts[i % len(prompts)])
            try:
                predictor.observe(request, predictor.predict(request), 10 + 40 * (i % 9))
            except BaseException as exc:
                errors.append(exc)
            i += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand over often: the old code failed here about every other save
    thread = threading.Thread(target=observe)
    thread.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            state = Path(folder) / "state.json"
            for i in range(300):
                predictor.save_calibration(state)
                if i % 50 == 49:
                    predictor.reset_calibration()
            LexicalPredictor(calibration_path=state)  # the last save reads back
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert predictor.calibration.observations > 0


def test_bad_calibration_file(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text("{not json")
    with pytest.raises(PredictorError, match=r"cal\.json: cannot load calibration"):
        LexicalPredictor(calibration_path=path)
    path.write_text(json.dumps({"version": 1, "state": {"s0": "x"}}))
    with pytest.raises(PredictorError, match=r"cal\.json"):
        LexicalPredictor(calibration_path=path)


def test_observe_reuses_the_score_of_the_prediction() -> None:
    """observe() takes the raw score remembered from predict(): the model runs once per request."""
    predictor = LexicalPredictor(adapt=False)
    runs: list[int] = []
    run = predictor._run

    def counting(names: list[str], feed: dict[str, object]) -> list[object]:
        runs.append(1)
        return run(names, feed)

    predictor._run = counting
    requests = [Request(p) for p in SHORT_ASKS + LONG_ASKS + ["one more", "and another"]]
    assert len(requests) - 1 >= _lexical._SMALL_BATCH  # the rest go in one batch
    single = requests[0]
    predictions = [predictor.predict(single), *predictor.predict_many(requests[1:])]
    assert len(runs) == 2
    for request, prediction in zip(requests, predictions, strict=True):
        predictor.observe(request, prediction, 500)
    assert len(runs) == 2  # no run for the observations
    predictor.observe(single, predictions[0], 500)  # observed already: forgotten, so scored again
    predictor.observe(Request("never predicted"), Prediction(1.0), 7)
    assert len(runs) == 4
    # the same calibration as scoring every observed request afresh
    fresh = LexicalPredictor(adapt=False)
    for request in [*requests, single]:
        fresh._calibration.observe(fresh.score(request.text), 500)
    fresh._calibration.observe(fresh.score("never predicted"), 7)
    assert predictor.calibration.to_dict()["state"] == pytest.approx(fresh.calibration.to_dict()["state"])


def test_remembered_scores_are_bounded() -> None:
    from sjfsched.predictors._lexical import RECENT_SCORES

    predictor = LexicalPredictor(adapt=False)
    predictor.predict_many([Request(f"prompt {i}") for i in range(RECENT_SCORES + 10)])
    assert len(predictor._recent) == RECENT_SCORES  # a batch leaves its latest RECENT_SCORES
    many = [Request(f"one more {i}") for i in range(1000)]
    for request in many:
        predictor.predict(request)
    assert RECENT_SCORES <= len(predictor._recent) <= RECENT_SCORES + 512
    assert id(many[-1]) in predictor._recent  # the latest are kept
    predictor.predict_many([Request(f"and more {i}") for i in range(3 * RECENT_SCORES)])
    assert len(predictor._recent) == RECENT_SCORES
    uncalibrated = LexicalPredictor(calibrate=False)  # it never observes: nothing to remember
    uncalibrated.predict_many([Request("x")])
    uncalibrated.predict(Request("y"))
    assert not uncalibrated._recent
    adapting = LexicalPredictor()  # observe() scores afresh (it needs the features): nothing to remember
    adapting.predict_many([Request("x")])
    adapting.predict(Request("y"))
    assert not adapting._recent


def test_uncalibrated_predictor_ignores_observations() -> None:
    predictor = LexicalPredictor(calibrate=False)
    request = Request(LONG_ASKS[1])
    before = predictor.predict(request)
    predictor.observe(request, before, 5)
    assert predictor.predict(request) == before


def test_bundled_model_loads_when_the_package_is_imported_from_a_zip(tmp_path: Path) -> None:
    """A zipapp or zipimport has no model file on disk: the model is read from the zip, not swapped
    for the heuristic (which the scheduler's default would do, with only a warning)."""
    import subprocess
    import zipfile

    import sjfsched

    package = Path(str(sjfsched.__file__)).parent
    archive = tmp_path / "sjfsched.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(package.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                zf.write(file, Path("sjfsched") / file.relative_to(package))
    prompt = "Write a detailed 2000-word essay on the French Revolution."
    code = (
        "import json, sys, warnings; warnings.simplefilter('error'); sys.path.insert(0, sys.argv[1])\n"
        "import sjfsched\n"
        "from sjfsched.predictors import LexicalPredictor\n"
        "assert sjfsched.__file__.startswith(sys.argv[1]), sjfsched.__file__\n"
        "p = LexicalPredictor(calibrate=False).predict(sjfsched.Request(sys.argv[2]))\n"
        "print(json.dumps([p.tokens, type(sjfsched.Scheduler().predictor).__name__]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(archive), prompt],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    tokens, default = json.loads(out.stdout)
    assert default == "LexicalPredictor"
    assert tokens == LexicalPredictor(calibrate=False).predict(Request(prompt)).tokens
