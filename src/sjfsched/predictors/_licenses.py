"""What is known of the licenses of the corpora the project trains on, and which ship.

The bundled model is trained on :data:`BUNDLED_SOURCES`: the permissively
licensed sources plus ShareGPT.  ShareGPT is the one natural-conversation
corpus of any size in the shared data; the repository it comes from is
MIT-licensed, but the conversations themselves (shared by ChatGPT users)
carry no stated license of their own.  Left out for good: Alpaca (CC BY-NC,
non-commercial) and CNN/DailyMail (news articles).  Dolly and DS-1000
(CC BY-SA, share-alike) stay out as well: adding them did not measurably
help on natural conversations (see ``docs/predictor.md``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["BUNDLED_SOURCES", "KNOWN_LICENSES", "PERMISSIVE_SOURCES", "license_of"]

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
#: the module docstring): the permissive ones and ShareGPT.
BUNDLED_SOURCES: Final = (*PERMISSIVE_SOURCES, "sharegpt-natural")


def license_of(source: str) -> str:
    """The license of a source, as far as the project knows it."""
    known = KNOWN_LICENSES.get(source)
    if known is not None:
        return known[0]
    return "unknown (your own data: check its terms)"
