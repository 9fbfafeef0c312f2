"""Distillation: teacher traces with verification (rejection sampling), resumable, as a JSONL dataset.

`generate_traces` asks a teacher (engine.distill.teachers) for k replies per prompt, scores them with the GRPO
rewards (engine.train.rewards), keeps the ones that pass (all, the shortest or the first, duplicates dropped)
and appends them line by line, fsynced, beside a progress file that makes a rerun skip finished prompts and a
file of the replies it did not keep (each with the verifier's reason), so a run opened later shows every verdict;
`GenerateConfig` holds the settings of `aha distill generate`.
SFT and logit distillation on the traces are engine.distill.traces' and engine.distill.kd's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine import r1
from engine.distill.teachers import Sampling, Teacher, TeacherSample, is_cancelled
from engine.errors import AhaError
from engine.fileio import atomic_write_text, disk_errors
from engine.jobs import OnEvent, Progress, ignore, make_event
from engine.train.config import setting
from engine.train.data import TASK_ROWS, TASKS, prompt_id

KEEP_RULES = ("all", "shortest", "first")
DEFAULT_REWARDS = ("accuracy", "format")


# Datasets -----------------------------------------------------------------------------------------

# Verification and keep rules ----------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """One sample's fate: accepted, or the reason it was rejected."""

    sample: TeacherSample
    index: int                             # sample number within its prompt (0 … k−1)
    rewards: dict[str, float | None]
    reward: float | None                   # weighted total; None where a reward could not score
    rejected: str | None                   # None, "truncated", "unscored" or the first failed reward's name


# Row keys that are not passed on to rewards as extra columns (they are arguments of their own, or the id).
_NOT_REWARD_COLUMNS = ("prompt", "answer", "id", "prefilled", "prompts", "completions")


def verify(reward_set, prompt: str, row: dict, samples: Sequence[TeacherSample],
           pass_threshold: float = 1.0, readability: Readability | None = None) -> tuple[list[Verdict], list[str]]:
    """Score a prompt's samples. A sample passes when it finished on its own (not cut by the token
    budget), every reward gives it at least `pass_threshold` (accuracy and format give 1.0 for a
    pass) and, with `readability`, readability_reason finds nothing. Returns the verdicts and the reward errors seen for the first time (one line each)."""
    count = len(samples)
    columns = {key: [value] * count for key, value in row.items() if key not in _NOT_REWARD_COLUMNS}
    scores = reward_set.score([prompt] * count, [sample.raw for sample in samples],
                              answer=[row.get("answer")] * count,
                              prefilled=[sample.prefilled for sample in samples], **columns)
    verdicts = []
    for index, sample in enumerate(samples):
        values = {name: scores.per_reward[name][index] for name in reward_set.names}
        total = scores.totals[index]
        reason = rejection_reason(sample.finish_reason, values, pass_threshold)
        if reason is None and readability is not None:
            reason = readability_reason(sample, prompt, readability)
        verdicts.append(Verdict(sample, index, values, None if math.isnan(total) else total, reason))
    return verdicts, scores.errors


def rejection_reason(finish_reason: str, rewards: Mapping[str, float | None], pass_threshold: float = 1.0) -> str | None:
    """Why verification rejects a reply, or None when it passes: "truncated" (cut by the token budget; another
    finish reason is its own name), "unscored" (a reward had no opinion), else the first reward below
    `pass_threshold`."""
    if finish_reason != "stop":
        return "truncated" if finish_reason == "length" else finish_reason
    if any(value is None for value in rewards.values()):
        return "unscored"
    return next((name for name, value in rewards.items() if value < pass_threshold), None)


@dataclass(frozen=True)
class Readability:
    """R1's readability filter of cold-start and rejection-sampled data: bounded length, no repeated
    paragraphs, no language mixing. A None/False field checks nothing."""

    max_thinking_tokens: int | None = None
    reject_repeated_paragraphs: bool = True
    min_language_share: float | None = None
    language: str | None = None            # the thought's target language; None: the prompt's (detect_language)


MIN_PARAGRAPH_CHARS = 20                   # shorter blocks ("Wait.", "So:") may repeat freely


