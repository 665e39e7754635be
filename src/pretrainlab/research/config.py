"""The settings of the campaign kinds, `research start` (CampaignConfig), `research mixture`
(MixtureConfig) and `scaling ladder` (LadderConfig): plain dataclasses, light to import,
validated on construction with one-line errors. Each field's doc is its flag's help: the CLI
generates the flags from these fields."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..config import Recipe, apply_overrides, doc
from ..errors import UserError
from ..runners import RUNNERS

# the SLURM settings of --runner slurm (runners/slurm.py: SlurmSettings, from the profile with the flags over it)
SLURM_FIELDS = ("slurm_profile", "slurm_partition", "slurm_account", "slurm_time", "slurm_cpus_per_run", "slurm_gpus_per_run")
# what `research resume` may change in a campaign's settings
RESUMABLE = ("budget_runs", "budget_hours", "parallel", "gpus", "runner", "ray_address", *SLURM_FIELDS, "run_memory", "run_disk", "spend_cap_usd",
             "spend_cap_tokens")
RUNNER_DOC = ("where runs train: local (processes on this machine), ray (a Ray cluster) or slurm (jobs on a SLURM cluster): "
              "docs/scale.md")
RAY_ADDRESS_DOC = ("--runner ray: the cluster (host:port, ray://host:10001, or auto for the one running here); "
                   "default: env RAY_ADDRESS, else a new Ray instance on this machine")
GPUS_DOC = ("comma-separated GPU indices, one per slot (e.g. 0,1,2,3); with --runner ray or slurm any list (e.g. 0) gives "
            "each slot one GPU, placed by the cluster; default: CPU processes")
SLURM_PROFILE_DOC = ("--runner slurm: a TOML file of SLURM settings (partition, account, qos, time, cpus_per_run, gpus_per_run, "
                     "mem_gb, constraint, setup, sbatch, arrays: docs/scale.md); the --slurm-* flags override it")
SLURM_PARTITION_DOC = "--runner slurm: the partition runs go to (default: the profile's, else the cluster's default)"
SLURM_ACCOUNT_DOC = "--runner slurm: the account the jobs are charged to (sbatch --account)"
SLURM_TIME_DOC = ("--runner slurm: each run's job time limit, minutes or [D-]HH:MM:SS (default: the run's timeout plus time to "
                  "checkpoint); a run still going at the limit checkpoints and is requeued")
SLURM_CPUS_DOC = "--runner slurm: CPUs per run, its training threads on CPU (default 1)"
SLURM_GPUS_DOC = "--runner slurm: GPUs per run, 0 or 1 (default: 1 with --gpus, else 0)"
RUN_MEMORY_DOC = ("memory each run's processes may use together (8G, 512M, off); auto: 90% of the machine's RAM split over the "
                  "runs beside each other (with --runner slurm, 90% of the profile's mem_gb where it gives one); a run past it is "
                  "killed and recorded as crashed, out of memory")
RUN_DISK_DOC = ("what each run may write in its run directory (50G, 800M, off); auto: half the space free on its disk when it "
                "starts, split like --run-memory; a run past it is killed and recorded as crashed")

# the mixture search (research/mixture.py)
TOP_MIXTURES = 100  # the recommendation is the mean of this many best-predicted mixtures of the pool
POOL_SIZE = 20_000  # candidate mixtures searched (draws from the proxies' distribution)
NUM_RESAMPLES = 200  # bootstrap resamples of the proxy runs for the recommendation's uncertainty
CONCENTRATION = (2.0, 40.0)  # total Dirichlet concentration, drawn log-uniformly: 2 spreads to the corners, 40 stays close


@dataclass
class Execution:
    """Where a campaign's runs go: slots, GPUs and the runner (local, Ray, SLURM). Research and
    mixture campaigns both take these settings (and their flags)."""

    parallel: int = doc("runs in flight at once (CPU: cores split fairly)", 2)
    gpus: list[int] | None = doc(GPUS_DOC, None)
    runner: str = doc(RUNNER_DOC, "local")
    ray_address: str | None = doc(RAY_ADDRESS_DOC, None)
    slurm_profile: str | None = doc(SLURM_PROFILE_DOC, None)
    slurm_partition: str | None = doc(SLURM_PARTITION_DOC, None)
    slurm_account: str | None = doc(SLURM_ACCOUNT_DOC, None)
    slurm_time: str | None = doc(SLURM_TIME_DOC, None)
    slurm_cpus_per_run: int | None = doc(SLURM_CPUS_DOC, None)
    slurm_gpus_per_run: int | None = doc(SLURM_GPUS_DOC, None)
    run_memory: str = doc(RUN_MEMORY_DOC, "auto")
    run_disk: str = doc(RUN_DISK_DOC, "auto")


@dataclass
class CampaignConfig(Execution):
    """A campaign's settings. Each field's doc is its `research start` flag's help: the CLI
    generates the flags from these fields (cli.py, _config_flags)."""

    recipe: str = doc("starting recipe: a name or a recipe.json", "tiny-cpu")
    overrides: list[str] = doc("override the starting recipe (repeatable)", [])
    goal: str = doc("the metric to lower (val_bpb)", "val_bpb")
    budget_runs: int = doc("training runs in total, baseline replicates included", 40)
    budget_hours: float = doc("wall-clock cap for the campaign (0 = none)", 0.0)
    # tokens by default: a wall-clock budget trains seed-matched runs different token counts when the machine's load
    # varies, and the pairing then no longer cancels seed noise (the lab's own campaigns: corr(d log tokens, d bpb) -0.98)
    run_budget: str = doc("per run: tokens (e.g. 2e6tok, 300ktok: runs compare fairly on a busy machine) or seconds (60s, 5m: "
                          "what a run reaches in that time, throughput included, but a varying load skews seed-matched pairs)",
                          "8e4tok")
    # under a token budget, a change that widens the model would otherwise win on its extra compute (and be charged one run)
    compare_at: str = doc("with a token --run-budget, what every run gets the same of: flops (the base recipe's tokens times "
                          "its FLOPs per token, so a wider model trains fewer tokens: changes compete at equal compute) or "
                          "tokens (every run trains the same tokens, whatever its model costs)", "flops")
    strategy: str = doc("auto (claude if ANTHROPIC_API_KEY is set, else optuna), claude, openai, optuna, random, manual", "auto")
    seeds: int = doc("replicates for the baseline and each confirmation", 3)
    alpha: float = doc("two-sided significance level of a decision", 0.05)
    max_looks: int = doc("paired/welch: confirmation rounds per experiment (sequential looks, alpha split between them)", 2)
    # a 1-seed screen earns replicates only if it is <= the incumbent's value (its seed-0 run when paired, else its
    # mean) + this many seed std. At 0 a no-effect change passes half the time (vs 98% at 2), while a change big
    # enough for the replicated test to confirm still passes almost always: the budget goes to likely winners.
    screen_margin: float = doc("paired/welch: a 1-seed screen earns replicates if <= the incumbent's mean + this many seed std", 0.0)
    # "screen": 1-seed screens move the incumbent on their posterior probability of improvement, claims come from a
    # confirmation phase on fresh seeds (research/policy.py); "paired": seed-matched runs (common random numbers),
    # paired t-test on every candidate; "welch": unpaired replicates, Welch's t-test; "greedy": one seed, keep if lower
    # (the autoresearch rule, for comparison)
    decision: str = doc("screen (1-seed screens move the incumbent, a confirmation phase on fresh seeds records the claims: "
                        "default), paired (t-test over seed-matched replicates for every candidate), welch (unpaired "
                        "replicates), or greedy (one seed, keep if lower: for comparison)", "screen")
    # 0.013 measured on tiny-cpu at 80k tokens (docs/benchmarks.md); the confirmation phase measures it again and records it
    screen_noise: float = doc("screen: std of the seed-matched difference between two recipes' runs (bpb), the prior the "
                              "screens are judged with", 0.013)
    adopt_p: float = doc("screen: move the incumbent when P(candidate better than its parent) reaches this", 0.5)
    rung_stop: float = doc("screen: stop a screen trailing its parent by more than this (bpb) at the half-budget rung", 0.06)
    # the run that won the adoption was selected for luck and would be too high a bar for the next candidates
    fresh_reference: bool = doc("screen: an adopted incumbent runs once more on an unused seed, and its children are "
                                "screened there", False)
    sweep: bool = doc("screen, with optuna or random: start with a one-key sweep of the search space", True)
    transfer: list[str] = doc("a larger rung (e.g. --transfer model.n_layer=8 --transfer model.n_embd=256): winners must "
                              "win there too", [])
    transfer_ladder: str | None = doc("a scaling ladder (id or name, `pretrainlab scaling ladder`) whose fitted law predicts "
                                      "each transfer check's outcome before it is measured", None)
    early_stop: bool = doc("stop clear losers at the half-budget rung", True)
    approve_code: bool = doc("hold code patches until `research approve`", False)
    strategy_seed: int = doc("seed of the strategy's proposals (optuna, random)", 0)
    max_changes: int = doc("keys an optuna/random proposal changes at once (0: the whole search space)", 2)
    llm_model: str | None = doc("model id for claude/openai (default claude-opus-5)", None)
    llm_base_url: str | None = doc("API base URL (an OpenAI-compatible server for --strategy openai)", None)
    spend_cap_usd: float = doc("stop asking the LLM after this spend in dollars (whole campaign, resumes included)", 25.0)
    spend_cap_tokens: int = doc("stop asking the LLM after this many tokens (whole campaign, resumes included)", 5_000_000)

    def __post_init__(self):
        check_finite(self)
        if self.goal != "val_bpb":
            raise UserError(f"--goal {self.goal!r}: the lab optimises val_bpb (lower is better); use --goal val_bpb")
        if self.budget_runs < self.seeds + 1:
            raise UserError(f"--budget-runs {self.budget_runs} leaves nothing after the {self.seeds}-seed baseline: "
                            f"give at least {self.seeds + 1}")
        if self.budget_hours < 0:
            raise UserError(f"--budget-hours must be >= 0, got {self.budget_hours}")
        if self.spend_cap_usd < 0 or self.spend_cap_tokens < 0:
            raise UserError("--spend-cap-usd and --spend-cap-tokens must be >= 0")
        if self.decision not in DECISIONS:
            raise UserError(f"--decision {self.decision!r}: use screen (screened moves, confirmed claims: the default), paired "
                            "(seed-matched t-test on every candidate), welch (unpaired), or greedy (single seed, for comparison)")
        if self.compare_at not in COMPARE_AT:
            raise UserError(f"--compare-at {self.compare_at!r}: use flops (equal compute per run: the default) or tokens "
                            "(equal tokens per run)")
        if self.transfer and self.decision == "screen":
            raise UserError("--transfer checks a replicated winner at a larger rung: use it with --decision paired (or welch)")
        if self.screen_noise < 0 or not 0 < self.adopt_p < 1 or self.rung_stop <= 0:
            raise UserError("--screen-noise must be >= 0, --adopt-p in (0, 1) and --rung-stop > 0")
        check_runner(self.runner, self.ray_address, self.gpus, self.parallel)
        check_run_memory(self.run_memory, self.run_disk)
        check_slurm(self)
        if self.parallel < 1 or (self.seeds < 2 and self.decision != "greedy"):
            raise UserError("--parallel must be >= 1 and --seeds >= 2 (a t-test needs two replicates)")
        if self.screen_margin < 0:
            raise UserError(f"--screen-margin must be >= 0 (in seed standard deviations), got {self.screen_margin}")
        if self.max_changes < 0:
            raise UserError(f"--max-changes must be >= 0 (0 changes the whole search space), got {self.max_changes}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"--alpha must be in (0, 0.5), got {self.alpha}")
        check_run_budget_and_transfer(self.run_budget, self.transfer)
        if self.transfer_ladder and not self.transfer:
            raise UserError("--transfer-ladder predicts transfer checks: add the larger rung with --transfer KEY=VALUE")

    def base_recipe(self) -> Recipe:
        """The starting recipe; with early stopping on, runs also evaluate at half of
        their budget (the rung) unless the recipe already sets train.eval_every_frac."""
        from ..recipes import resolve_recipe

        recipe = resolve_recipe(self.recipe, [*self.overrides, *run_budget_overrides(self.run_budget)])
        if self.early_stop and not recipe.train.eval_every_frac:
            recipe.train.eval_every_frac = 0.5
        if self.equal_flops():
            recipe = at_equal_flops(with_corpus_vocab(recipe), recipe.budget.tokens, None)
        return recipe

    def equal_flops(self) -> bool:
        """Whether the runs get equal FLOPs: a token run budget turned into the base's FLOPs (compare_at)."""
        return self.compare_at == "flops" and run_budget_overrides(self.run_budget)[0].startswith("budget.tokens=")


