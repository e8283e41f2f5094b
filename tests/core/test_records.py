from __future__ import annotations

import copy
import json
import math
import pickle
from typing import Any

import attrs
import numpy as np
import pytest

from sjfsched import Chunk, Completion, Prediction, Request, Scheduler
from sjfsched._records import _rebuild_request
from sjfsched.backends import CallableBackend
from sjfsched.predictors import ConstantPredictor


@attrs.frozen(eq=False)
class _TracedRequest(Request):
    """A user's request with a field of its own (module level: pickle finds it by name)."""

    trace_id: str = attrs.field(default="", kw_only=True)


@attrs.frozen(eq=False)
class _DeadlineRequest(Request):
    """A subclass whose own field has a converter and a validator."""

    deadline: float = attrs.field(
        default=60.0, kw_only=True, converter=float, validator=attrs.validators.ge(0)
    )


@attrs.frozen(eq=False)
class _BudgetRequest(Request):
    """A subclass whose checks read Request's fields: a validator and an __attrs_post_init__."""

    budget: int = attrs.field(default=100, kw_only=True)

    @budget.validator
    def _covers(self, attribute: object, value: int) -> None:
        if self.max_tokens is not None and value < self.max_tokens:
            raise ValueError(f"budget {value} < max_tokens {self.max_tokens}")

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.priority > 5:
            raise ValueError(f"priority {self.priority} > 5")


class _UserRequest(Request):
    """A subclass with an ``__init__`` of its own (another signature) and an instance dict."""

    def __init__(self, prompt: str, user: str) -> None:
        super().__init__(prompt, tenant=user, metadata={"user": user})
        self.__dict__["note"] = "n"

    note: str


class _SlottedRequest(Request):
    """A subclass with slots of its own and its own __init__."""

    __slots__ = ("user_id",)

    def __init__(self, prompt: str, user_id: int) -> None:
        super().__init__(prompt)
        object.__setattr__(self, "user_id", user_id)

    user_id: int