def thinking_tokens(sample: TeacherSample) -> int | None:
    """The thought's token count as the teacher reported it (usage.thinking_tokens), None when unknown."""
    value = sample.usage.get("thinking_tokens")
    return int(value) if isinstance(value, int | float) else None


def repeated_paragraph(text: str, min_chars: int = MIN_PARAGRAPH_CHARS) -> str | None:
    """The first paragraph that occurs twice in `text`, or None. Paragraphs are blocks split on blank lines,
    whitespace collapsed to one space; blocks shorter than `min_chars` are not compared."""
    import re

    seen: set[str] = set()
    for block in re.split(r"\n\s*\n", text):
        paragraph = " ".join(block.split())
        if len(paragraph) < min_chars:
            continue
        if paragraph in seen:
            return paragraph
        seen.add(paragraph)
    return None


def readability_reason(sample: TeacherSample, prompt: str, rules: Readability) -> str | None:
    """Why the readability filter rejects a reply that passed verification, or None: "too-long" (thinking
    tokens > max_thinking_tokens), "repeated-paragraph" (repeated_paragraph of thinking + answer),
    "mixed-language" (language_share(thinking, target) < min_language_share; target = rules.language or
    detect_language(prompt), nothing checked when neither is known)."""
    if rules.max_thinking_tokens is not None:
        count = thinking_tokens(sample)
        if count is not None and count > rules.max_thinking_tokens:
            return "too-long"
    if rules.reject_repeated_paragraphs and repeated_paragraph(f"{sample.thinking}\n\n{sample.answer}"):
        return "repeated-paragraph"
    if rules.min_language_share is not None and sample.thinking.strip():
        from engine.train.language import detect_language, language_share

        target = rules.language or detect_language(prompt)
        if target is not None and language_share(sample.thinking, target) < rules.min_language_share:
            return "mixed-language"
    return None


def select_kept(verdicts: Sequence[Verdict], rule: str = "all") -> tuple[list[Verdict], int]:
    """(kept, duplicates dropped) of the accepted samples: "all", the "shortest" (fewest characters of
    thinking + answer; the first on a tie) or the "first". Duplicates share both thinking and answer."""
    if rule not in KEEP_RULES:
        raise AhaError(f"unknown keep rule {rule!r}; use one of {', '.join(KEEP_RULES)}")
    unique, seen = [], set()
    for verdict in verdicts:
        if verdict.rejected is None:
            key = (verdict.sample.thinking, verdict.sample.answer)
            if key not in seen:
                seen.add(key)
                unique.append(verdict)
    accepted = sum(verdict.rejected is None for verdict in verdicts)
    duplicates = accepted - len(unique)
    if rule == "first" or not unique:
        return unique[:1], duplicates
    if rule == "shortest":
        return [min(unique, key=lambda v: len(v.sample.thinking) + len(v.sample.answer))], duplicates
    return unique, duplicates


# Resumable output ---------------------------------------------------------------------------------

def progress_path(out_path: Path) -> Path:
    """The sidecar of finished prompt ids: traces.jsonl → traces.progress.jsonl."""
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + ".progress.jsonl")


def rejected_path(out_path: Path) -> Path:
    """The sidecar of the replies not kept: traces.jsonl → traces.rejected.jsonl. Beside the traces, not in
    them, so the traces stay the SFT dataset they were; named like the progress file, so the three files of
    a run sort together."""
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + ".rejected.jsonl")


def _append_line(stream, record: dict) -> None:
    """One JSON line, flushed and fsynced: a crash loses at most the line being written."""
    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    stream.flush()
    os.fsync(stream.fileno())


def _complete_lines(path: Path) -> tuple[list[tuple[str, dict]], bool]:
    """(text, object) of each whole JSON line of a file, and whether anything after them was cut off
    (a last line without its newline or not valid JSON: what a crash mid-write leaves)."""
    lines, damaged = [], False
    if not path.exists():
        return lines, damaged
    with open(path, encoding="utf-8", errors="replace") as stream:
        for text in stream:
            if not text.endswith("\n"):
                damaged = True
                break
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError:
                damaged = True
                continue
            if isinstance(record, dict):
                lines.append((text, record))
    return lines, damaged