def at_rung(recipe: Recipe, transfer: list[str], incumbent: Recipe, base: Recipe, equal_flops: bool) -> Recipe:
    """`recipe` at a transfer check's larger rung (`transfer` applied). With equal-FLOP runs and no budget of the rung's
    own in `transfer`, every recipe there gets the FLOPs the incumbent spends there on the campaign's tokens: the larger
    rung's compute, split equally (the same FLOPs as the small rung would make a larger model train fewer tokens)."""
    from ..recipes import budget_tokens

    large = apply_overrides(recipe, transfer)
    if not equal_flops or any(o.split("=", 1)[0].strip().startswith("budget.") for o in transfer):
        return large
    return at_equal_flops(large, budget_tokens(base), apply_overrides(incumbent, transfer))


def at_equal_flops(recipe: Recipe, tokens: float, reference: Recipe | None) -> Recipe:
    """`recipe` with the FLOP budget `reference` (default: `recipe`) spends on `tokens` tokens (and no token budget): a run
    of a wider model trains fewer tokens, one of a recipe with the reference's shape exactly `tokens` (the trainer counts
    FLOPs per token as estimate_flops_per_token does, with the corpus's vocabulary: with_corpus_vocab)."""
    from ..recipes import estimate_flops_per_token

    fpt = estimate_flops_per_token(reference or recipe)
    return apply_overrides(recipe, [f"budget.flops={round(tokens) * fpt}", "budget.tokens=0"])


