"""One cell's cost model, which the dry run estimates by and the running cost guard reserves by.

`CostModel` predicts, for each problem of a (dataset, model, strategy) cell, its calls, prompt and
completion tokens, cost and seconds. It starts from the structural estimate (`estimate_example`: the
program's real prompts, stand-in replies), and learns from observed problems, those whose calls are
in the cache: a pilot's, an earlier run's rows, or calls another run paid for.
- Reply lengths: the stand-ins take the mean token length of the real replies, per output field, and
  the mean number of sub-questions (`ReplyProfile`), so later prompts (which hold the earlier
  replies) grow as they really do.
- What the structure cannot see: the calls added by the ChatAdapter-to-JSON fallback, a tokenizer
  other than the one counted with, replies of uneven length. For each of calls, prompt tokens,
  completion tokens, cost and seconds, the ratio of what the observed problems really took to their
  structural estimate (with the learnt lengths, nothing cached) scales every prediction.
- The range is an 80% interval: the ratio's standard error over the observed problems (Student's t)
  and the spread of the problems still to run. With nothing observed it is the prior's range,
  `PRIOR_RANGE`, measured with benchmarks/bench_estimate.py.

`Budget` keeps spent + reserved + the next example's reservation within `max_cost`; a reservation
is the model's prediction for that problem with a margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from statistics import mean
from typing import Any

from dd_prompting.evals.estimate import PRIOR_PROFILE, Estimate, Replay, ReplyProfile
from dd_prompting.stats import t_quantile_90

__all__ = ["Budget", "CostModel", "CellEstimate", "Observation", "PRIOR_RANGE"]

# The range given to an estimate from the prior alone, as factors of its value. bench_estimate.py measured the
# prior at 0.96-1.65x the actual cost (four strategies, GSM8K and generated problems, replies as long as the
# reference solutions); the issue measured up to 3.3x with shorter replies, and a verbose model's chain of thought
# can run twice the prior's 120 tokens: so actual / estimate from 0.5 to 2.5.
PRIOR_RANGE = (0.5, 2.5)
_COMPONENTS = ("calls", "prompt_tokens", "completion_tokens", "cost", "seconds")
class Budget:
    """Keeps spent + reserved + the next example's estimate within `limit`."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    def try_reserve(self, amount: float) -> bool:
        if self.limit is None:
            return True
        if self.spent + self.reserved + amount > self.limit + 1e-12:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


@dataclass
class Observation:
    """What one observed problem really took (cached calls at what they once cost); `seconds` None if unknown."""

    problem: Any
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    seconds: float | None
    replay: Replay | None
    source: str  # "row" (a row of results.jsonl) or "cache" (calls found in the cache, no row)

    def actual(self, component: str) -> float | None:
        return getattr(self, component)


@dataclass
class CellEstimate:
    """A cell's estimate for the problems still to run, with its basis and 80% range (of `range_of`)."""

    dataset: str
    model: str
    strategy: str
    problems: int
    calls: float
    cached_calls: int
    prompt_tokens: float
    completion_tokens: float
    cost: float | None
    seconds: float
    low: float | None
    high: float | None
    range_of: str  # "cost" (USD) for priced models, "tokens" (prompt + completion) for free or unpriced ones
    basis: str  # "prior", "pilot" or "cache"
    basis_text: str  # "prior", "8-problem pilot", "from 40 cached calls"
    done: int = 0
    rounds: int | None = None  # a model called in batches: about how many batch rounds its problems take

    @property
    def examples(self) -> int:
        return self.problems

    @property
    def label(self) -> str:
        return f"{self.dataset} | {self.model} | {self.strategy}"

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        for name in ("calls", "prompt_tokens", "completion_tokens"):
            record[name] = round(record[name])
        for name in ("cost", "low", "high"):
            if record[name] is not None:
                record[name] = round(record[name], 6 if self.range_of == "cost" or name == "cost" else 0)
        record["seconds"] = round(record["seconds"], 1)
        return record