class TestRequest:
    def test_prompt(self) -> None:
        r = Request("hello", max_tokens=5, priority=-1, tenant="alice", options={"seed": 1})
        assert (r.prompt, r.text, r.max_tokens, r.priority, r.tenant) == ("hello", "hello", 5, -1, "alice")
        assert r.options == {"seed": 1}
        assert r.input_chars == 5

    def test_messages_text_is_last_user_turn(self) -> None:
        r = Request(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
            ]
        )
        assert r.text == "second"
        assert r.input_chars == len("Be brief.") + len("first question") + len("an answer") + len("second")

    def test_a_message_with_images_and_no_content_is_a_message(self) -> None:
        r = Request(messages=[{"role": "user", "images": ["aGVsbG8="]}])  # Ollama's image-only turn
        assert r.messages is not None and r.messages[0]["images"] == ["aGVsbG8="]

    def test_messages_without_user_turn(self) -> None:
        r = Request(messages=[{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}])
        assert r.text == "a\nb"

    @pytest.mark.parametrize(
        "options",
        [
            {"max_tokens": 5},
            {"num_predict": 5},
            {"n_predict": 5},
            {"max_completion_tokens": 5},
            {"max_new_tokens": 5},
            {"options": {"num_predict": 5}},
        ],
    )
    def test_an_output_limit_in_the_options_is_refused(self, options: dict[str, Any]) -> None:
        """The scheduler caps a prediction at Request.max_tokens and learns from answers cut by it;
        a limit in the options it could not see (found by a reviewer: OllamaBackend sent it on)."""
        with pytest.raises(ValueError, match=r"give the output limit as Request.max_tokens \(max_tokens=5\)"):
            Request("x", options=options)
        assert Request("x", options={"max_tokens": None, "options": {"num_predict": None}}).max_tokens is None
        # No limit passes: Ollama's -1 and -2 lift a Modelfile's num_predict (found by a reviewer).
        for none in ({"num_predict": -1}, {"options": {"num_predict": -2}}, {"max_tokens": 0}):
            assert Request("x", options=none).options == none

    def test_frozen_and_copied(self) -> None:
        options = {"temperature": 0.5}
        messages = [{"role": "user", "content": "hi"}]
        r = Request(messages=messages, options=options)
        options["temperature"] = 1.0
        messages[0]["content"] = "changed"
        assert r.options["temperature"] == 0.5
        assert r.text == "hi"
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            r.priority = 3  # type: ignore[misc]
        with pytest.raises(TypeError):
            r.options["temperature"] = 2.0  # type: ignore[index]

    def test_nested_values_are_copied_too(self) -> None:
        parts = [{"type": "text", "text": "What is 2+2?"}]
        stop = ["\n"]
        r = Request(messages=[{"role": "user", "content": parts}], options={"stop": stop})
        parts[0]["text"] = "Write a 3000-word essay."  # the caller reuses its objects after submitting
        stop.append("###")
        assert r.text == "What is 2+2?"
        assert r.options["stop"] == ["\n"]

        class Processors(list[object]):  # as llama_cpp's LogitsProcessorList: a list that is called
            def __call__(self) -> str:
                return "called"

        processors = Processors()
        kept = Request("x", options={"logits_processor": processors}).options["logits_processor"]
        assert kept is processors

    def test_pickles_and_deep_copies_as_another_request_with_the_same_fields(self) -> None:
        r = Request(
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            max_tokens=5,
            priority=-1,
            tenant="t",
            options={"stop": ["x"]},
            metadata={"k": 1},
        )
        prediction = Prediction(3.0, 0.1, prompt_tokens=2)
        done = Completion(r, "ok", 1, 2, prediction, 0.5, 0.0, 0.1, None, 0.2)
        for copy_of in (pickle.loads(pickle.dumps(done)), copy.deepcopy(done)):
            again = copy_of.request
            assert again is not r and again.text == "hi"
            assert (again.messages, again.max_tokens, again.priority, again.tenant) == (
                r.messages,
                5,
                -1,
                "t",
            )
            assert (dict(again.options), dict(again.metadata)) == ({"stop": ["x"]}, {"k": 1})
            assert (copy_of.text, copy_of.prediction, copy_of.latency) == ("ok", prediction, 0.2)
        assert pickle.loads(pickle.dumps(Request("plain"))).prompt == "plain"

    def test_a_subclass_keeps_its_class_and_its_own_fields_when_copied_or_pickled(self) -> None:
        r = _TracedRequest(messages=[{"role": "user", "content": "hi"}], metadata={"k": 1}, trace_id="t-1")
        for again in (copy.copy(r), copy.deepcopy(r), pickle.loads(pickle.dumps(r))):
            assert type(again) is _TracedRequest and again is not r
            assert (again.trace_id, again.text, dict(again.metadata)) == ("t-1", "hi", {"k": 1})

    def test_a_subclass_with_an_init_of_its_own_is_copied_without_calling_it(self) -> None:
        r = _UserRequest("hi", "bob")
        for again in (copy.copy(r), copy.deepcopy(r), pickle.loads(pickle.dumps(r))):
            assert type(again) is _UserRequest and again is not r
            assert (again.prompt, again.tenant, dict(again.metadata), again.note) == (
                "hi",
                "bob",
                {"user": "bob"},
                "n",
            )

    def test_a_subclass_with_slots_of_its_own_keeps_them(self) -> None:
        r = _SlottedRequest("hi", 7)
        for again in (copy.copy(r), copy.deepcopy(r), pickle.loads(pickle.dumps(r))):
            assert (type(again), again.prompt, again.user_id) == (_SlottedRequest, "hi", 7)

    @pytest.mark.anyio
    async def test_fields_given_with_a_subclass_request_do_not_call_its_init(self) -> None:
        # complete(request, max_tokens=...) evolved it through UserRequest.__init__: TypeError
        seen: list[Request] = []
        async with Scheduler(None, predictor=ConstantPredictor()) as sched:
            async with sched.admit(_UserRequest("hi", "bob"), max_tokens=5) as ticket:
                seen.append(ticket.request)
                ticket.report(1)
            with pytest.raises(TypeError, match="_UserRequest has no field 'max_token'; its fields: prompt"):
                async with sched.admit(_UserRequest("hi", "bob"), max_token=5):  # type: ignore[call-arg]
                    pass
            with pytest.raises(ValueError, match=r"Request\.max_tokens must be at least 1"):
                async with sched.admit(_UserRequest("hi", "bob"), max_tokens=0):
                    pass
        (got,) = seen
        assert isinstance(got, _UserRequest)
        assert (type(got), got.max_tokens, got.tenant, got.note) == (_UserRequest, 5, "bob", "n")

    @pytest.mark.anyio
    async def test_a_subclass_field_given_as_a_keyword_is_converted_and_checked(self) -> None:
        # Set as given, past the subclass's converter and validator.
        seen: list[float] = []
        async with Scheduler(None, predictor=ConstantPredictor()) as sched:
            async with sched.admit(_DeadlineRequest("x"), deadline="7") as ticket:  # type: ignore[call-arg]
                assert isinstance(ticket.request, _DeadlineRequest)
                seen.append(ticket.request.deadline)
            for bad, error in (("-5", ValueError), ("soon", ValueError)):
                with pytest.raises(error, match=r"deadline|could not convert"):
                    async with sched.admit(_DeadlineRequest("x"), deadline=bad):  # type: ignore[call-arg]
                        pass
            stats = sched.statistics()
        assert seen == [7.0]
        assert (stats.completed, stats.waiting, stats.running) == (1, 0, 0)

    @pytest.mark.anyio
    async def test_a_subclass_checks_what_fields_given_as_keywords_change(self) -> None:
        # Its validators ran only when one of its own fields changed, its __attrs_post_init__ never.
        async with Scheduler(None, predictor=ConstantPredictor()) as sched:
            with pytest.raises(ValueError, match="budget 20 < max_tokens 50"):
                async with sched.admit(_BudgetRequest("x", budget=20), max_tokens=50):
                    pass
            with pytest.raises(ValueError, match="priority 9 > 5"):
                async with sched.admit(_BudgetRequest("x"), priority=9):
                    pass
            async with sched.admit(_BudgetRequest("x", budget=20), max_tokens=10) as ticket:
                assert isinstance(ticket.request, _BudgetRequest)
                assert (ticket.request.max_tokens, ticket.request.budget) == (10, 20)

    def test_a_request_pickled_by_the_earlier_version_still_loads(self) -> None:
        # Its pickle named the prompt and the other fields, not the class.
        again = _rebuild_request("plain", {"max_tokens": 5, "metadata": {"k": 1}})
        assert (type(again), again.prompt, again.max_tokens, dict(again.metadata)) == (
            Request,
            "plain",
            5,
            {"k": 1},
        )

    def test_numpy_integers_are_taken_as_ints(self) -> None:
        r = Request("x", max_tokens=np.int64(5), priority=np.int32(-2))
        assert (r.max_tokens, r.priority) == (5, -2) and type(r.max_tokens) is int and type(r.priority) is int
        c = Chunk("abc", tokens=np.int64(3), prompt_tokens=np.uint16(7))
        assert (c.tokens, c.prompt_tokens) == (3, 7) and type(c.tokens) is int
        p = Prediction(np.float32(2.5), prompt_tokens=np.int64(4))
        assert type(p.prompt_tokens) is float and p.prompt_tokens == 4.0
        with pytest.raises(TypeError, match="max_tokens"):
            Request("x", max_tokens=np.float64(5.0))

    def test_identity_semantics(self) -> None:
        a, b = Request("same"), Request("same")
        assert a != b
        assert len({a, b}) == 2

    @pytest.mark.parametrize(
        ("kwargs", "error", "words"),
        [
            ({}, ValueError, "exactly one of Request.prompt or Request.messages"),
            (
                {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
                ValueError,
                "exactly one",
            ),
            ({"prompt": 5}, TypeError, "Request.prompt"),
            ({"messages": "hello"}, TypeError, "Request.messages"),
            ({"messages": []}, ValueError, "at least one message"),
            ({"messages": [["user", "hi"]]}, TypeError, "Request.messages[0]"),
            ({"messages": [{"content": "hi"}]}, TypeError, "['role']"),
            ({"messages": [{"role": "user", "content": 3}]}, TypeError, "['content']"),
            ({"messages": [{"role": "user"}]}, ValueError, "messages[0] ('user') has no 'content'"),
            (
                {"messages": [{"role": "assistant", "tool_calls": []}, {"role": "tool", "content": None}]},
                ValueError,
                "messages[1] ('tool') has no 'content'",
            ),
            ({"prompt": "x", "max_tokens": -1}, ValueError, "Request.max_tokens"),
            ({"prompt": "x", "max_tokens": 0}, ValueError, "Request.max_tokens"),
            ({"prompt": "x", "max_tokens": 2.5}, TypeError, "Request.max_tokens"),
            ({"prompt": "x", "max_tokens": True}, TypeError, "Request.max_tokens"),
            ({"prompt": "x", "priority": "high"}, TypeError, "Request.priority"),
            ({"prompt": "x", "tenant": 7}, TypeError, "Request.tenant"),
            ({"prompt": "x", "options": [1, 2]}, TypeError, "mapping"),
            ({"prompt": "x", "metadata": "m"}, TypeError, "mapping"),
        ],
    )
    def test_bad_input_names_the_field(self, kwargs: dict[str, object], error: type, words: str) -> None:
        with pytest.raises(error) as info:
            Request(**kwargs)  # type: ignore[arg-type]
        assert words in str(info.value)


class TestPrediction:
    def test_valid(self) -> None:
        p = Prediction(12, p_long=0.25, prompt_tokens=3)
        assert (p.tokens, p.p_long, p.prompt_tokens) == (12.0, 0.25, 3)
        assert p == Prediction(12.0, p_long=0.25, prompt_tokens=3)

    @pytest.mark.parametrize("tokens", [-1.0, math.nan, math.inf])
    def test_bad_tokens(self, tokens: float) -> None:
        with pytest.raises(ValueError, match=r"Prediction\.tokens"):
            Prediction(tokens)

    @pytest.mark.parametrize("p_long", [-0.1, 1.5])
    def test_bad_p_long(self, p_long: float) -> None:
        with pytest.raises(ValueError, match=r"Prediction\.p_long"):
            Prediction(1.0, p_long=p_long)

    def test_bad_prompt_tokens(self) -> None:
        with pytest.raises(ValueError, match=r"Prediction\.prompt_tokens"):
            Prediction(1.0, prompt_tokens=-2)

    @pytest.mark.parametrize("kwargs", [{"tokens": 10**400}, {"tokens": 1.0, "prompt_tokens": 10**400}])
    def test_an_int_past_floats_range_is_refused_by_name(self, kwargs: dict[str, Any]) -> None:
        # float() raised OverflowError, naming nothing.
        field = list(kwargs)[-1]
        with pytest.raises(
            ValueError, match=rf"Prediction\.{field} must be finite, got an int of 1,329 bits"
        ):
            Prediction(**kwargs)

    def test_every_number_is_kept_as_a_float(self) -> None:
        """p_long kept a numpy scalar (not JSON-serialisable) or an int, unlike its neighbours."""
        p = Prediction(np.float32(300.0), p_long=np.float32(0.25), prompt_tokens=np.int64(12))
        assert [type(x) for x in (p.tokens, p.p_long, p.prompt_tokens)] == [float, float, float]
        assert type(Prediction(3.0, p_long=1).p_long) is float
        assert json.dumps(attrs.asdict(p)) == '{"tokens": 300.0, "p_long": 0.25, "prompt_tokens": 12.0}'

    @pytest.mark.parametrize(("tokens", "error"), [(True, TypeError), ("5", TypeError), (-1.0, ValueError)])
    def test_a_constant_predictor_refuses_what_is_no_length(
        self, tokens: Any, error: type[Exception]
    ) -> None:
        # True was taken (every request then failed its prediction and ran on the stand-in)
        with pytest.raises(error, match=r"ConstantPredictor\.tokens must be"):
            ConstantPredictor(tokens)

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"tokens": "5"}, "tokens"),
            ({"tokens": True}, "tokens"),
            ({"tokens": 1.0, "p_long": True}, "p_long"),
            ({"tokens": 1.0, "p_long": "0.5"}, "p_long"),
            ({"tokens": 1.0, "prompt_tokens": "3"}, "prompt_tokens"),
        ],
    )
    def test_not_a_number_is_refused_by_name(self, kwargs: dict[str, object], field: str) -> None:
        with pytest.raises(TypeError, match=rf"Prediction\.{field} must be a number"):
            Prediction(**kwargs)  # type: ignore[arg-type]

    def test_numpy_numbers_are_numbers(self) -> None:
        import numpy as np

        p = Prediction(np.float32(3.5), p_long=np.float64(0.25), prompt_tokens=np.int64(3))
        assert (p.tokens, p.p_long, p.prompt_tokens) == (3.5, 0.25, 3)
        # a float subclass (np.float64 is one) is stored as a plain float
        assert type(Prediction(np.float64(2.0)).tokens) is float
        assert type(Prediction(2).tokens) is float


