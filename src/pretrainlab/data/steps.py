"""Data steps: what `pretrainlab data build` runs over a corpus's train documents.

One small interface and one registry, like the doctor's detectors. A step is either

    per document   fn(text, config) -> Outcome           (parallel over documents)
    corpus-wide    fn(train, held_out, config) -> list[Outcome]   (dedup, decontamination)

and returns, for each train document, an Outcome: kept (with the step's score, for the
report's histograms), removed (the rule and its score) or rewritten (the new text and what
changed). Held-out documents (monitor, val, test) are never given to a step to change:
evaluation stays fixed; decontamination only reads val and test.

Each threshold is a named constant with its source. Every config has `domains`: the step
runs on those domains only (empty: all), since prose rules would remove every code file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

# --- the interface ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    action: str  # "keep" | "remove" | "rewrite"
    rule: str | None = None  # the rule that removed or rewrote the document
    score: float | None = None  # the deciding (or, when kept, the step's main) measurement
    text: str | None = None  # the new text, for "rewrite"
    cluster: str | None = None  # duplicate cluster id (dedup steps)
    kept_doc: str | None = None  # the cluster's kept document's path (dedup steps)

    @staticmethod
    def keep(score: float | None = None, cluster: str | None = None) -> Outcome:
        return Outcome("keep", score=score, cluster=cluster)

    @staticmethod
    def remove(rule: str, score: float | None = None, cluster: str | None = None, kept_doc: str | None = None) -> Outcome:
        return Outcome("remove", rule=rule, score=score, cluster=cluster, kept_doc=kept_doc)


def rewrite_or_keep(old: str, new: str, rule: str, score: float | None = None) -> Outcome:
    return Outcome("rewrite", rule=rule, score=score, text=new) if new != old else Outcome.keep(score)


@dataclass(frozen=True)
class StepDoc:
    """A train (or held-out) document as a corpus-wide step sees it."""

    domain: str
    path: str
    text: str


@dataclass
class StepConfig:
    domains: list[str] = field(default_factory=list)  # run on these domains only; empty: every domain

    def __post_init__(self) -> None:
        if not isinstance(self.domains, list) or not all(isinstance(d, str) for d in self.domains):
            raise ValueError(f"domains must be a list of domain names, got {self.domains!r}")


@dataclass(frozen=True)
class Step:
    name: str
    config: type[StepConfig]
    fn: Callable
    per_document: bool
    doc: str


STEPS: dict[str, Step] = {}


def step(name: str, config: type[StepConfig], per_document: bool):
    def register(fn: Callable) -> Callable:
        STEPS[name] = Step(name, config, fn, per_document, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return register


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def _fraction(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")


def config_fields(cls: type[StepConfig]) -> list[str]:
    return [f.name for f in fields(cls)]


_WORD = re.compile(r"\S+")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


# --- normalisation ---------------------------------------------------------------------

# Invisible characters that split or glue words without showing: zero-width space/joiners,
# word joiner, BOM. They make identical texts hash differently and defeat dedup.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls except \t \n \r
MAX_BLANK_LINES = 2  # longer runs of blank lines carry no signal and cost tokens


@dataclass
class NormalizeConfig(StepConfig):
    form: str = "NFC"  # Unicode normal form: NFC keeps compatibility characters (ﬁ, ², full-width); NFKC folds them
    strip_invisible: bool = True  # drop zero-width characters, BOMs and C0 control characters

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"form must be one of NFC, NFKC, NFD, NFKD, got {self.form!r}")


@step("normalize", NormalizeConfig, per_document=True)
def normalize(text: str, config: NormalizeConfig) -> Outcome:
    """Unicode normal form, \\r\\n line ends, no trailing spaces, at most 2 blank lines in a row."""
    new = unicodedata.normalize(config.form, text).replace("\r\n", "\n").replace("\r", "\n")
    if config.strip_invisible:
        new = _CONTROL.sub("", _INVISIBLE.sub("", new))
    # per line, not re.sub(r"[ \t]+$", re.M): that retries at every space of a long run, quadratic in its length
    new = "\n".join(line.rstrip(" \t") for line in new.split("\n"))
    new = re.sub(r"\n{%d,}" % (MAX_BLANK_LINES + 2), "\n" * (MAX_BLANK_LINES + 1), new)
    return rewrite_or_keep(text, new, "normalized")


# --- Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A) -----

GOPHER_STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


@dataclass
class GopherQualityConfig(StepConfig):
    min_words: int = 50  # Gopher: fewer than 50 words is not a document worth training on
    max_words: int = 100_000  # Gopher: longer is usually a dump, not prose
    min_mean_word_length: float = 3.0  # Gopher: shorter means are tables of numbers or symbols
    max_mean_word_length: float = 10.0  # Gopher: longer means are URLs, hashes, base64
    max_symbol_word_ratio: float = 0.1  # Gopher: '#' and '...' per word
    max_bullet_lines: float = 0.9  # Gopher: share of lines starting with a bullet
    max_ellipsis_lines: float = 0.3  # Gopher: share of lines ending in an ellipsis
    min_alpha_words: float = 0.8  # Gopher: share of words holding an alphabetic character
    min_stop_words: int = 2  # Gopher: English prose has at least two of the, be, to, of, and, that, have, with

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("min_words", "max_words", "min_mean_word_length", "max_mean_word_length", "max_symbol_word_ratio"):
            _positive(name, getattr(self, name), allow_zero=True)
        for name in ("max_bullet_lines", "max_ellipsis_lines", "min_alpha_words"):
            _fraction(name, getattr(self, name))
        _positive("min_stop_words", self.min_stop_words, allow_zero=True)
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")


_BULLETS = ("•", "-", "*", "‣", "◦", "●")


@step("gopher_quality", GopherQualityConfig, per_document=True)
def gopher_quality(text: str, c: GopherQualityConfig) -> Outcome:
    """Gopher's quality rules: word count, word length, symbols, bullets, ellipses, alphabetic words, stop words."""
    ws = words(text)
    n = len(ws)
    if n < c.min_words:
        return Outcome.remove("too_few_words", n)
    if n > c.max_words:
        return Outcome.remove("too_many_words", n)
    mean_len = sum(map(len, ws)) / n
    if not c.min_mean_word_length <= mean_len <= c.max_mean_word_length:
        return Outcome.remove("mean_word_length", round(mean_len, 3))
    symbols = (text.count("#") + text.count("...") + text.count("…")) / n
    if symbols > c.max_symbol_word_ratio:
        return Outcome.remove("symbol_word_ratio", round(symbols, 4))
    lines = [line for line in text.split("\n") if line.strip()]
    bullets = sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines)
    if bullets > c.max_bullet_lines:
        return Outcome.remove("bullet_lines", round(bullets, 4))
    ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines)
    if ellipsis > c.max_ellipsis_lines:
        return Outcome.remove("ellipsis_lines", round(ellipsis, 4))
    alpha = sum(any(ch.isalpha() for ch in w) for w in ws) / n
    if alpha < c.min_alpha_words:
        return Outcome.remove("alpha_words", round(alpha, 4))
    stop = sum(w.lower() in GOPHER_STOP_WORDS for w in ws)
    if stop < c.min_stop_words:
        return Outcome.remove("stop_words", stop)
    return Outcome.keep(round(alpha, 4))


