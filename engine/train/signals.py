"""Learning-signal warnings: rules over a GRPO run's metrics history (and its rollouts) that say when a run is
learning nothing, and what to change. The trainer emits them as `log` warnings (the terminal and run.log get
them); the Runs pane's dashboard computes the same from metrics.jsonl, so a run started anywhere gets them.

Pure: `SignalWatch` takes one step at a time and returns the warnings that became true at that step, each
key at most once; it never logs. It knows metric names (engine.train.grpo's), not how they were measured.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The thresholds. A rule needs this many consecutive steps (or this many steps of history) before it speaks,
# so one unlucky batch says nothing.
CLIPPED_RATIO = 0.5          # "most completions": more than half hit max_completion_length
CLIPPED_STEPS = 3
ZERO_STD_FRACTION = 0.9      # groups whose G rewards are all equal (advantage 0: no gradient)
ZERO_STD_STEPS = 5
CONSTANT_STEPS = 3           # a reward with the same value for every completion over this many steps
EXPLOSION_FACTOR = 10.0      # KL / grad norm this many times their median so far
EXPLOSION_HISTORY = 5        # steps of history the median needs
EXPLOSION_HISTORY_MAX = 50   # the median is over the last this many steps
KL_FLOOR = 0.05              # KL below this is never "exploding", whatever its median
REWARD_WINDOW = 10           # reward is smoothed over this many steps
REWARD_DROP = 0.5            # falling: lost at least half of what it had gained up to its peak
REWARD_NOISE = 6.0           # … a gain of more than this many times the noise of a window mean


@dataclass(frozen=True)
class LearningWarning:
    """One warning: a stable `key` (one per rule, or per rule and reward), the `step` it became true at,
    and one line that says what is wrong and what to change."""

    key: str
    step: int
    message: str


def _number(value) -> float | None:
    """A metric as a finite float, or None (missing, None, NaN, inf, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _now(config: Mapping, name: str) -> str:
    return f" (now {config[name]})" if config.get(name) is not None else ""


class SignalWatch:
    """Feed it a run's steps in order (`update`); it returns the warnings that start at each step, each key
    once. `config` (the run's settings, a dict) only fills the "(now N)" of the advice.

    Example:
    >>> watch = SignalWatch({"max_completion_length": 256})
    >>> [watch.update(step, {"completions/clipped_ratio": 0.9}) for step in (1, 2)]
    [[], []]
    >>> watch.update(3, {"completions/clipped_ratio": 0.9})[0].key
    'clipped'
    """

    def __init__(self, config: Mapping | None = None):
        self.config = dict(config or {})
        self.emitted: dict[str, LearningWarning] = {}
        self.steps = 0
        self._clipped_run = 0
        self._zero_std_run = 0
        self._kl: deque[float] = deque(maxlen=EXPLOSION_HISTORY_MAX)
        self._grad_norm: deque[float] = deque(maxlen=EXPLOSION_HISTORY_MAX)
        self._reward_trend = _Trend(REWARD_WINDOW)
        self._accuracy: float | None = None
        self._reward_values: dict[str, set] = {}    # reward name → the distinct values seen (None included)
        self._reward_steps: dict[str, int] = {}     # reward name → steps it was seen at
        self._reward_from_samples: set[str] = set()  # rewards judged from the completions, not their means

    @property
    def warnings(self) -> list[LearningWarning]:
        """Every warning emitted so far, in the order they came."""
        return list(self.emitted.values())

    def update(self, step: int, metrics: Mapping, samples: Sequence[Mapping] | None = None) -> list[LearningWarning]:
        """The warnings that became true at `step`: `metrics` is the step's record (metrics.jsonl's line),
        `samples` its rollouts (samples.jsonl's records of that step) when known."""
        self.steps += 1
        found = [self._clipped(step, metrics), self._zero_std(step, metrics),
                 *self._constant_rewards(step, metrics, samples or ()),
                 self._exploding(step, "kl", metrics, self._kl), self._exploding(step, "grad_norm", metrics,
                                                                                  self._grad_norm),
                 self._falling(step, metrics)]
        new = [warning for warning in found if warning is not None and warning.key not in self.emitted]
        for warning in new:
            self.emitted[warning.key] = warning
        return new

    # the rules

    def _clipped(self, step: int, metrics: Mapping) -> LearningWarning | None:
        """Clipped: `completions/clipped_ratio` above CLIPPED_RATIO for CLIPPED_STEPS steps in a row. Clipped
        completions have no answer, so the rewards score nothing (trl#5697: 97–99 % clipped, reward 0)."""
        ratio = _number(metrics.get("completions/clipped_ratio"))
        self._clipped_run = self._clipped_run + 1 if ratio is not None and ratio > CLIPPED_RATIO else 0
        if self._clipped_run < CLIPPED_STEPS:
            return None
        return LearningWarning("clipped", step, f"{ratio:.0%} of completions hit max_completion_length"
                               f"{_now(self.config, 'max_completion_length')} for {self._clipped_run} steps, so "
                               "they end before their answer: raise max_completion_length or lower temperature"
                               f"{_now(self.config, 'temperature')}")

    def _zero_std(self, step: int, metrics: Mapping) -> LearningWarning | None:
        """No signal: `frac_reward_zero_std` at least ZERO_STD_FRACTION for ZERO_STD_STEPS steps in a row. A
        group whose completions all score the same has advantage 0 and teaches nothing; the accuracy (or
        reward) says whether the task is too hard or too easy."""
        fraction = _number(metrics.get("frac_reward_zero_std"))
        accuracy = _number(metrics.get("accuracy"))
        if accuracy is not None:
            self._accuracy = accuracy
        self._zero_std_run = self._zero_std_run + 1 if fraction is not None and fraction >= ZERO_STD_FRACTION else 0
        if self._zero_std_run < ZERO_STD_STEPS:
            return None
        if self._accuracy is not None and self._accuracy <= 0.1:
            why = (f"the task is too hard for the model (accuracy {self._accuracy:.0%}): start from a model that "
                   "solves some prompts (SFT on traces first) or use easier prompts")
        elif self._accuracy is not None and self._accuracy >= 0.9:
            why = (f"the task is too easy for the model (accuracy {self._accuracy:.0%}): use harder prompts")
        else:
            why = "the task is too hard or too easy for the model, or the rewards cannot tell completions apart"
        return LearningWarning("zero-std", step, f"{fraction:.0%} of groups gave all their completions the same "
                               f"reward for {self._zero_std_run} steps, so they teach nothing: {why}; raise "
                               f"num_generations{_now(self.config, 'num_generations')} or temperature"
                               f"{_now(self.config, 'temperature')}")

    def _constant_rewards(self, step: int, metrics: Mapping, samples: Sequence[Mapping]) -> list[LearningWarning]:
        """A reward that never varies: for CONSTANT_STEPS steps or more, every completion got the same value
        from it, or None (no opinion). Judged on the completions' own scores when the samples are given, else
        on the reward's per-step mean (`rewards/<name>/mean`) being the same every step. Such a reward adds
        nothing to any advantage (unsloth#1761: a regex without DOTALL that never matched)."""
        warnings = []
        seen_now: dict[str, set] = {}
        for sample in samples:
            for completion in sample.get("completions", ()):
                for name, value in (completion.get("rewards") or {}).items():
                    seen_now.setdefault(name, set()).add(_number(value))
        for name in seen_now:
            self._reward_from_samples.add(name)
        for key, value in metrics.items():
            if key.startswith("rewards/") and key.endswith("/mean"):
                name = key[len("rewards/"):-len("/mean")]
                if name not in self._reward_from_samples:
                    seen_now.setdefault(name, set()).add(_number(value))
        for name, values in seen_now.items():
            self._reward_values.setdefault(name, set()).update(values)
            self._reward_steps[name] = self._reward_steps.get(name, 0) + 1
            every = self._reward_values[name]
            if len(every) != 1 or self._reward_steps[name] < CONSTANT_STEPS:
                continue
            [value] = every
            if value is None:
                message = (f"reward {name} returned None (no opinion) for every completion so far "
                           f"({self._reward_steps[name]} steps): it is missing what it scores (an answer column?) "
                           "or fails on every completion; test it with `aha rewards check`")
            elif value == 0:
                message = (f"reward {name} gave 0 to every completion so far ({self._reward_steps[name]} "
                           "steps), so it tells none apart: check what it matches (a regex without re.DOTALL is "
                           "the usual cause) with `aha rewards check`, or remove it")
            else:  # every completion earns it: learned already (a format after a cold start), or it matches too much
                message = (f"reward {name} gave {value:g} to every completion so far ({self._reward_steps[name]} "
                           "steps), so it tells none apart: every completion meets it (a format the model has "
                           "already learned, as after a cold start) or it matches too much; check it with "
                           "`aha rewards check`, or drop it")
            warnings.append(LearningWarning(f"constant-reward/{name}", step, message))
        return warnings

    def _exploding(self, step: int, name: str, metrics: Mapping, history: deque[float]) -> LearningWarning | None:
        """Exploding KL or grad norm: after EXPLOSION_HISTORY steps, a value above EXPLOSION_FACTOR × the median
        of the earlier ones (the last EXPLOSION_HISTORY_MAX) (a zero median does not count; KL also above KL_FLOOR), or a grad norm that is
        not finite (logged as None while the other metrics are there)."""
        if name not in metrics:
            return None
        value = _number(metrics.get(name))
        if value is None:
            if name == "grad_norm":
                return LearningWarning("grad_norm", step, "the gradient norm is not finite (NaN or inf): lower "
                                       f"learning_rate{_now(self.config, 'learning_rate')} and keep max_grad_norm "
                                       "above 0")
            return None
        earlier = list(history)
        history.append(value)
        if len(earlier) < EXPLOSION_HISTORY:
            return None
        median = statistics.median(earlier)
        if median <= 0 or value <= EXPLOSION_FACTOR * median or (name == "kl" and value <= KL_FLOOR):
            return None
        if name == "kl":
            advice = (f"the policy is moving away from the reference fast: lower learning_rate"
                      f"{_now(self.config, 'learning_rate')} or raise beta{_now(self.config, 'beta')}")
            return LearningWarning("kl", step, f"KL jumped to {value:.3g}, {value / median:.0f}× its median so far "
                                   f"({median:.3g}): {advice}")
        return LearningWarning("grad_norm", step, f"the gradient norm jumped to {value:.3g}, {value / median:.0f}× its "
                               f"median so far ({median:.3g}): lower learning_rate"
                               f"{_now(self.config, 'learning_rate')} or max_grad_norm"
                               f"{_now(self.config, 'max_grad_norm')}")

    def _falling(self, step: int, metrics: Mapping) -> LearningWarning | None:
        """Reward falling after a peak: the mean reward of the last REWARD_WINDOW steps has lost at least
        REWARD_DROP of what the run gained from its first window to its best window, a gain of more than
        REWARD_NOISE × the noise of a window mean (the step-to-step noise σ ≈ √(mean((r_t − r_{t−1})²) / 2),
        over √REWARD_WINDOW): the best of many windows of pure noise is no peak. Kept up step by step (running
        sums), so a run of thousands of steps costs as little per step as a short one."""
        reward = _number(metrics.get("reward"))
        if reward is None:
            return None
        falling = self._reward_trend
        falling.add(reward)
        if falling.count < 2 * REWARD_WINDOW or falling.steps_since_peak < REWARD_WINDOW:
            return None
        gain = falling.peak - falling.first
        if gain <= max(REWARD_NOISE * falling.noise / math.sqrt(REWARD_WINDOW), 1e-9) or falling.peak - falling.last < REWARD_DROP * gain:
            return None
        peak_step = step - falling.steps_since_peak
        return LearningWarning("reward-falling", step, f"the reward fell from its peak {falling.peak:.3g} (mean "
                               f"of the {REWARD_WINDOW} steps to step {peak_step}) to {falling.last:.3g}: the "
                               "policy may be collapsing or exploiting a reward; lower learning_rate"
                               f"{_now(self.config, 'learning_rate')}, raise beta{_now(self.config, 'beta')}, or "
                               f"keep a checkpoint from near step {peak_step}")


class _Trend:
    """Running window means of a series: the first, the last and the highest (with how many windows ago it
    was), and the step-to-step noise of the values, in O(1) per value."""

    def __init__(self, window: int):
        self.window, self.count = window, 0
        self._recent: deque[float] = deque()
        self._sum = self._differences = 0.0
        self._previous: float | None = None
        self.first = self.last = self.peak = -math.inf
        self.steps_since_peak = 0

    def add(self, value: float) -> None:
        self.count += 1
        if self._previous is not None:
            self._differences += (value - self._previous) ** 2
        self._previous = value
        self._recent.append(value)
        self._sum += value
        if len(self._recent) > self.window:
            self._sum -= self._recent.popleft()
        if len(self._recent) < self.window:
            return
        self.last = self._sum / self.window
        if self.count == self.window:
            self.first = self.last
        self.steps_since_peak += 1
        if self.last > self.peak:
            self.peak, self.steps_since_peak = self.last, 0

    @property
    def noise(self) -> float:
        """σ of the values around their trend, from successive differences (a trend barely moves them)."""
        return math.sqrt(self._differences / max(self.count - 1, 1) / 2)


def learning_warnings(history: Iterable[Mapping], samples: Iterable[Mapping] = (),
                      config: Mapping | None = None) -> list[LearningWarning]:
    """Every warning over a whole run: `history` the metrics records (each with its `step`), `samples` the
    rollout records (each with its `step`), in step order."""
    by_step: dict[int, list[Mapping]] = {}
    for sample in samples:
        by_step.setdefault(int(sample.get("step", 0)), []).append(sample)
    watch = SignalWatch(config)
    for record in history:
        step = int(record.get("step", 0))
        watch.update(step, record, by_step.get(step))
    return watch.warnings
