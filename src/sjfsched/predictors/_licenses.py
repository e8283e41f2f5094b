"""What is known of the licenses of the corpora the project trains on."""

from __future__ import annotations

from typing import Final

__all__ = ["KNOWN_LICENSES", "PERMISSIVE_SOURCES", "license_of"]

#: source -> (license, permissive?)  Sources are matched exactly, then by corpus.
KNOWN_LICENSES: Final[dict[str, tuple[str, bool]]] = {
    "arena-hard-v0.1": ("Apache-2.0 (Arena-Hard-Auto answers)", True),
    "oasst1": ("Apache-2.0 (OpenAssistant OASST1)", True),
    "castillo/Apps": ("MIT (APPS); CASTILLO answers Apache-2.0", True),
    "castillo/BigCodeBench": ("Apache-2.0 (BigCodeBench); CASTILLO answers Apache-2.0", True),
    "castillo/Mbpp": ("CC-BY-4.0 (MBPP); CASTILLO answers Apache-2.0", True),
    "castillo/DS1000": ("CC-BY-SA-4.0 (DS-1000, share-alike); CASTILLO answers Apache-2.0", False),
    "castillo/Alpaca": ("CC-BY-NC-4.0 (Alpaca, non-commercial); CASTILLO answers Apache-2.0", False),
    "castillo/DollyDataset": ("CC-BY-SA-3.0 (Dolly, share-alike); CASTILLO answers Apache-2.0", False),
    "sharegpt-natural": ("no stated license (ShareGPT conversations; repository MIT)", False),
    "cnn_dailymail": ("news articles (CNN/DailyMail; dataset scripts Apache-2.0)", False),
}

#: The sources the bundled model may be trained on.
PERMISSIVE_SOURCES: Final = tuple(s for s, (_, ok) in KNOWN_LICENSES.items() if ok)


def license_of(source: str) -> str:
    """The license of a source, as far as the project knows it."""
    known = KNOWN_LICENSES.get(source)
    if known is not None:
        return known[0]
    return "unknown (your own data: check its terms)"