# --- Gopher repetition rules (Rae et al. 2021, table A1) -------------------------------

# Share of characters in the most frequent n-gram, n = 2, 3, 4 (Gopher's thresholds).
GOPHER_TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
# Share of characters in n-grams that occur more than once, n = 5..10 (Gopher's thresholds).
GOPHER_DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


@dataclass
class GopherRepetitionConfig(StepConfig):
    max_dup_line_fraction: float = 0.3  # Gopher: share of lines that duplicate an earlier line
    max_dup_para_fraction: float = 0.3  # Gopher: share of paragraphs that duplicate an earlier one
    max_dup_line_chars: float = 0.2  # Gopher: share of characters in duplicated lines
    max_dup_para_chars: float = 0.2  # Gopher: share of characters in duplicated paragraphs
    ngram_rules: bool = True  # also apply the top-n-gram (n=2..4) and duplicate-n-gram (n=5..10) character shares

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_dup_line_fraction", "max_dup_para_fraction", "max_dup_line_chars", "max_dup_para_chars"):
            _fraction(name, getattr(self, name))


def _dup_share(parts: list[str]) -> tuple[float, float]:
    """(share of parts that repeat an earlier part, share of characters in them)."""
    if not parts:
        return 0.0, 0.0
    seen: set[str] = set()
    num_dup = chars_dup = 0
    for p in parts:
        if p in seen:
            num_dup += 1
            chars_dup += len(p)
        seen.add(p)
    return num_dup / len(parts), chars_dup / max(1, sum(map(len, parts)))