class CostModel:
    """Predicts one cell's problems from the structural estimate, scaled by what observed problems took.

    Args:
        estimate: `estimate(problem, profile, cached)`: the structural estimate of one problem with stand-in
            replies of `profile`'s lengths, looked up in the run's cache when `cached`.
        pilot: The ids of the cell's pilot problems, to name the basis.
        problem_id: A problem's id.
    """

    MAX_OBSERVATIONS = 32
    MIN_OBSERVATIONS = 3  # before that the guard runs one example at a time
    MARGIN = 1.15  # a reservation over the calibrated prediction
    _REFITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)

    def __init__(self, estimate: Callable[[Any, ReplyProfile, bool], Estimate], *, pilot: Iterable[str] = (),
                 problem_id: Callable[[Any], str] = lambda problem: problem.id):
        self._estimate = estimate
        self._pilot = set(pilot)
        self._id = problem_id
        self.observations: list[Observation] = []
        self.profile = PRIOR_PROFILE
        self.ratios = dict.fromkeys(_COMPONENTS, 1.0)
        self._structural: list[Estimate] = []  # each observation's, with `profile`, nothing cached
        self._seen: set[str] = set()

    # ------------------------------------------------------------------ learning
    @property
    def calibrated(self) -> bool:
        return len(self.observations) >= self.MIN_OBSERVATIONS

    @property
    def full(self) -> bool:
        return len(self.observations) >= self.MAX_OBSERVATIONS

    def observe_row(self, problem: Any, row: dict[str, Any], *, refit: bool = True) -> None:
        """A finished example (its row in results.jsonl): billed as the row says, replies from the cache."""
        if self.full or row.get("error") or self._id(problem) in self._seen:
            return
        replay = self._estimate(problem, PRIOR_PROFILE, True).replay
        # A cache hit takes no time: the example's seconds are spread over its new calls, as if all were new.
        calls, cached = int(row.get("calls") or 0), int(row.get("cached_calls") or 0)
        seconds = row["latency_s"] * calls / (calls - cached) if row.get("latency_s") and calls > cached else None
        self._add(Observation(problem, int(row.get("calls") or 0), int(row.get("prompt_tokens") or 0),
                              int(row.get("completion_tokens") or 0), row.get("cost"), seconds, replay, "row"),
                  refit)

    def observe_replay(self, problem: Any, replay: Replay, *, refit: bool = True) -> None:
        """A problem all of whose calls are in the cache though it has no row: billed as the cache recorded."""
        if self.full or not replay.complete or self._id(problem) in self._seen:
            return
        self._add(Observation(problem, replay.calls, replay.prompt_tokens, replay.completion_tokens, replay.cost,
                              None, replay, "cache"), refit)

    def _add(self, observation: Observation, refit: bool) -> None:
        self.observations.append(observation)
        self._seen.add(self._id(observation.problem))
        if refit and len(self.observations) in self._REFITS:
            self.fit()

    def fit(self) -> None:
        """Learn reply lengths from the observed replies, then the ratios of actual to structural."""
        if not self.observations:
            return
        tokens: dict[str, list[int]] = {}
        lists: list[int] = []
        for observation in self.observations:
            if observation.replay is not None:
                for name, lengths in observation.replay.field_tokens.items():
                    tokens.setdefault(name, []).extend(lengths)
                lists.extend(observation.replay.list_lengths)
        learnt = dict(PRIOR_PROFILE.field_tokens) | {name: mean(values) for name, values in tokens.items() if values}
        self.profile = ReplyProfile(field_tokens=tuple(sorted(learnt.items())),
                                    list_length=max(1, round(mean(lists))) if lists else PRIOR_PROFILE.list_length)
        self._structural = [self._estimate(observation.problem, self.profile, False)
                            for observation in self.observations]
        for component in _COMPONENTS:
            pairs = self._pairs(component)
            structural = sum(s for _, s in pairs)
            self.ratios[component] = sum(a for a, _ in pairs) / structural if structural > 0 else 1.0

    def _pairs(self, component: str) -> list[tuple[float, float]]:
        """(actual, structural) of `component` over the observations that have both."""
        pairs = []
        for observation, structural in zip(self.observations, self._structural):
            actual, predicted = observation.actual(component), getattr(structural, component)
            if actual is not None and predicted is not None:
                pairs.append((float(actual), float(predicted)))
        return pairs

    # ------------------------------------------------------------------ predicting
    def predict(self, problem: Any) -> Estimate:
        """One problem's calls, tokens, cost and seconds: cached calls are free, new ones are scaled."""
        structural = self._estimate(problem, self.profile, True)
        r = self.ratios
        new_calls = structural.calls - structural.cached_calls
        return Estimate(
            examples=1, calls=structural.cached_calls + new_calls * r["calls"], cached_calls=structural.cached_calls,
            prompt_tokens=structural.prompt_tokens * r["prompt_tokens"],
            completion_tokens=structural.completion_tokens * r["completion_tokens"],
            cost=None if structural.cost is None else structural.cost * r["cost"],
            seconds=structural.seconds * r["seconds"], replay=structural.replay,
        )

    def reserve(self, prediction: Estimate) -> float:
        """What to hold back for one example before it runs; an example whose calls are all cached is free.

        Uncalibrated, the prior estimate itself (examples then run one at a time, so a wrong guess
        costs at most one example); calibrated, a small margin over the prediction.
        """
        if not prediction.cost:
            return 0.0
        return prediction.cost * (self.MARGIN if self.calibrated else 1.0)

    @property
    def basis(self) -> tuple[str, str]:
        """("prior" | "pilot" | "cache", and how to say it)."""
        if not self.observations:
            return "prior", "prior"
        pilot = sum(self._id(observation.problem) in self._pilot for observation in self.observations)
        if pilot:
            more = len(self.observations) - pilot
            return "pilot", f"{pilot}-problem pilot" + (f" + {more} earlier problems" if more else "")
        calls = sum(observation.calls for observation in self.observations)
        return "cache", f"from {calls} cached calls ({len(self.observations)} problems)"

    def summarize(self, predictions: list[Estimate], *, dataset: str, model: str, strategy: str,
                  done: int = 0) -> CellEstimate:
        """The cell's totals over `predictions` (the problems still to run), with the basis and the 80% range."""
        total = Estimate(cost=0.0)
        for prediction in predictions:
            total.add(prediction)
        range_of = "cost" if total.cost else "tokens"
        component = "cost" if range_of == "cost" else None
        value = total.cost if range_of == "cost" else total.prompt_tokens + total.completion_tokens
        low, high = self._interval(value, component, len(predictions))
        basis, text = self.basis
        return CellEstimate(dataset=dataset, model=model, strategy=strategy, problems=len(predictions),
                            calls=total.calls, cached_calls=total.cached_calls, prompt_tokens=total.prompt_tokens,
                            completion_tokens=total.completion_tokens, cost=total.cost, seconds=total.seconds,
                            low=low, high=high, range_of=range_of, basis=basis, basis_text=text, done=done)

    def _interval(self, value: float, component: str | None, remaining: int) -> tuple[float, float]:
        if not value:
            return 0.0, 0.0
        if component is None:  # tokens: their actual and structural per observation
            pairs = [(a1 + a2, s1 + s2) for (a1, s1), (a2, s2) in
                     zip(self._pairs("prompt_tokens"), self._pairs("completion_tokens"))]
        else:
            pairs = self._pairs(component)
        if len(pairs) < 2:
            return value * PRIOR_RANGE[0], value * PRIOR_RANGE[1]
        n = len(pairs)
        ratio = sum(a for a, _ in pairs) / sum(s for _, s in pairs)
        residuals = [a - ratio * s for a, s in pairs]
        variance = sum(e * e for e in residuals) / (n - 1)  # of one problem's actual around its prediction
        mean_structural = mean(s for _, s in pairs)
        structural_total = value / ratio if ratio > 0 else 0.0
        # The ratio's own error (from n problems), and the remaining problems' spread around their predictions.
        ratio_se = math.sqrt(variance / n) / mean_structural if mean_structural > 0 else 0.0
        sd = math.sqrt((structural_total * ratio_se) ** 2 + remaining * variance)
        half = t_quantile_90(n - 1) * sd
        return max(0.0, value - half), value + half


# A batch round's calls are reserved before they are known: each line's prompt as sent, and a reply as long as a
# typical decomposition or chain of thought (the estimate's prior), or the line's max_tokens if that is less.
ROUND_REPLY_TOKENS = 150


def round_cost(lines: list[dict[str, Any]], model: str, pricing: Any) -> float:
    """About what a batch round's lines will cost at `pricing` (batch prices): what the budget reserves."""
    from dd_prompting.evals.estimate import count_tokens

    if not pricing.known:
        return 0.0
    total = 0.0
    for line in lines:
        body = line["body"]
        reply = min(ROUND_REPLY_TOKENS, body.get("max_tokens") or body.get("max_completion_tokens")
                    or ROUND_REPLY_TOKENS)
        total += pricing.cost(count_tokens(model, body.get("messages") or []), reply)
    return total