def _rewrite(path: Path, lines: Sequence[str]) -> None:
    """Replace a file by these lines atomically (temp file beside it, fsync, rename)."""
    atomic_write_text(path, "".join(lines))


def _resume(out_path: Path, config: dict, force: bool, on_event: OnEvent) -> dict[str, dict]:
    """Prepare the output for appending; returns the progress records of prompts finished before.
    Trace and rejected lines of prompts that never finished (a crash between their lines and their progress
    record) and a cut-off last line in any of the three files are removed."""
    from engine.fileio import make_folder

    sidecar, rejected = progress_path(out_path), rejected_path(out_path)
    if force:
        for path in (out_path, sidecar, rejected):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    make_folder(out_path.parent)
    if sidecar.exists() and not out_path.exists():
        sidecar.unlink()  # the traces were deleted: their progress means nothing any more
    if not sidecar.exists():
        check_traces_output(out_path, force)  # (checked before the teacher started; the file may have come since)
        with contextlib.suppress(FileNotFoundError):
            rejected.unlink()  # the replies of a run whose progress is gone
        _rewrite(sidecar, [json.dumps({"config": config}, ensure_ascii=False) + "\n"])
        return {}
    progress_lines, progress_damaged = _complete_lines(sidecar)
    header = next((record["config"] for _, record in progress_lines if "config" in record), None)
    done = {record["prompt_id"]: record for _, record in progress_lines if "prompt_id" in record}
    mixed = any("mix" in record for _, record in progress_lines)
    if progress_damaged:
        _rewrite(sidecar, [text for text, _ in progress_lines])
    for path in (out_path, rejected):
        lines, damaged = _complete_lines(path)
        # a mixed-in row stays when the mix was recorded done (else a crash cut it short: it is redone)
        finished = [text for text, record in lines if (mixed if _is_mix(record) else record.get("prompt_id") in done)]
        if damaged or len(finished) != len(lines):
            _rewrite(path, finished)
            dropped = len(lines) - len(finished) + damaged
            on_event(make_event("log", level="warning", message=f"removed {dropped} line(s) of unfinished prompts "
                                                                f"or cut off by a crash from {path.name}"))
    if header is not None:
        changed = sorted(key for key in set(header) | set(config) if key not in ("resumed", "output")
                         and header.get(key) != config.get(key))
        if changed:
            on_event(make_event("log", level="warning",
                                message=f"resuming {out_path.name} with different settings ({', '.join(changed)}); "
                                        "use --force or another output to start over"))
    return done


# Trace generation ---------------------------------------------------------------------------------

@dataclass
class GenerateStats:
    """What a trace-generation run did (this run only; `skipped` prompts were done before)."""

    output: str
    prompts: int = 0                       # distinct prompts in the dataset (a repeated row counts once)
    skipped: int = 0                       # finished by an earlier run
    prompts_done: int = 0                  # finished by this run
    samples: int = 0                       # replies generated
    accepted: int = 0                      # replies that passed verification
    duplicates: int = 0                    # accepted replies equal to an earlier one of the same prompt
    kept: int = 0                          # lines written
    rejected: dict[str, int] = field(default_factory=dict)  # reason → count
    seconds: float = 0.0
    status: str = "running"                # "complete" | "cancelled" | "incomplete"
    run_id: int | None = None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.samples if self.samples else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": round(self.acceptance_rate, 6),
                "samples_per_s": round(self.samples_per_s, 6)}

    def metrics(self) -> dict[str, float]:
        return {"samples": self.samples, "accepted": self.accepted, "kept": self.kept,
                "acceptance_rate": self.acceptance_rate, "samples_per_s": self.samples_per_s}