@step("gopher_repetition", GopherRepetitionConfig, per_document=True)
def gopher_repetition(text: str, c: GopherRepetitionConfig) -> Outcome:
    """Gopher's repetition rules: duplicated lines, paragraphs and n-grams."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    line_frac, line_chars = _dup_share(lines)
    para_frac, para_chars = _dup_share(paras)
    for rule, value, limit in (
        ("dup_line_fraction", line_frac, c.max_dup_line_fraction),
        ("dup_para_fraction", para_frac, c.max_dup_para_fraction),
        ("dup_line_chars", line_chars, c.max_dup_line_chars),
        ("dup_para_chars", para_chars, c.max_dup_para_chars),
    ):
        if value > limit:
            return Outcome.remove(rule, round(value, 4))
    ws = words(text)
    total_chars = sum(map(len, ws))
    if c.ngram_rules and total_chars:
        for n, limit in GOPHER_TOP_NGRAM.items():
            grams = Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))
            if grams:
                gram, count = grams.most_common(1)[0]
                if count > 1:
                    share = count * sum(map(len, gram)) / total_chars
                    if share > limit:
                        return Outcome.remove(f"top_{n}gram_chars", round(share, 4))
        for n, limit in GOPHER_DUP_NGRAM.items():
            if len(ws) < n:
                break
            first: dict[tuple, int] = {}
            covered = np.zeros(len(ws), dtype=bool)
            for i in range(len(ws) - n + 1):
                gram = tuple(ws[i : i + n])
                if gram in first:
                    covered[i : i + n] = True
                else:
                    first[gram] = i
            share = sum(len(w) for w, hit in zip(ws, covered) if hit) / total_chars
            if share > limit:
                return Outcome.remove(f"dup_{n}gram_chars", round(share, 4))
    return Outcome.keep(round(line_frac, 4))


# --- C4 line rules (Raffel et al. 2020, section 2.2) -----------------------------------

C4_TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’")


@dataclass
class C4LinesConfig(StepConfig):
    min_words_per_line: int = 5  # C4: keep only lines with at least 5 words
    min_sentences: int = 3  # C4: drop pages with fewer than 3 sentences left
    drop_javascript_lines: bool = True  # C4: lines mentioning "javascript" are warnings, not content
    drop_lorem_ipsum: bool = True  # C4: a page with "lorem ipsum" is placeholder text
    drop_curly_brace: bool = False  # C4 drops pages holding '{' (code); off by default, since this lab trains on code

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("min_words_per_line", self.min_words_per_line, allow_zero=True)
        _positive("min_sentences", self.min_sentences, allow_zero=True)


# A run of terminal punctuation before a space or the end. The lookbehind starts a match only at a
# run's first character (the only place one can succeed): without it a long run of dots followed
# by a letter is retried at every dot, quadratic in the run's length.
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]+(?:\s|$)")


@step("c4_lines", C4LinesConfig, per_document=True)
def c4_lines(text: str, c: C4LinesConfig) -> Outcome:
    """C4's rules: keep lines ending in terminal punctuation with enough words; drop placeholder pages."""
    lower = text.lower()
    if c.drop_lorem_ipsum and "lorem ipsum" in lower:
        return Outcome.remove("lorem_ipsum", 1.0)
    if c.drop_curly_brace and "{" in text:
        return Outcome.remove("curly_brace", 1.0)
    kept = []
    for line in text.split("\n"):
        s = line.strip()
        if not s.endswith(C4_TERMINAL_PUNCTUATION) or len(words(s)) < c.min_words_per_line:
            continue
        if c.drop_javascript_lines and "javascript" in s.lower():
            continue
        kept.append(line)
    new = "\n".join(kept)
    num_sentences = len(_SENTENCE_END.findall(new))
    if num_sentences < c.min_sentences:
        return Outcome.remove("too_few_sentences", num_sentences)
    return rewrite_or_keep(text, new + ("\n" if text.endswith("\n") and new else ""), "lines_removed", num_sentences)