def with_corpus_vocab(recipe: Recipe) -> Recipe:
    """`recipe` with model.vocab_size set to its corpus's vocabulary, as the trainer sets it, when it is unset and the
    corpus is prepared: the FLOP count of a recipe whose data.tokenizer does not name its corpus's tokenizer (a prepared
    BPE corpus given by path, with the default 'byte') would otherwise use the wrong vocabulary."""
    import json

    if recipe.model.vocab_size is not None:
        return recipe
    if recipe.data.corpus == "builtin":
        from ..data import builtin_corpus_dir

        path = builtin_corpus_dir(recipe.data.tokenizer.replace(":", ""))
    else:
        path = Path(recipe.data.corpus).expanduser()
    try:
        vocab = json.loads((path / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return recipe  # not prepared yet: the tokenizer's name says it (the trainer checks the corpus when it starts)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or not 0 < vocab <= 1 << 21:
        return recipe
    return apply_overrides(recipe, [f"model.vocab_size={vocab}"])


def check_finite(cfg) -> None:
    """NaN passes every `x < 0` check and `spent >= nan` is never true (a NaN spend cap would never stop a
    model): every number of a settings object must be finite, whichever face it came from."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--{f.name.replace('_', '-')} {v}: give a finite number")


def check_runner(runner: str, ray_address: str | None, gpus: list[int] | None, parallel: int) -> None:
    """A runner that exists, an address only for Ray, and (local) one listed GPU per slot."""
    if runner not in RUNNERS:
        raise UserError(f"--runner {runner!r}: use one of {', '.join(RUNNERS)}")
    if ray_address and runner != "ray":
        raise UserError("--ray-address names a Ray cluster: add --runner ray, or drop --ray-address")
    if runner == "local" and gpus is not None and len(gpus) < parallel:
        raise UserError(f"--parallel {parallel} needs {parallel} GPUs, --gpus lists {len(gpus)}: lower --parallel or list more")
    cores = os.cpu_count() or 1
    if runner == "local" and gpus is None and parallel > max(8, 4 * cores):  # each slot a process of its own: 100,000 is a fork bomb
        raise UserError(f"--parallel {parallel}: this machine has {cores} cores; local CPU slots stay within {max(8, 4 * cores)} "
                        "(use --runner ray or slurm for more)")


def check_run_memory(memory: str, disk: str) -> None:
    """--run-memory and --run-disk: auto, off, or a size a run can work in."""
    from ..runners.limits import parse_disk, parse_memory

    for setting, parse in ((memory, parse_memory), (disk, parse_disk)):
        if str(setting).strip().lower() != "auto":
            try:
                parse(setting)
            except ValueError as e:
                raise UserError(f"--run-{e}") from None


def check_slurm(cfg) -> None:
    """--slurm-* settings only with --runner slurm; with it, a profile file and flags that are
    valid (read now, before anything heavy is imported). The profile's path is made absolute."""
    given = [f for f in SLURM_FIELDS if getattr(cfg, f) is not None]
    if cfg.runner != "slurm":
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is a SLURM setting: add --runner slurm, or drop it")
        return
    from ..runners import slurm_settings

    if cfg.slurm_profile:  # kept in the campaign's record: a resume from another directory reads the same file
        cfg.slurm_profile = str(Path(cfg.slurm_profile).expanduser().resolve())
    slurm_settings(cfg)


def check_run_budget_and_transfer(run_budget: str, transfer: list[str]) -> None:
    """A run budget and --transfer overrides that parse, else UserError naming the flag."""
    run_budget_overrides(run_budget)
    if transfer:
        try:
            apply_overrides(Recipe(), transfer)
        except ValueError as e:
            raise UserError(f"--transfer: {e}") from None


DECISIONS = ("screen", "paired", "welch", "greedy")  # --decision's rules (research/decide.py)
COMPARE_AT = ("flops", "tokens")  # --compare-at: what runs get equal of under a token run budget
MAX_RUN_TOKENS = 1e14  # more than any model has been trained on: a run budget beyond it is a typo, and its run never ends
MAX_RUN_SECONDS = 30 * 86400  # a month per run


def run_budget_overrides(spec: str) -> list[str]:
    """'60s' / '5m' / '1h' -> budget.seconds; '2e6tok' -> budget.tokens. The run budget is
    the only budget: the recipe's other budget fields are cleared."""
    s = spec.strip().lower()
    overrides = _run_budget(spec, s)
    key, value = overrides[0].split("=")
    if float(value) > (MAX_RUN_TOKENS if key == "budget.tokens" else MAX_RUN_SECONDS):
        raise UserError(f"--run-budget {spec!r} is longer than any run can be (at most {MAX_RUN_TOKENS:.0e} tokens or "
                        f"{MAX_RUN_SECONDS // 86400} days): check its unit (60s, 5m, 2e6tok, 300ktok)")
    return overrides


def _run_budget(spec: str, s: str) -> list[str]:
    try:
        if s.endswith("tok"):  # 2e6tok, 2mtok, 30ktok
            count = s[:-3].strip()
            scale = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}.get(count[-1:], 1.0)
            tokens = float(count[:-1] if scale != 1.0 else count) * scale
            if not (math.isfinite(tokens) and tokens >= 1):
                raise ValueError
            return [f"budget.tokens={int(tokens)}", "budget.seconds=0", "budget.flops=0"]
        unit = {"s": 1, "m": 60, "h": 3600}.get(s[-1:])
        value = float(s[:-1]) * unit if unit else float(s)
        if not (math.isfinite(value) and value > 0):  # NaN passes `<= 0`: its runs trained 0 steps and a sweep was kept
            raise ValueError
        return [f"budget.seconds={value:g}", "budget.tokens=0", "budget.flops=0"]
    except (ValueError, OverflowError):
        raise UserError(f"--run-budget {spec!r}: use seconds like 60s / 5m or tokens like 2e6tok / 300ktok") from None


@dataclass
class MixtureConfig(Execution):
    """A mixture campaign's settings; each field's doc is its `research mixture` flag's help
    (the CLI generates the flags from these fields)."""

    recipe: str = doc("the proxies' recipe: a name or a recipe.json", "tiny-cpu")
    overrides: list[str] = doc("override the recipe (repeatable)", [])
    proxies: int = doc("proxy runs on sampled mixtures (the natural and uniform ones included)", 24)
    run_budget: str = doc("per run: tokens (4e4tok) or seconds (60s)", "4e4tok")
    confirm_seeds: int = doc("seeds of each confirmation arm: recommended, natural, uniform (never used by a proxy)", 3)
    target: list[str] = doc("comma-separated domains whose mean val_bpb to minimise (default: the overall val_bpb)", [])
    transfer: list[str] = doc("a larger rung where the confirmation runs again (e.g. --transfer model.n_layer=8 "
                              "--transfer model.n_embd=256)", [])
    alpha: float = doc("two-sided significance level of each claim", 0.05)
    design_seed: int = doc("seed of the sampled mixtures, the search and the bootstrap", 0)
    concentration: list[float] = doc("[low, high] total Dirichlet concentration of the sampled mixtures", list(CONCENTRATION))
    pool_size: int = doc("mixtures searched for the best prediction", POOL_SIZE)
    top: int = doc("the recommendation averages this many best-predicted mixtures", TOP_MIXTURES)
    num_resamples: int = doc("bootstrap resamples of the proxies", NUM_RESAMPLES)

    def __post_init__(self):
        check_finite(self)
        if self.confirm_seeds < 2:
            raise UserError(f"--confirm-seeds must be >= 2 (a paired test needs two seeds), got {self.confirm_seeds}")
        if self.parallel < 1:
            raise UserError(f"--parallel must be >= 1, got {self.parallel}")
        check_runner(self.runner, self.ray_address, self.gpus, self.parallel)
        check_run_memory(self.run_memory, self.run_disk)
        check_slurm(self)
        if not 0 < self.alpha < 0.5:
            raise UserError(f"--alpha must be in (0, 0.5), got {self.alpha}")
        if len(self.concentration) != 2 or not 0 < self.concentration[0] <= self.concentration[1]:
            raise UserError(f"concentration must be [low, high] with 0 < low <= high, got {self.concentration}")
        if self.pool_size < 1 or self.top < 1 or self.num_resamples < 0:
            raise UserError("pool_size and top must be >= 1, num_resamples >= 0")
        check_run_budget_and_transfer(self.run_budget, self.transfer)

    def base_recipe(self) -> Recipe:
        from ..recipes import resolve_recipe

        recipe = resolve_recipe(self.recipe, [*self.overrides, *run_budget_overrides(self.run_budget)])
        if recipe.data.weights is not None:
            warnings.warn(f"data.weights={recipe.data.weights} of the starting recipe is ignored: a mixture campaign sets the "
                          "weights of every run itself", stacklevel=2)
            recipe.data.weights = None
        return recipe

    def target_label(self) -> str:
        return f"mean val_bpb of {', '.join(self.target)}" if self.target else "val_bpb"


# a scaling ladder (research/ladder.py): 3 widths of tiny-cpu x 3 token budgets over a 16x range, ~3 minutes on 2 CPU
# cores (docs/benchmarks.md)
LADDER_SIZES = ["model.n_embd=64,96,128"]
LADDER_TOKENS = ["25k", "100k", "400k"]


MAX_LADDER_SEEDS = 100  # runs per cell of a ladder: more is a typo (a huge count once planned runs until memory ran out)


@dataclass
class LadderConfig:
    """A scaling ladder's settings; each field's doc is its `scaling ladder` flag's help (the
    CLI generates the flags from these fields)."""

    recipe: str = doc("base recipe: a name or a recipe.json", "tiny-cpu")
    overrides: list[str] = doc("override the base recipe for every run (repeatable)", [])
    sizes: list[str] = doc("model sizes: KEY=V1,V2,... (repeat the flag to zip several keys), e.g. n_layer=2,3,4 or "
                           f"model.n_embd=64,96,128 (default {LADDER_SIZES[0]})", [])
    tokens: list[str] = doc(f"token budgets, every size at each, e.g. 50k,100k,200k (default {','.join(LADDER_TOKENS)})", [])
    flops: list[str] = doc("compute budgets instead of --tokens, e.g. 1e12,3e12: iso-FLOP, each size trained to D = C/(6N)", [])
    seeds: int = doc("runs per cell, on seeds 0..N-1", 1)
    parallel: int = doc("runs in flight at once (CPU: cores split fairly)", 2)
    gpus: list[int] | None = doc("comma-separated GPU indices, one per slot; default: CPU processes", None)
    params: str = doc("how N is counted: total (Hoffmann et al.) or non-embedding (Kaplan et al.)", "total")
    run_memory: str = doc(RUN_MEMORY_DOC, "auto")
    run_disk: str = doc(RUN_DISK_DOC, "auto")

    def __post_init__(self):
        check_finite(self)
        check_run_memory(self.run_memory, self.run_disk)
        if self.tokens and self.flops:
            raise UserError("--tokens and --flops both given: a ladder is a grid of token budgets or an iso-FLOP design, not both")
        self.sizes = list(self.sizes) or list(LADDER_SIZES)
        if not self.flops:
            self.tokens = list(self.tokens) or list(LADDER_TOKENS)
        if not 1 <= self.seeds <= MAX_LADDER_SEEDS:
            raise UserError(f"--seeds must be from 1 to {MAX_LADDER_SEEDS} runs per cell, got {self.seeds}")
        if self.parallel < 1:
            raise UserError(f"--parallel must be >= 1, got {self.parallel}")
        if self.gpus is not None and len(self.gpus) < self.parallel:
            raise UserError(f"--parallel {self.parallel} needs {self.parallel} GPUs, --gpus lists {len(self.gpus)}: "
                            "lower --parallel or list more")
        if self.params not in ("total", "non-embedding"):
            raise UserError(f"--params {self.params!r}: use total or non-embedding")