class TestChunk:
    def test_defaults(self) -> None:
        c = Chunk("hi")
        assert (c.text, c.tokens, c.prompt_tokens, c.finish_reason) == ("hi", 1, None, None)

    def test_bad_tokens(self) -> None:
        with pytest.raises(ValueError, match=r"Chunk\.tokens must be an int >= 0, got -1"):
            Chunk("x", tokens=-1)
        for wrong in (1.5, True, "3"):  # a wrong type is a TypeError, as for Request (design.md)
            with pytest.raises(TypeError, match=r"Chunk\.tokens must be an int >= 0, got (float|bool|str)"):
                Chunk("x", tokens=wrong)  # type: ignore[arg-type]

    def test_a_finish_reason_is_a_string(self) -> None:
        # 3 was taken, where every other field of a chunk is checked
        with pytest.raises(TypeError, match=r"Chunk\.finish_reason must be a str or None, got int 3"):
            Chunk("x", finish_reason=3)  # type: ignore[arg-type]
        assert Chunk("x", finish_reason="stop").finish_reason == "stop"


def test_completion_durations() -> None:
    c = Completion(
        request=Request("x"),
        text="abc",
        output_tokens=3,
        prompt_tokens=1,
        prediction=Prediction(3),
        estimate=0.5,
        submitted=10.0,
        started=12.5,
        first_token=13.0,
        finished=20.0,
    )
    assert (c.wait, c.latency, c.time_to_first_token) == (2.5, 10.0, 3.0)


def test_a_learnt_rate_set_to_what_no_estimate_can_use_is_refused() -> None:
    """Scheduler.rates is the scheduler's own estimator: a rate of 0 set there failed every later
    request with a ZeroDivisionError (a typed-API reviewer's)."""
    scheduler = Scheduler(CallableBackend(lambda request: "ok"), predictor=ConstantPredictor())
    for wrong in (0.0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="decode_rate must be a positive number of tokens per second"):
            scheduler.rates.decode_rate = wrong
    scheduler.rates.prefill_rate = np.float32(200)
    assert scheduler.rates.prefill_rate == 200.0 and type(scheduler.rates.prefill_rate) is float
    assert scheduler.rates.decode_rate == 30.0