# --- code rules (in the spirit of The Stack / StarCoder's filters) ---------------------

# Markers that a file was written by a tool: generated code teaches the tool's template.
AUTOGEN_MARKERS = ("auto-generated", "autogenerated", "automatically generated", "generated by", "do not edit")
AUTOGEN_HEAD_LINES = 5  # markers count only in a file's first lines, where tools put them


@dataclass
class CodeRulesConfig(StepConfig):
    max_line_length: int = 1000  # StarCoder: longer lines are minified or data blobs
    max_mean_line_length: float = 100.0  # StarCoder: a higher mean is data, not code
    min_alnum_fraction: float = 0.25  # StarCoder: fewer alphanumerics is binary-ish or encoded data
    drop_autogenerated: bool = True  # drop files whose first lines say a tool generated them

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("max_line_length", self.max_line_length)
        _positive("max_mean_line_length", self.max_mean_line_length)
        _fraction("min_alnum_fraction", self.min_alnum_fraction)


@step("code_rules", CodeRulesConfig, per_document=True)
def code_rules(text: str, c: CodeRulesConfig) -> Outcome:
    """Code rules: longest and mean line length, alphanumeric fraction, auto-generated markers."""
    lines = text.split("\n")
    longest = max(map(len, lines))
    if longest > c.max_line_length:
        return Outcome.remove("max_line_length", longest)
    mean = len(text) / len(lines)
    if mean > c.max_mean_line_length:
        return Outcome.remove("mean_line_length", round(mean, 2))
    alnum = sum(ch.isalnum() for ch in text) / max(1, len(text))
    if alnum < c.min_alnum_fraction:
        return Outcome.remove("alnum_fraction", round(alnum, 4))
    if c.drop_autogenerated:
        head = "\n".join(lines[:AUTOGEN_HEAD_LINES]).lower()
        if any(m in head for m in AUTOGEN_MARKERS):
            return Outcome.remove("autogenerated", 1.0)
    return Outcome.keep(round(alnum, 4))


# --- PII scrubbing ---------------------------------------------------------------------

# Emails: what r"\b[A-Za-z0-9._%+-]+@" + _EMAIL_DOMAIN would match, found in linear time
# (_sub_emails). Searched as one pattern, it retries the local part at every position of a long
# run of local-part characters ('a.a.a.a...'), quadratic in the run's length.
_EMAIL_LOCAL_RUN = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@")  # a whole run only: each character is read once
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_WORD_BOUNDARY = re.compile(r"\b")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
# Well-known credential shapes (each vendor documents its prefix): AWS access key ids,
# GitHub tokens, OpenAI/Anthropic-style secret keys, Slack tokens, Google API keys, PEM keys.
API_KEYS = re.compile(
    r"\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bsk-[A-Za-z0-9_-]{20,}\b|\bxox[abprs]-[A-Za-z0-9-]{10,}\b"
    r"|\bAIza[0-9A-Za-z_-]{35}\b"
)
# PEM private keys, a BEGIN line to the first END line after it (_sub_pem_keys): as one lazy
# pattern, every BEGIN without an END scans to the end of the text, quadratic in their number.
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")


@dataclass
class PIIConfig(StepConfig):
    email_replacement: str = "<EMAIL>"  # what an email address becomes
    ip_replacement: str = "<IP>"  # what a public IPv4 address becomes (private, loopback and documentation ranges stay)
    key_replacement: str = "<KEY>"  # what an API key or private key becomes


def _public_ip(match: re.Match, replacement: str) -> str:
    try:
        address = ipaddress.IPv4Address(match.group(0))
    except ValueError:
        return match.group(0)  # 999.1.1.1 is a version number, not an address
    return replacement if address.is_global else match.group(0)


def _sub_emails(text: str, replacement: str) -> tuple[str, int]:
    """EMAIL.subn(replacement, text) in linear time. An address's local part is the run of
    local-part characters before an '@', from the first word boundary in it (where EMAIL's
    search would start), never before the end of the previous address; the domain follows."""
    out, last, num = [], 0, 0
    for run in _EMAIL_LOCAL_RUN.finditer(text):
        at = run.end() - 1
        if at <= last:
            continue  # the run's '@' is inside the previous address
        start = _WORD_BOUNDARY.search(text, max(run.start(), last), at)
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if start is None or start.start() >= at or domain is None:
            continue
        out += [text[last : start.start()], replacement]
        last, num = domain.end(), num + 1
    return "".join(out) + text[last:], num


