"""The training session GRPO, SFT and the two distillation trainers share: processes, the run (new or
resumed), the trainer, the data stream, the fit and the final save, in that order, once.

`run_session` is the whole start-up and tear-down sequence; a trainer gives its kind, its prepared data
source and a `make_step(trainer, stream)` that builds its step function (and whatever else it needs, a
reference model, say). The result is what `aha grpo` / `aha distill sft|kd` report in `done`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.jobs import CancelToken, OnEvent, cancel_handling


def run_session(kind: str, config, source, make_step: Callable[[Any, Any], Callable], *,
                describe: Callable[[Any, Any], str], resume: str | Path | None = None, on_event: OnEvent,
                cancel: CancelToken | None = None, check: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Start (or reopen `resume`) a run of `kind`, train until max_steps, a stop or a cancel, save the final
    adapter/model. `check(distributed)` validates what depends on the number of processes before the run
    exists. Returns {"status", "run_dir", "step", "adapter"|"model", "eval_accuracy"?}. The token is set by
    SIGINT/SIGTERM while it runs (as run_job's is); under several processes the ranks agree on it."""
    from engine.train.core import Trainer, check_4bit, resolve_device
    from engine.train.data import PromptStream
    from engine.train.distributed import close_distributed, init_distributed
    from engine.train.runs import reopen_run, start_run

    cancel = cancel or CancelToken()
    check_4bit(config, resolve_device(config.device))  # settings that cannot run fail before the run exists
    distributed = init_distributed(config.device)
    try:
        if check is not None:
            check(distributed)
        run = (reopen_run(resume, on_event, distributed) if resume is not None
               else start_run(kind, config, on_event, distributed))
        with cancel_handling(cancel, read_stdin=False):
            trainer = Trainer(config, run, cancel=cancel, resume=resume is not None, distributed=distributed)
            stream = PromptStream(source, config.seed)
            if trainer.resumed_state:
                stream.load_state_dict(trainer.resumed_state["data"])
            run.log(describe(config, trainer))
            step = make_step(trainer, stream)
            status = trainer.fit(step, state=lambda: {"data": stream.state_dict()},
                                 restore_state=lambda state: stream.load_state_dict(state["data"]), stage="train")
            final = trainer.save_final() if status == "complete" else None
    finally:
        close_distributed(distributed)
    result: dict[str, Any] = {"status": status, "run_dir": str(run.dir), "step": trainer.step}
    if getattr(step, "last_accuracy", None) is not None:
        result["eval_accuracy"] = step.last_accuracy
    if final is not None:
        result["adapter" if config.use_peft else "model"] = str(final)
    return result
