"""Typed inputs of the LLM tools (research/tools.py): one pydantic model per tool.

Each model is both the contract and the check. Its JSON schema is the tool's
`input_schema` that the LLM sees, and `parse()` validates what the LLM sends back, so a
malformed call (a list where the patch string goes, a missing hypothesis, an unknown key,
a NaN weight) becomes one readable tool error before any lab code runs:

    args = parse(ProposeCodePatch, {"hypothesis": "h", "rationale": "r", "patch": ["--- a/x"]})
    # ToolInputError: patch: Input should be a valid string (got list)

Checks that need the lab (recipe keys, corpus domains, the patch allow-list) stay in the
tools themselves and raise ValueError too; the agent loop treats both the same way.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, ValidationError, WithJsonSchema,
                      model_validator)

from ..data.steps import STEPS
from .data_experiments import MAX_SAMPLE_CHARS, MAX_SAMPLE_DOCS, MAX_STEPS

# read_code pages: whole lines, at most this many per call (a 480-line trainer is 2 pages)
READ_CODE_PAGE_LINES = 300
READ_CODE_MAX_LINES = 1000

# Bounds on what one reply may put in the ledger and the next prompts (a hypothesis is a table cell, a rationale a
# paragraph; a whole-file rewrite of the trainer is some 40,000 characters of diff)
MAX_HYPOTHESIS_CHARS = 2_000
MAX_RATIONALE_CHARS = 10_000
MAX_PATCH_CHARS = 150_000
MAX_NOTE_CHARS = 20_000  # the ledger's own cap on a note (ledger/store.py MAX_TEXT)
MAX_CHANGES = 32  # keys of one config proposal: an experiment is an ablation, not a new recipe
MAX_VALUE_CHARS = 1_000  # a recipe field's string value (a compile mode, a name)
MAX_ERRORS_SHOWN = 5  # a tool error lists this many bad fields, then how many more

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _bounded(max_length: int) -> Any:
    return Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=max_length)]


RECIPE_KEY = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")


def _recipe_key(key: str) -> str:
    # as the recipe spells its keys: no padding (" budget.tokens" would be read as budget.tokens past the lab's checks),
    # no look-alike letters, no "=", brackets or spaces
    if len(key) > 100 or not RECIPE_KEY.fullmatch(key):
        raise ValueError(f"{key[:100]!r} is not a dotted recipe key (lowercase ASCII letters, digits, _ and dots, e.g. optim.lr)")
    return key


RecipeKey = Annotated[str, AfterValidator(_recipe_key)]


def _scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if not isinstance(value, (str, bool, int, float)):
        raise ValueError(f"must be a string, number or boolean (got {type(value).__name__})")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise ValueError(f"a string of {len(value):,} characters: a recipe value has at most {MAX_VALUE_CHARS:,}")
    return value


# A recipe field's new value; the recipe's own checks decide whether it fits the field.
# One validator instead of a str|bool|int|float union: a union reports one error per member.
ConfigValue = Annotated[Any, PlainValidator(_scalar), WithJsonSchema({"type": ["string", "number", "boolean"]})]
Weight = Annotated[float, Field(ge=0)]


class ToolInputError(ValueError):
    """The model's tool input does not match the tool's schema."""


class ToolInput(BaseModel):
    # strict: no silent coercion ("0.05" stays a string, 1.0 is not an int);
    # extra=forbid: a misspelt key is an error, not an ignored field;
    # allow_inf_nan=False: JSON parsers accept NaN/Infinity, a recipe must not.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Why(ToolInput):
    hypothesis: _bounded(MAX_HYPOTHESIS_CHARS) = Field(description="A falsifiable prediction: what this change does to val_bpb and why.")
    rationale: _bounded(MAX_RATIONALE_CHARS) = Field(description="The evidence you looked at (runs, doctor findings, curves, code lines).")


class ProposeConfig(Why):
    changes: dict[RecipeKey, ConfigValue] = Field(min_length=1, max_length=MAX_CHANGES, description='Dotted recipe keys to new values, e.g. {"optim.lr": 0.02}.')


class ProposeCodePatch(Why):
    patch: _bounded(MAX_PATCH_CHARS) = Field(description="A unified diff (git diff format) against src/pretrainlab/model/ or src/pretrainlab/train/.")


class ProposeDataMixture(Why):
    weights: dict[Text, Weight] = Field(min_length=1, description='Domain sampling weights (finite, >= 0), e.g. {"code": 1, "docs": 2}.')

    @model_validator(mode="after")
    def _some_positive(self):
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("weights are all zero: give at least one domain a positive weight")
        return self


# One data step: {"step": name, parameter: value, ...}; research/data_experiments.py bounds names and values, the data
# recipe's own checks (data/recipe.py) judge them. The schema lists the step kinds the lab has.
DataStep = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "required": ["step"],
    "properties": {"step": {"type": "string", "enum": sorted(STEPS)}, "domains": {"type": "array", "items": {"type": "string"}}},
    "additionalProperties": {"type": ["string", "number", "boolean", "array"]}})]


class ProposeDataRecipe(Why):
    steps: list[DataStep] = Field(max_length=MAX_STEPS, description=(
        'The data recipe\'s full ordered steps, replacing the current ones (corpus_report shows them), e.g. '
        '[{"step": "gopher_quality", "domains": ["docs"], "min_words": 80}, {"step": "near_dedup", "threshold": 0.7}]. '
        'The sources, splits and tokenizer stay the base corpus\'s: validation and test data never change.'))
    weights: dict[Text, Weight] | None = Field(None, description="Optional domain sampling weights for the new corpus.")


class CorpusReport(ToolInput):
    experiment_id: Text | None = Field(None, description="An experiment of this campaign whose corpus to report; default: the incumbent's.")


class SampleDocuments(ToolInput):
    experiment_id: Text | None = Field(None, description="An experiment of this campaign whose corpus to sample; default: the incumbent's.")
    domain: Text | None = None
    fate: Literal["kept", "rewritten", "removed"] | None = Field(None, description="Train documents only: held-out ones are never shown.")
    step: Text | None = Field(None, description="Documents removed or rewritten by this step, e.g. gopher_quality.")
    rule: Text | None = Field(None, description="...by this rule of the step, e.g. too_few_words.")
    min_score: float | None = Field(None, description="The step's score of the document is at least this.")
    max_score: float | None = Field(None, description="...and at most this.")
    num_docs: int = Field(3, ge=1, le=MAX_SAMPLE_DOCS)
    max_chars: int = Field(1500, ge=100, le=MAX_SAMPLE_CHARS, description="Characters of each document shown.")
    seed: int = Field(0, ge=0, description="Another seed draws other documents.")


class ListRuns(ToolInput):
    status: Text | None = Field(None, description="Only runs with this status, e.g. ok or failed.")
    limit: int = Field(20, ge=1, le=200, description="At most this many runs.")


class CompareRuns(ToolInput):
    run_ids: list[Text] = Field(min_length=2, max_length=6, description="2 to 6 run ids.")


class RunRef(ToolInput):
    run_id: Text


class ReadCode(ToolInput):
    path: Text = Field(description="Package-relative path, e.g. model/gpt.py or train/trainer.py.")
    offset: int = Field(1, ge=1, description="First line to return (1-based).")
    limit: int = Field(READ_CODE_PAGE_LINES, ge=1, le=READ_CODE_MAX_LINES, description="At most this many lines.")


class WriteNote(ToolInput):
    text: _bounded(MAX_NOTE_CHARS)


class FitScalingLaw(ToolInput):
    ladder: Text | None = Field(None, description="A scaling ladder's id or name (`pretrainlab scaling ladder`): fit its runs. "
                                "Default: this campaign's finished runs (every recipe in it shares one law: a ladder fits cleaner).")
    flops: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list, max_length=6,
                                                       description="Compute budgets in FLOPs (C = 6ND) to give the compute-optimal N "
                                                       "and D for. Default: the largest run's order of magnitude, 10x and 100x it.")
    params: Literal["total", "non-embedding"] = Field("total", description="Count N as total parameters (Hoffmann et al.) or "
                                                      "without the embedding tables (Kaplan et al.).")


def input_schema(model: type[ToolInput]) -> dict:
    """The model's JSON schema as a tool's input_schema: self-contained (no $ref) and
    without pydantic's titles, which only repeat the field names."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return clean(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: clean(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(raw)


def parse(model: type[ToolInput], args: Any) -> ToolInput:
    """The validated input, or ToolInputError with one line naming each bad field."""
    if not isinstance(args, dict):
        raise ToolInputError(f"tool input must be a JSON object, got {type(args).__name__} {str(args)[:80]!r}")
    try:
        return model.model_validate(args)
    except ValidationError as e:
        errors = e.errors()  # a reply's 100,000 bad list items make one short error, not a long one
        more = f"; and {len(errors) - MAX_ERRORS_SHOWN:,} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ToolInputError("; ".join(_describe(err, model) for err in errors[:MAX_ERRORS_SHOWN]) + more) from None


def _describe(err: dict, model: type[ToolInput]) -> str:
    loc = err["loc"][:1] if err["loc"][-1:] == ("[key]",) else err["loc"]  # a bad key: its dict's name, the message quotes it
    field = ".".join(str(part)[:100] for part in loc) or "input"
    if err["type"] == "missing":
        return f"{field}: required field is missing"
    if err["type"] == "extra_forbidden":
        return f"{field}: unknown field; {model.__name__} takes {', '.join(model.model_fields)}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    return f"{field}: {msg}" + (f" (got {type(got).__name__})" if err["type"].endswith("_type") else "")