def _sub_keys(text: str, replacement: str) -> tuple[str, int]:
    """PEM private-key blocks first, then API_KEYS in the text between them, in linear time."""
    pieces, last, num = [], 0, 0
    while (begin := _PEM_BEGIN.search(text, last)) and (end := _PEM_END.search(text, begin.end())):
        piece, n = API_KEYS.subn(replacement, text[last : begin.start()])
        pieces += [piece, replacement]
        last, num = end.end(), num + n + 1
    piece, n = API_KEYS.subn(replacement, text[last:])
    return "".join(pieces) + piece, num + n


@step("pii", PIIConfig, per_document=True)
def pii(text: str, c: PIIConfig) -> Outcome:
    """PII scrubbing: emails, public IPv4 addresses and API keys are replaced by placeholders."""
    new, num_keys = _sub_keys(text, c.key_replacement)
    new, num_emails = _sub_emails(new, c.email_replacement)
    new = IPV4.sub(lambda m: _public_ip(m, c.ip_replacement), new)
    num_ips = new.count(c.ip_replacement) - text.count(c.ip_replacement)
    found = [f"{n} {kind}" for n, kind in ((num_emails, "email"), (num_ips, "ip"), (num_keys, "key")) if n]
    return rewrite_or_keep(text, new, "scrubbed: " + ", ".join(found), num_emails + num_ips + num_keys)


# --- exact dedup -----------------------------------------------------------------------


@dataclass
class ExactDedupConfig(StepConfig):
    pass


@step("exact_dedup", ExactDedupConfig, per_document=False)
def exact_dedup(train: list[StepDoc], held_out: list[StepDoc], c: ExactDedupConfig) -> list[Outcome]:
    """Exact dedup: a train document whose text (after the steps before) repeats an earlier one is removed."""
    first: dict[str, StepDoc] = {}
    out = []
    for doc in train:
        digest = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
        if digest in first:
            out.append(Outcome.remove("exact_duplicate", 1.0, cluster=digest[:16], kept_doc=first[digest].path))
        else:
            first[digest] = doc
            out.append(Outcome.keep(cluster=digest[:16]))
    return out


# --- near dedup: MinHash LSH (Broder 1997; Leskovec et al., Mining of Massive Datasets, ch. 3)

