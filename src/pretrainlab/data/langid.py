"""Language identification: the `language_id` step of `pretrainlab data build`.

    [[steps]]
    step = "language_id"
    languages = ["en"]          # ISO 639-1 codes to keep
    min_confidence = 0.65

The detector is lingua (`lingua-language-detector`, in the `data` extra): its n-gram models
for 75 languages are compiled into the wheel (about 96 MB), so nothing is downloaded at run
time and a machine without network detects the same as one with it. Each document is scored
against all 75 languages, so a French page is called French rather than "English with low
confidence"; the document is kept when its most likely language is in `languages` with
lingua's confidence (a probability over the 75 languages) at or above `min_confidence`.

Why lingua rather than fastText's lid.176 (FineWeb's choice): fastText's model is a separate
download (the wheels hold no model), which this lab may not do at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from .sources import require
from .steps import Outcome, StepConfig, _fraction, step

# FineWeb keeps English at fastText score >= 0.65; lingua's confidences on documents of a
# few hundred characters or more sit near 1.0 for one-language text, so 0.65 removes mixed
# and unrecognisable text without touching ordinary prose.
DEFAULT_MIN_CONFIDENCE = 0.65
# Lingua's low-accuracy mode (trigram models only) loads in under a second and about 100 MB
# per process; high accuracy (1- to 5-gram models) took 15 s and 0.9 GB per process on a
# 2-core machine (docs/data.md). Lingua's own note: the two agree on texts over ~120 characters.
ACCURACIES = ("low", "high")


@dataclass
class LanguageIdConfig(StepConfig):
    languages: list[str] = field(default_factory=lambda: ["en"])  # ISO 639-1 codes of the languages to keep
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # lingua's confidence in the top language, at least
    exclude_domains: list[str] = field(default_factory=lambda: ["code"])  # never filtered: code's identifiers are no natural language
    max_chars: int = 2000  # detect on the first characters only: the language of a document is clear by then, and it is linear in length
    accuracy: str = "low"  # "low" (trigram models, ~100 MB per process) or "high" (1-5-grams, ~0.9 GB, better under 120 characters)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.languages, list) or not self.languages:
            raise ValueError(f"languages must be a non-empty list of ISO 639-1 codes such as ['en'], got {self.languages!r}")
        known = supported_languages()
        for code in self.languages:
            if code not in known:
                raise ValueError(f"languages: {code!r} is not an ISO 639-1 code lingua detects (lowercase): use one of {', '.join(known)}")
        _fraction("min_confidence", self.min_confidence)
        if not isinstance(self.exclude_domains, list) or not all(isinstance(d, str) for d in self.exclude_domains):
            raise ValueError(f"exclude_domains must be a list of domain names, got {self.exclude_domains!r}")
        if both := sorted(set(self.domains) & set(self.exclude_domains)):
            raise ValueError(f"domain(s) {', '.join(both)} are in both domains and exclude_domains: remove them from one")
        if not isinstance(self.max_chars, int) or isinstance(self.max_chars, bool) or self.max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {self.max_chars!r}")
        if self.accuracy not in ACCURACIES:
            raise ValueError(f"accuracy must be one of {', '.join(ACCURACIES)}, got {self.accuracy!r}")


def _lingua():
    return require("lingua", "lingua-language-detector", "the language_id step")


@lru_cache(maxsize=1)
def supported_languages() -> tuple[str, ...]:
    return tuple(sorted(language.iso_code_639_1.name.lower() for language in _lingua().Language.all()))


@lru_cache(maxsize=2)
def detector(accuracy: str):
    """One lingua detector over all its languages per process (its models load lazily, on first use)."""
    builder = _lingua().LanguageDetectorBuilder.from_all_languages()
    return builder.with_low_accuracy_mode().build() if accuracy == "low" else builder.build()


def detect(text: str, accuracy: str = "low") -> tuple[str | None, float]:
    """(ISO 639-1 code of the most likely language, its confidence); (None, 0.0) for text with no letters."""
    values = detector(accuracy).compute_language_confidence_values(text)
    if not values or values[0].value <= 0.0:
        return None, 0.0
    return values[0].language.iso_code_639_1.name.lower(), values[0].value


@step("language_id", LanguageIdConfig, per_document=True)
def language_id(text: str, c: LanguageIdConfig) -> Outcome:
    """Language identification (lingua, models in its wheel): keep documents in `languages` at confidence >= min_confidence."""
    language, confidence = detect(text[: c.max_chars], c.accuracy)
    score = round(confidence, 4)
    if language is None:
        return Outcome.remove("no_language", score)
    if language not in c.languages:
        return Outcome.remove(f"language_{language}", score)
    if confidence < c.min_confidence:
        return Outcome.remove(f"low_confidence_{language}", score)
    return Outcome("keep", rule=language, score=score)  # a kept document's rule is its language (fates.jsonl "labels")