@dataclass(frozen=True)
class GenerateConfig:
    """`aha distill generate` settings: the teacher, the prompts, the sampling and verification of
    generate_traces, and the output file."""

    teacher: str = setting("", "the teacher: gguf:PATH (llama.cpp in-process), hf:FOLDER (transformers) or "
                               "openai:BASE_URL (Ollama, llama.cpp server, vLLM, LM Studio; e.g. "
                               "openai:http://localhost:11434/v1)", "Model", metavar="KIND:TARGET")
    model: str | None = setting(None, "model name on an openai: endpoint (unset: the one it serves)", "Model")
    api_key_env: str | None = setting(None, "environment variable holding the endpoint's API key", "Model",
                                      metavar="VAR")
    concurrency: int = setting(4, "requests in flight to an endpoint", "Model")
    timeout: float = setting(600.0, "seconds to wait for one endpoint reply", "Model")
    n_ctx: int = setting(4096, "context size of a gguf: teacher", "Model")
    dataset: str = setting("", f"the prompts: a built-in task ({', '.join(TASKS)}), a .jsonl/.csv/.parquet file with "
                               "a prompt and an answer column, or a Hugging Face dataset owner/name[:split]", "Data")
    prompt_column: str = setting("prompt", "column holding the prompt", "Data")
    answer_column: str | None = setting(None, "column holding the ground truth (unset: answer, when the accuracy "
                                              "reward needs it)", "Data")
    limit: int | None = setting(None, f"use only the first N rows (unset: all of a file; a built-in task: "
                                      f"{TASK_ROWS} problems)", "Data")
    k: int = setting(4, "samples per prompt", "Rollouts")
    keep: str = setting("all", "which accepted samples of a prompt to write, duplicates dropped: all, the shortest "
                               "or the first", "Rollouts", choices=KEEP_RULES)
    reward: tuple[str, ...] = setting(DEFAULT_REWARDS, "verifier: accuracy, format, length, repetition or "
                                                       "path.py:function; repeat the flag for several", "Rollouts",
                                      metavar="NAME", repeat=True)
    temperature: float = setting(r1.TEMPERATURE, "the teacher's sampling temperature; DeepSeek advises 0.6 for R1 "
                                                 "models", "Rollouts")
    top_p: float = setting(r1.TOP_P, "nucleus sampling: the smallest token set with this much probability",
                           "Rollouts")
    max_tokens: int = setting(4096, "reply budget in tokens (thinking + answer)", "Rollouts")
    seed: int | None = setting(None, "sampling seed (sample i of a prompt uses seed + i; unset: the teacher's own "
                                     "randomness)", "Rollouts")
    max_thinking_tokens: int | None = setting(None, "reject a reply whose thought is longer than this many tokens "
                                                    "(R1's readability filter; unset: no bound)", "Rollouts")
    reject_repeated_paragraphs: bool = setting(True, "reject a reply in which a paragraph (20+ characters) occurs "
                                                     "twice", "Rollouts")
    min_language_share: float | None = setting(None, "reject a reply whose thought has a smaller share of words in "
                                                     "the target language (R1: no language mixing; unset: off)",
                                               "Rollouts")
    language: str | None = setting(None, "the target language of min_language_share (unset: the prompt's)",
                                   "Rollouts")
    mix: tuple[str, ...] = setting((), "blend non-reasoning SFT rows (prompt + answer columns) into the output "
                                       "when done: round(RATIO × kept traces) rows of FILE; repeat for several",
                                   "Data", metavar="FILE:RATIO", repeat=True)
    output: str = setting("", "the traces .jsonl to write (resumed when it exists)", "Logging", short="-o",
                          metavar="FILE")
    force: bool = setting(False, "start over: delete an existing output first", "Logging")

    def validate(self) -> None:
        """Everything a user can get wrong, as one line, before the teacher is loaded or reached (minutes for
        a GGUF, a timeout for an endpoint): the settings, the teacher spec, the rewards (names and files)
        and the output file."""
        from engine.distill.teachers import parse_teacher
        from engine.train.rewards import RewardSet

        kind, target = parse_teacher(self.teacher)
        if kind == "hf":
            from engine.distill.teachers import resolve_hf_target

            resolve_hf_target(target)  # a run without a final output or checkpoint: one line, now
        check_counts(self.k, self.keep)
        for name in ("concurrency", "n_ctx", "max_tokens", "limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AhaError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise AhaError(f"timeout must be above 0 seconds, got {self.timeout}")
        if not self.temperature >= 0:
            raise AhaError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise AhaError(f"top_p must be above 0 and at most 1, got {self.top_p}")
        RewardSet(list(self.reward))
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 1:
            raise AhaError(f"max_thinking_tokens must be at least 1, got {self.max_thinking_tokens}")
        if self.min_language_share is not None and not 0 <= self.min_language_share <= 1:
            raise AhaError(f"min_language_share must be between 0 and 1, got {self.min_language_share}")
        for spec in self.mix:
            read_mix(spec)
        check_traces_output(Path(self.output).expanduser(), self.force)


def _is_mix(record: dict) -> bool:
    return str(record.get("source", "")).startswith("mix:")


def parse_mix(spec: str) -> tuple[Path, float]:
    """`FILE:RATIO` → (file, ratio ≥ 0); the last colon splits, so a Windows path keeps its drive."""
    path, colon, ratio = spec.rpartition(":")
    try:
        value = float(ratio) if colon and path else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise AhaError(f"--mix {spec!r}: give FILE:RATIO with a ratio of 0 or more, e.g. chat.jsonl:0.33")
    return Path(path).expanduser(), value


def read_mix(spec: str) -> tuple[Path, float, list[dict]]:
    """(file, ratio, rows) of a --mix: rows with a prompt and an answer (engine.train.data.load_rows)."""
    from engine.train.data import load_rows

    path, ratio = parse_mix(spec)
    if not path.is_file():
        raise AhaError(f"--mix file {path} not found; give a .jsonl/.csv/.parquet with prompt and answer columns")
    rows = [row for row in load_rows(path, "prompt", "answer") if str(row["prompt"]).strip()
            and str(row["answer"]).strip()]
    if not rows:
        raise AhaError(f"--mix file {path} has no rows with a prompt and an answer")
    return path, ratio, rows


def draw_rows(rows: Sequence[dict], count: int, seed: int) -> list[dict]:
    """`count` rows drawn with a random.Random(seed): without replacement while count ≤ len(rows), else
    whole shuffled passes over the rows and a partial one."""
    import random

    generator, drawn = random.Random(seed), []
    while len(drawn) < count:
        drawn += generator.sample(list(rows), min(len(rows), count - len(drawn)))
    return drawn


def mix_rows(out_path: Path, mixes: Sequence[str], seed: int | None, on_event: OnEvent = ignore) -> int:
    """Append the --mix rows to a finished output, once: round(ratio × kept traces) rows per FILE:RATIO, each
    {prompt_id, prompt, gold: None, thinking: "", answer, source: "mix:<file name>"} (what read_traces reads:
    a non-reasoning row has an empty thought), then a {"mix": …} record in the progress file so a rerun does
    not append again. Returns the rows appended (0 when done before)."""
    sidecar = progress_path(out_path)
    lines, _ = _complete_lines(sidecar)
    if any("mix" in record for _, record in lines):
        return 0
    traces, _ = _complete_lines(out_path)
    kept = sum(not _is_mix(record) for _, record in traces)
    added = 0
    with disk_errors(out_path), open(out_path, "a", encoding="utf-8", newline="\n") as stream:
        for number, spec in enumerate(mixes):
            path, ratio, rows = read_mix(spec)
            for row in draw_rows(rows, round(ratio * kept), (seed or 0) + number):
                _append_line(stream, {"prompt_id": prompt_id(row), "prompt": row["prompt"], "gold": None,
                                      "thinking": "", "answer": str(row["answer"]), "source": f"mix:{path.name}"})
                added += 1
    with open(sidecar, "a", encoding="utf-8", newline="\n") as stream:
        _append_line(stream, {"mix": list(mixes), "rows": added})
    on_event(make_event("log", message=f"mixed {added} non-reasoning rows into {out_path.name} ({kept} traces)"))
    return added


def check_counts(k: int, keep: str) -> None:
    if k < 1:
        raise AhaError(f"k must be at least 1 (samples per prompt), got {k}")
    if keep not in KEEP_RULES:
        raise AhaError(f"unknown keep rule {keep!r}; use one of {', '.join(KEEP_RULES)}")


def check_traces_output(out_path: Path, force: bool) -> None:
    """The traces file can be written or resumed: not a folder, not someone else's file (without force),
    in a place where files can be made. Creates nothing."""
    from engine.fileio import check_writable_folder

    if out_path.is_dir():
        raise AhaError(f"{out_path} is a folder; give the traces file to write, e.g. {out_path / 'traces.jsonl'}")
    check_writable_folder(out_path.parent)
    sidecar = progress_path(out_path)
    if not force and not sidecar.exists() and out_path.exists() and out_path.stat().st_size > 0:
        raise AhaError(f"{out_path} exists but has no {sidecar.name} beside it, so it was not written by "
                       "`aha distill generate`; pass --force to overwrite it or choose another output")


def generate_traces(teacher: Teacher, rows: Iterable[dict], *, k: int, out_path: str | Path,
                    rewards: Sequence = DEFAULT_REWARDS, reward_weights: Sequence[float] | None = None,
                    keep: str = "all", sampling: Sampling | None = None, pass_threshold: float = 1.0,
                    on_event: OnEvent = ignore, cancel=None, store=None, force: bool = False,
                    command: Mapping | None = None, readability: Readability | None = None,
                    mix: Sequence[str] = ()) -> GenerateStats:
    """Sample k replies per prompt from `teacher`, verify them with `rewards` (engine.train.rewards specs:
    built-in names or path.py:function), apply the `keep` rule, and append one JSON object per kept
    reply to `out_path`:

        {prompt_id, prompt, gold, thinking, answer, rewards{name: value}, reward, sample,
         teacher{kind, name, …}, sampling{temperature, top_p, max_tokens, seed}, timing{…}, usage{…}}

    and one per reply not kept to `rejected_path(out_path)`, with the same keys but the teacher, plus the
    reply's whole `text`, its `finish_reason`, `truncated`, and `reason`: the verifier's (rejection_reason:
    "truncated", "unscored" or the failed reward's name), or None for a reply that passed but was `dropped`
    ("duplicate" or "keep rule"). A prompt's lines come before its progress record.

    Resumable: prompts listed in the progress file beside the output (finished ones, including those
    whose replies were all rejected) are skipped. Emits progress/metrics/sample/log events; with a
    `store`, records a "generate" run with per-prompt metrics, and `command` ({argv, cwd}: how the
    CLI was called) in its config so `aha runs resume` can call it again. `readability` adds R1's readability
    filter (readability_reason) to verification; `mix` (FILE:RATIO specs) blends non-reasoning rows into a
    finished output (mix_rows). Returns this run's stats."""
    from engine.train.rewards import RewardSet

    check_counts(k, keep)
    reward_set = RewardSet(list(rewards), reward_weights)
    rows = _checked_rows(rows, needs_answer="accuracy" in reward_set.names)
    sampling = sampling or Sampling()
    out_path = Path(out_path).expanduser()
    check_traces_output(out_path, force)
    config = {"teacher": teacher.describe(), "k": k, "keep": keep, "rewards": list(reward_set.names),
              "reward_weights": reward_set.weights, "pass_threshold": pass_threshold,
              "sampling": asdict(sampling), "output": str(out_path),
              **({"readability": asdict(readability)} if readability is not None else {}),
              **({"mix": list(mix)} if mix else {})}
    done = _resume(out_path, config, force, on_event)
    ids = [prompt_id(row) for row in rows]
    first: dict[str, int] = {}
    for index, identity in enumerate(ids):
        first.setdefault(identity, index)  # a repeated row is one prompt
    pending = [index for identity, index in first.items() if identity not in done]
    stats = GenerateStats(output=str(out_path), prompts=len(first), skipped=len(first) - len(pending))
    if stats.skipped:
        on_event(make_event("log", message=f"resuming {out_path.name}: {stats.skipped} of {stats.prompts} prompts "
                                           "done already"))
    run_id = None
    if store is not None:
        run_id = store.create_run("generate", config={**config, "resumed": stats.skipped,
                                                              **({"command": dict(command)} if command else {})},
                                  dir=out_path.parent, status="running", pid=os.getpid())
        stats.run_id = run_id
        on_event(make_event("start", kind="generate", pid=os.getpid(), stages=[], run_id=run_id, run_dir=None))
    progress = Progress(on_event, "generate", total=stats.prompts, unit="prompts")
    progress.update(stats.skipped, force=True)
    started = time.monotonic()
    teacher_info = teacher.describe()
    try:
        with disk_errors(out_path), open(out_path, "a", encoding="utf-8", newline="\n") as traces, \
                open(rejected_path(out_path), "a", encoding="utf-8", newline="\n") as not_kept, \
                open(progress_path(out_path), "a", encoding="utf-8", newline="\n") as sidecar:
            prompts = [rows[index]["prompt"] for index in pending]
            for position, samples in teacher.generate(prompts, k, sampling, cancel):
                row = rows[pending[position]]
                identity = ids[pending[position]]
                verdicts, errors = verify(reward_set, row["prompt"], row, samples, pass_threshold,
                                           readability)
                for line in errors:
                    on_event(make_event("log", level="warning", message=line))
                kept, duplicates = select_kept(verdicts, keep)
                for verdict in kept:
                    _append_line(traces, _trace_record(identity, row, verdict, teacher_info))
                for verdict, dropped in _not_kept(verdicts, kept):
                    _append_line(not_kept, _rejected_record(identity, row, verdict, dropped))
                rejected: dict[str, int] = {}
                for verdict in verdicts:
                    if verdict.rejected is not None:
                        rejected[verdict.rejected] = rejected.get(verdict.rejected, 0) + 1
                accepted = len(verdicts) - sum(rejected.values())
                _append_line(sidecar, {"prompt_id": identity, "samples": len(verdicts), "accepted": accepted,
                                       "duplicates": duplicates, "kept": len(kept), "rejected": rejected})
                stats.prompts_done += 1
                stats.samples += len(verdicts)
                stats.accepted += accepted
                stats.duplicates += duplicates
                stats.kept += len(kept)
                for reason, count in rejected.items():
                    stats.rejected[reason] = stats.rejected.get(reason, 0) + count
                stats.seconds = time.monotonic() - started
                _report(on_event, store, run_id, stats, identity, row, verdicts, kept, progress)
        stats.seconds = time.monotonic() - started
        finished = stats.skipped + stats.prompts_done == stats.prompts
        stats.status = "complete" if finished else "cancelled" if is_cancelled(cancel) else "incomplete"
        if not finished:  # a finished run's last update was shown (done = total always is)
            progress.update(stats.skipped + stats.prompts_done, force=True)
        elif mix:
            mix_rows(out_path, mix, sampling.seed, on_event)
    except BaseException:
        if store is not None:
            store.update_run_status(run_id, "error")
        raise
    if store is not None:
        store.update_run_status(run_id, stats.status)
        store.add_artifact("traces", out_path, run_id=run_id, meta={"kept": stats.kept, "samples": stats.samples})
    on_event(make_event("artifact", kind="traces", path=str(out_path)))
    return stats


def _completion(verdict: Verdict, kept: bool) -> dict:
    """A teacher reply in the `sample` event's shape (engine.events.Completion)."""
    sample = verdict.sample
    length = sample.usage.get("completion_tokens")
    return {"text": sample.raw, "thinking": sample.thinking, "answer_text": sample.answer, "rewards": verdict.rewards,
            "reward": verdict.reward, "accepted": kept, "length": int(length) if length is not None else None,
            "truncated": sample.finish_reason == "length"}


def _text(value) -> str | None:
    return None if value is None else str(value)


def _checked_rows(rows: Iterable[dict], needs_answer: bool) -> list[dict]:
    rows = list(rows)
    if not rows:
        raise AhaError("the dataset has no rows; give at least one prompt")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise AhaError(f"dataset row {number} has no 'prompt' text; each row needs a prompt")
        if needs_answer and row.get("answer") is None:
            raise AhaError(f"dataset row {number} has no 'answer' (the ground truth the accuracy reward checks); "
                           "add one or leave out the accuracy reward")
    return rows


def _trace_record(identity: str, row: dict, verdict: Verdict, teacher_info: dict) -> dict:
    sample = verdict.sample
    return {"prompt_id": identity, "prompt": row["prompt"], "gold": row.get("answer"),
            "thinking": sample.thinking, "answer": sample.answer, "rewards": verdict.rewards,
            "reward": verdict.reward, "sample": verdict.index, "teacher": teacher_info,
            "sampling": sample.sampling, "timing": sample.timing, "usage": sample.usage}


def _not_kept(verdicts: Sequence[Verdict], kept: Sequence[Verdict]) -> list[tuple[Verdict, str | None]]:
    """The verdicts not kept, each with why a passing one was dropped: "duplicate" (the same thinking and
    answer as an earlier passing reply) or "keep rule"; None for a rejected one (its reason is its own)."""
    kept_ids, seen, found = {id(verdict) for verdict in kept}, set(), []
    for verdict in verdicts:
        key = (verdict.sample.thinking, verdict.sample.answer)
        if verdict.rejected is None:
            if id(verdict) not in kept_ids:
                found.append((verdict, "duplicate" if key in seen else "keep rule"))
            seen.add(key)
        else:
            found.append((verdict, None))
    return found


def _rejected_record(identity: str, row: dict, verdict: Verdict, dropped: str | None) -> dict:
    sample = verdict.sample
    return {"prompt_id": identity, "prompt": row["prompt"], "gold": row.get("answer"), "sample": verdict.index,
            "text": sample.raw, "prefilled": sample.prefilled, "thinking": sample.thinking, "answer": sample.answer,
            "rewards": verdict.rewards, "reward": verdict.reward, "reason": verdict.rejected, "dropped": dropped,
            "finish_reason": sample.finish_reason, "truncated": sample.finish_reason == "length",
            "sampling": sample.sampling, "timing": sample.timing, "usage": sample.usage}


def _report(on_event: OnEvent, store, run_id: int | None, stats: GenerateStats, identity: str, row: dict,
            verdicts: list[Verdict], kept: list[Verdict], progress: Progress) -> None:
    """One prompt done: its `sample` (every reply, `accepted` = kept in the output), the run's acceptance
    counts as `metrics`, progress."""
    step = stats.skipped + stats.prompts_done
    kept_ids = {id(verdict) for verdict in kept}
    on_event(make_event("sample", step=step, prompt_id=identity, prompt=row["prompt"], answer=_text(row.get("answer")),
                        completions=[_completion(verdict, id(verdict) in kept_ids) for verdict in verdicts]))
    on_event(make_event("metrics", step=step, **{name: round(value, 6) for name, value in stats.metrics().items()},
                        rejected=dict(stats.rejected)))
    progress.update(step, samples_per_s=round(stats.samples_per_s, 3),
                    acceptance_rate=round(stats.acceptance_rate, 4))
    if store is not None:
        store.add_metrics(run_id, step, stats.metrics())


def run_generation(config: GenerateConfig, *, on_event: OnEvent = ignore, cancel=None,
                   command: Mapping | None = None) -> GenerateStats:
    """`aha distill generate`: validate `config` (before the dataset is read and the teacher loaded or reached),
    read the prompts, open the teacher and run generate_traces into config.output with its store run;
    `command` is recorded for `aha runs resume`. The caller decides what an incomplete run means."""
    from engine.distill.teachers import make_teacher
    from engine.store import Store
    from engine.train.data import first_rows, open_dataset

    config.validate()
    rewards = list(config.reward)
    answer_column = config.answer_column or ("answer" if "accuracy" in rewards else None)
    rows = first_rows(open_dataset(config.dataset, 0, config.prompt_column, answer_column), config.limit)
    teacher = make_teacher(config.teacher, model=config.model, api_key_env=config.api_key_env,
                           concurrency=config.concurrency, n_ctx=config.n_ctx, timeout_s=config.timeout,
                           on_event=on_event)
    readability = Readability(config.max_thinking_tokens, config.reject_repeated_paragraphs,
                              config.min_language_share, config.language)
    sampling = Sampling(config.temperature, config.top_p, config.max_tokens, config.seed)
    try:
        with Store() as store:
            return generate_traces(teacher, rows, k=config.k, out_path=config.output, rewards=rewards,
                                   keep=config.keep, sampling=sampling, on_event=on_event, cancel=cancel,
                                   store=store, force=config.force, command=command, readability=readability,
                                   mix=config.mix)
    finally:
        teacher.close()