_EMPTY = np.uint64(1 << 40)  # the signature value of a text with no shingles: real values are < 2^32
# LSH only proposes candidate pairs; each is then decided on its exact shingle Jaccard, so the
# S-curve sits below the threshold: a pair exactly at the threshold shares a band with at least
# this chance (more rows per band would mean fewer chance candidates, and more missed duplicates).
LSH_CANDIDATE_RECALL = 0.99
MAX_BUCKET_CHECKS = 64  # a document is checked against at most this many earlier ones per bucket (bounds a crowded bucket)
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: the shingle polynomial's base, 2^64 / golden ratio
_BYTE_BASE = 0x100000001B3  # FNV-1's 64-bit prime: the words' polynomial base (odd, so invertible mod 2^64)
_BYTES_PER_BATCH = 1 << 18  # texts are hashed about this many UTF-8 bytes at a time: the per-byte arrays stay in cache
# str.split()'s whitespace: these ASCII bytes, and the non-ASCII spaces below (turned into " " first)
_SPACE_BYTES = np.zeros(256, dtype=bool)
_SPACE_BYTES[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_UNICODE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


@dataclass
class NearDedupConfig(StepConfig):
    threshold: float = 0.8  # Jaccard similarity of word shingles at or above which two documents are duplicates
    num_perm: int = 128  # MinHash permutations: more finds candidates more surely, linearly slower
    shingle_words: int = 5  # words per shingle (FineWeb and Gopher use 5-grams)
    seed: int = 1  # the permutations' seed

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a Jaccard similarity in (0, 1), got {self.threshold!r}")
        if not isinstance(self.num_perm, int) or self.num_perm < 16:
            raise ValueError(f"num_perm must be an integer >= 16, got {self.num_perm!r}")
        if not isinstance(self.shingle_words, int) or self.shingle_words < 1:
            raise ValueError(f"shingle_words must be a positive integer, got {self.shingle_words!r}")


def lsh_bands(threshold: float, num_perm: int, recall: float | None = None) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm. Without `recall`: the S-curve's midpoint
    (1/b)^(1/r) closest to the threshold. With it: the most rows per band (the fewest chance
    candidates) for which a pair exactly at the threshold shares a band with at least that
    chance, 1 - (1 - t^r)^b >= recall."""
    if recall is None:
        return min(
            ((b, num_perm // b) for b in range(1, num_perm + 1)),
            key=lambda br: (abs((1 / br[0]) ** (1 / br[1]) - threshold), -br[0] * br[1]),
        )
    for rows in range(num_perm, 1, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def minhash_backend() -> str:
    """rensa (Rust MinHash, the `data` extra) when installed, else the numpy one below; the
    name also versions the shingle hashing, since both end up in a build's address."""
    try:
        from importlib.metadata import version

        import rensa  # noqa: F401

        return f"rensa-{version('rensa')}/shingles-v2"
    except ImportError:
        return "numpy/shingles-v2"


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, in place: spreads every input bit over the output."""
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        x ^= x >> np.uint64(33)
        x *= np.uint64(mult)
    x ^= x >> np.uint64(33)
    return x


def _byte_powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B^i and B^-i mod 2^64 for i < n (B = _BYTE_BASE; uint64 products wrap mod 2^64 by design)."""
    up = np.full(n, _BYTE_BASE, dtype=np.uint64)
    down = np.full(n, pow(_BYTE_BASE, -1, 2**64), dtype=np.uint64)
    up[0] = down[0] = 1
    return np.cumprod(up, out=up), np.cumprod(down, out=down)


def _word_hashes(texts: list[str], powers: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(hash of every word of the texts in order, words per text, the powers grown if needed),
    all in numpy over the texts' UTF-8: no Python object per word. A word's hash is the
    polynomial sum(byte_j * B^(len-1-j)), read off prefix sums c_i = sum_{j<i} byte_j * B^-j as
    (c_end - c_start) * B^(end-1), then mixed."""
    data = [(t if t.isascii() else _UNICODE_SPACE.sub(" ", t)).lower().encode("utf-8", "surrogatepass") for t in texts]
    sizes = np.fromiter(map(len, data), dtype=np.int64, count=len(data)) + 1  # each text preceded by a "\n"
    b = np.frombuffer(b"\n" + b"\n".join(data) + b"\n", dtype=np.uint8)
    if len(powers[0]) < len(b) + 1:
        powers = _byte_powers(max(len(b) + 1, 2 * len(powers[0])))
    up, down = powers
    # word starts and ends alternate among the places where space and non-space meet
    space = _SPACE_BYTES[b]
    edges = np.flatnonzero(space[1:] != space[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    c = np.empty(len(b) + 1, dtype=np.uint64)
    c[0] = 0
    np.multiply(b, down[: len(b)], out=c[1:])
    np.cumsum(c, out=c)
    hashes = _fmix64((c[ends] - c[starts]) * up[ends - 1])
    counts = np.diff(np.searchsorted(starts, np.cumsum(sizes) - sizes + 1), append=len(starts))
    return hashes, counts, powers


def shingle_hashes(texts: list[str], shingle_words: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): the uint64 hashes of every text's word shingles (lower-cased, split at
    whitespace as str.split() does, shingle_words words each; a shorter text is one shingle of
    all its words), text i's at hashes[offsets[i]:offsets[i + 1]]. A shingle's hash is a
    polynomial in its words' hashes, so word order counts and whitespace does not."""
    parts, counts_of = [], []
    powers = _byte_powers(2 * _BYTES_PER_BATCH)
    batch, size = [], 0
    for i, text in enumerate(texts):
        batch.append(text)
        size += len(text)
        if size < _BYTES_PER_BATCH and i < len(texts) - 1:
            continue
        w, lengths, powers = _word_hashes(batch, powers)
        batch, size = [], 0
        # the polynomial of shingle_words consecutive word hashes at every position of the batch
        padded = np.concatenate((w, np.zeros(shingle_words - 1, dtype=np.uint64)))
        poly = padded[: len(w)].copy()
        for j in range(1, shingle_words):
            poly *= _MULT
            poly += padded[j : j + len(w)]
        # keep the positions whose shingle lies inside one text; a text shorter than a shingle is one shingle of all its words
        starts = np.cumsum(lengths) - lengths
        counts = np.where(lengths >= shingle_words, lengths - shingle_words + 1, np.minimum(lengths, 1))
        offsets = np.cumsum(counts) - counts
        out = poly[np.arange(counts.sum()) - np.repeat(offsets - starts, counts)]
        for k in np.flatnonzero((lengths > 0) & (lengths < shingle_words)).tolist():
            value = 0
            for h in w[starts[k] : starts[k] + lengths[k]].tolist():
                value = (value * int(_MULT) + h) % 2**64
            out[offsets[k]] = value
        parts.append(_fmix64(out))
        counts_of.append(counts)
    if not texts:
        return np.zeros(0, dtype=np.uint64), np.zeros(1, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(([0], np.cumsum(np.concatenate(counts_of))))


def _sign(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, backend: str) -> np.ndarray:
    out = np.full((len(offsets) - 1, num_perm), _EMPTY, dtype=np.uint64)
    if backend.startswith("rensa"):
        import rensa

        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets.astype(np.uint64), num_perm, seed)
        out[:] = np.array(matrix.to_rows(), dtype=np.uint64).reshape(out.shape)
        out[offsets[1:] == offsets[:-1]] = _EMPTY
        return out
    # multiply-shift hashing (Dietzfelbinger et al. 1997): (a * h + b) mod 2^64, top 32 bits,
    # with random 64-bit a (odd) and b per permutation; uint64 arithmetic wraps mod 2^64 by design
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    chunk = 4096  # shingles per step: a [chunk, num_perm] uint64 block, 4 MiB at 128 permutations
    for i in range(len(out)):
        for lo in range(offsets[i], offsets[i + 1], chunk):
            h = hashes[lo : min(lo + chunk, offsets[i + 1])]
            np.minimum(out[i], ((a[None, :] * h[:, None] + b[None, :]) >> np.uint64(32)).min(axis=0), out=out[i])
    return out


def minhash_signatures(texts: list[str], num_perm: int, shingle_words: int, seed: int, backend: str | None = None) -> np.ndarray:
    """[len(texts), num_perm] uint64 MinHash signatures of the texts' word shingles; a text
    with no words gets a row of _EMPTY, which no real signature value equals."""
    return _sign(*shingle_hashes(texts, shingle_words), num_perm, seed, backend or minhash_backend())


@step("near_dedup", NearDedupConfig, per_document=False)
def near_dedup(train: list[StepDoc], held_out: list[StepDoc], c: NearDedupConfig) -> list[Outcome]:
    """Near dedup: MinHash LSH proposes pairs, their exact word-shingle Jaccard decides; each cluster keeps its first document."""
    hashes, offsets = shingle_hashes([d.text for d in train], c.shingle_words)
    sigs = _sign(hashes, offsets, c.num_perm, c.seed, minhash_backend())
    bands, rows = lsh_bands(c.threshold, c.num_perm, recall=LSH_CANDIDATE_RECALL)
    distinct: dict[int, np.ndarray] = {}  # sorted distinct shingle hashes, for the documents in some candidate pair

    def shingle_set(k: int) -> np.ndarray:
        if k not in distinct:
            h = np.sort(hashes[offsets[k] : offsets[k + 1]])
            distinct[k] = h[np.concatenate(([True], h[1:] != h[:-1]))]
        return distinct[k]

    def jaccard(i: int, j: int) -> float:
        small, large = sorted((shingle_set(i), shingle_set(j)), key=len)
        found = np.minimum(np.searchsorted(large, small), len(large) - 1)
        shared = int(np.count_nonzero(large[found] == small))
        return shared / (len(small) + len(large) - shared)

    parent = list(range(len(train)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    present = np.flatnonzero(offsets[1:] > offsets[:-1])  # no shingles: nothing to compare
    checked: set[tuple[int, int]] = set()
    copies: set[int] = set()  # documents with the same shingle set as an earlier one: the earlier one stands for them in buckets
    # a band's rows folded into one 64-bit key (odd multipliers, wrapping sum); a chance collision only costs a check
    fold = np.random.default_rng(0).integers(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    for band in range(bands):
        keys = (sigs[present, band * rows : (band + 1) * rows] * fold).sum(axis=1, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")  # stable: each bucket lists its documents in corpus order
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        starts, ends = np.concatenate(([0], bounds)), np.concatenate((bounds, [len(keys)]))
        for lo, hi in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            earlier: list[int] = []
            for i in present[order[lo:hi]].tolist():
                for j in earlier[-MAX_BUCKET_CHECKS:]:
                    if find(i) != find(j) and (j, i) not in checked:
                        checked.add((j, i))
                        similarity = jaccard(j, i)
                        if similarity == 1.0:
                            copies.add(i)
                        if similarity >= c.threshold:
                            ri, rj = find(i), find(j)
                            parent[max(ri, rj)] = min(ri, rj)  # the root is the cluster's first document
                if i not in copies:
                    earlier.append(i)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(train)):
        members[find(i)].append(i)
    out = []
    for i, doc in enumerate(train):
        root = find(i)
        cluster = f"{root}" if len(members[root]) > 1 else None
        if root == i:
            out.append(Outcome.keep(cluster=cluster))
        else:  # the score: exact Jaccard with the kept document (under the threshold when joined through others)
            out.append(Outcome.remove("near_duplicate", round(jaccard(root, i), 4), cluster=cluster, kept_doc=train[root].path))
    return out


# --- repeated-line / boilerplate removal -----------------------------------------------


@dataclass
class BoilerplateConfig(StepConfig):
    min_docs: int = 10  # a line in at least this many train documents of a domain is boilerplate (license headers, banners)
    min_line_chars: int = 30  # shorter lines ("import os", "else:") repeat because they are the language, not boilerplate

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.min_docs, int) or self.min_docs < 2:
            raise ValueError(f"min_docs must be an integer >= 2 (a line in one document is not repeated), got {self.min_docs!r}")
        _positive("min_line_chars", self.min_line_chars)


@step("boilerplate", BoilerplateConfig, per_document=False)
def boilerplate(train: list[StepDoc], held_out: list[StepDoc], c: BoilerplateConfig) -> list[Outcome]:
    """Boilerplate removal: lines repeated verbatim across many train documents of a domain are cut out."""
    doc_freq: dict[str, Counter] = defaultdict(Counter)
    for doc in train:
        doc_freq[doc.domain].update({s for line in doc.text.split("\n") if len(s := line.strip()) >= c.min_line_chars})
    out = []
    for doc in train:
        freq = doc_freq[doc.domain]
        lines = doc.text.split("\n")
        kept = [line for line in lines if len(line.strip()) < c.min_line_chars or freq[line.strip()] < c.min_docs]
        removed = len(lines) - len(kept)
        out.append(rewrite_or_keep(doc.text, "\n".join(kept), f"{removed} boilerplate line(s)", removed))
    return out


# --- decontamination (GPT-3's n-gram overlap, Brown et al. 2020, appendix C) -----------


@dataclass
class DecontaminateConfig(StepConfig):
    ngram: int = 13  # words per n-gram: GPT-3 used 13; shorter n flags common phrases
    min_overlaps: int = 1  # shared n-grams with val/test that make a train document contaminated

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.ngram, int) or self.ngram < 1:
            raise ValueError(f"ngram must be a positive integer, got {self.ngram!r}")
        if not isinstance(self.min_overlaps, int) or self.min_overlaps < 1:
            raise ValueError(f"min_overlaps must be a positive integer, got {self.min_overlaps!r}")


def _ngram_hashes(text: str, n: int) -> set[int]:
    ws = words(text.lower())
    return {hash(tuple(ws[i : i + n])) for i in range(len(ws) - n + 1)}


@step("decontaminate", DecontaminateConfig, per_document=False)
def decontaminate(train: list[StepDoc], held_out: list[StepDoc], c: DecontaminateConfig) -> list[Outcome]:
    """Decontamination: a train document sharing word n-grams with the val or test split is removed."""
    evaluated: set[int] = set()
    for doc in held_out:
        evaluated |= _ngram_hashes(doc.text, c.ngram)
    out = []
    for doc in train:
        shared = len(_ngram_hashes(doc.text, c.ngram) & evaluated)
        out.append(Outcome.remove("eval_overlap", shared) if shared >= c.min_overlaps else Outcome.keep(shared))
    return out


# --- language identification: its own module (lingua, the `data` extra); importing it registers `language_id`
from . import langid  # noqa: E402, F401
