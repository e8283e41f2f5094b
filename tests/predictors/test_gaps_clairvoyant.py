"""Found by a mutation audit: Clairvoyant's 19 features on prompts whose values are known by hand."""

from __future__ import annotations

from sjfsched.predictors._clairvoyant import CLAIRVOYANT_FEATURES, clairvoyant_features


def _named(prompt: str) -> dict[str, float]:
    return dict(zip(CLAIRVOYANT_FEATURES, clairvoyant_features(prompt), strict=True))


def test_clairvoyant_features_match_their_definition() -> None:
    prompt = "Explain what a loop is because I ask why?  "  # 43 characters
    f = _named(prompt)
    assert len(prompt) == 43
    assert f["prompt_token_len"] == 10.0  # characters // 4
    assert f["has_code_keyword"] == 1.0  # "loop"
    assert f["has_length_constraint"] == 0.0
    assert f["ends_with_question"] == 1.0  # trailing spaces are not the end
    assert f["has_format_keyword"] == 0.0
    assert f["clause_count"] == 1.0  # " because "
    # the first verb in the fixed order wins: explain before what and why
    assert [k for k, v in f.items() if k.startswith("verb_") and v] == ["verb_explain"]


def test_clauses_count_commas_semicolons_and_conjunctions() -> None:
    f = _named("Cats, dogs; birds and fish but not bees because of stings")
    assert f["clause_count"] == 5.0
    assert f["verb_other"] == 1.0
    assert f["ends_with_question"] == 0.0
