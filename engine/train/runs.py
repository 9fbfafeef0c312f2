"""The run directory: config, checkpoints (atomic, pruned), metrics.jsonl, samples.jsonl, run.log and
the optional TensorBoard events, with the run's row in the store. The directory alone is enough to
resume; the store is the index. Rank 0 writes; the other processes of a job only read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from engine.errors import AhaError
from engine.fileio import disk_errors
from engine.jobs import OnEvent, ignore, make_event
from engine.train.config import config_to_toml
from engine.train.distributed import Distributed

CHECKPOINTS = "checkpoints"


def start_run(kind: str, config: Any, on_event: OnEvent, distributed: Distributed) -> Run:
    """A new run: rank 0 creates it (store row, directory) and tells the other ranks where it is."""
    run, error = None, None
    if distributed.is_main:
        try:
            run = Run.create(kind, config, on_event)
        except AhaError as raised:
            error = raised
    directory, message = distributed.broadcast((str(run.dir) if run else None, str(error) if error else None))
    if message is not None:
        raise error if error is not None else AhaError(message)
    return run if run is not None else Run.follower(directory, kind)


def check_run_directory(directory: Path) -> None:
    """A new run's output_dir: not a run already, not a file, and somewhere files can be made."""
    from engine.fileio import check_writable_folder

    if (directory / "run.json").exists():
        raise AhaError(f"{directory} already holds a run: resume it with --resume {directory} or choose "
                       "another output_dir")
    if directory.exists() and not directory.is_dir():
        raise AhaError(f"output_dir {directory} is a file, not a folder; choose another output_dir")
    check_writable_folder(directory)


def saved_config(directory: str | Path) -> dict[str, Any]:
    """The settings a run directory was started with (its config.json)."""
    directory = Path(directory).expanduser()
    if not (directory / "run.json").is_file() or not (directory / "config.json").is_file():
        raise AhaError(f"{directory} is not a run directory (no run.json/config.json): give a folder under runs/")
    return json.loads((directory / "config.json").read_text(encoding="utf-8"))


def reopen_run(directory: str | Path, on_event: OnEvent, distributed: Distributed) -> Run:
    """An existing run for resume; the other ranks follow rank 0's."""
    if distributed.is_main:
        return Run.open(directory, on_event)
    info = json.loads((Path(directory).expanduser() / "run.json").read_text(encoding="utf-8"))
    return Run.follower(directory, info["kind"])


# The run directory --------------------------------------------------------------------------------

class Run:
    """One training run: its directory (config, checkpoints, metrics.jsonl, samples.jsonl, run.log) and
    its row in the store. The directory alone is enough to resume; the store is the index."""

    def __init__(self, directory: Path, kind: str, store_id: int | None, on_event: OnEvent = ignore, store=None,
                 writer: bool = True):
        self.dir, self.kind, self.store_id, self._on_event = Path(directory), kind, store_id, on_event
        self._store = store
        self.writer = writer  # False on ranks > 0 of a multi-process job: they read the directory, never write
        self._tensorboard = None

    @classmethod
    def follower(cls, directory: str | Path, kind: str) -> Run:
        """The run as a rank > 0 sees it: checkpoints readable, every record and event left to rank 0."""
        return cls(Path(directory).expanduser(), kind, None, ignore, writer=False)

    # creating and opening

    @classmethod
    def create(cls, kind: str, config: Any, on_event: OnEvent = ignore) -> Run:
        """A new run for config (a dataclass): a store row, then `output_dir` or <data dir>/runs/<kind>-<id>."""
        from engine.paths import subdir
        from engine.store import Store

        if config.output_dir:
            check_run_directory(Path(config.output_dir).expanduser())  # before the run's row: a refusal is no run
        store = Store()
        store_id = store.create_run(kind, dataclasses.asdict(config), status="created", pid=os.getpid())
        directory = Path(config.output_dir).expanduser() if config.output_dir else subdir("runs") / f"{kind}-{store_id}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            store.delete_run(store_id)
            raise AhaError(f"cannot create the run directory {directory} ({error.strerror or error}); choose "
                           "another output_dir") from None
        store.set_run_dir(store_id, directory.resolve())
        run = cls(directory, kind, store_id, on_event, store)
        write_json(directory / "run.json", {"kind": kind, "store_id": store_id, "created_at": time.time()})
        write_json(directory / "config.json", dataclasses.asdict(config))
        _atomic_text(directory / "config.toml", config_to_toml(config))
        run.announce()
        return run

    @classmethod
    def open(cls, directory: str | Path, on_event: OnEvent = ignore) -> Run:
        """An existing run directory (for resume)."""
        from engine.store import Store

        directory = Path(directory).expanduser()
        info_file = directory / "run.json"
        if not info_file.is_file():
            raise AhaError(f"{directory} is not a run directory (no run.json): give a folder under runs/")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        store = Store()
        store_id = info.get("store_id")
        try:
            store.get_run(store_id)
        except AhaError:  # a run directory copied from elsewhere: index it here
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            store_id = store.create_run(info["kind"], config, dir=directory.resolve(), status="created",
                                        pid=os.getpid())
            write_json(info_file, {**info, "store_id": store_id})
        run = cls(directory, info["kind"], store_id, on_event, store)
        run.announce()
        return run

    def announce(self) -> None:
        """The run's `start` event: its id and directory, before anything else the run emits (run_job
        completes it with the job's kind, pid and stages)."""
        self.emit(make_event("start", kind=self.kind, pid=os.getpid(), stages=[], run_id=self.store_id,
                             run_dir=str(self.dir.resolve())))

    def saved_config(self) -> dict[str, Any]:
        return saved_config(self.dir)

    @property
    def store(self):
        if self._store is None:
            from engine.store import Store

            self._store = Store()
        return self._store

    # events, metrics, samples

    def emit(self, event: dict) -> None:
        """Forward an event; log and error events also go to run.log."""
        if not self.writer:
            return
        if event["type"] in ("log", "error"):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.dir / "run.log", "a", encoding="utf-8") as stream:
                stream.write(f"{stamp} {event.get('level', event['type'])}: {event.get('message', '')}\n")
        self._on_event(event)

    def log(self, message: str, level: str = "info") -> None:
        self.emit(make_event("log", message=message, level=level))

    def set_status(self, status: str) -> None:
        """The run's status in the store; `running` also records this process as the run's (its pid and a
        heartbeat), so `Store.recover_runs` can tell when it is gone."""
        if not self.writer:
            return
        if status == "running":
            self.store.claim_run(self.store_id)
        else:
            self.store.update_run_status(self.store_id, status)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """One line in metrics.jsonl, the store's metrics table, and a `metrics` event."""
        if not self.writer:
            return
        clean = {key: _finite(value) for key, value in metrics.items()}
        _append_jsonl(self.dir / "metrics.jsonl", [{"step": step, "time": round(time.time(), 3), **clean}])
        self.store.add_metrics(self.store_id, step, {key: value for key, value in clean.items() if value is not None})
        if self._tensorboard is not None:
            for key, value in clean.items():
                if value is not None:
                    self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()
        self.emit(make_event("metrics", step=step, **clean))

    def report_to_tensorboard(self, resumed_step: int = 0) -> None:
        """Also write every metric as a TensorBoard scalar under <run>/tensorboard (`tensorboard --logdir`).
        A resume purges the events written after its checkpoint, as metrics.jsonl is truncated."""
        if not self.writer:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise AhaError("report_to = tensorboard needs the tensorboard package: pip install tensorboard") from error
        self._tensorboard = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None)

    def close(self) -> None:
        """Flush and close what the run holds open (the TensorBoard writer)."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """Rollouts of one step: samples.jsonl, the store, and one `sample` event per entry."""
        if not self.writer:
            return
        _append_jsonl(self.dir / "samples.jsonl", [{"step": step, **sample} for sample in samples])
        for sample in samples:
            self.store.add_sample(self.store_id, step, sample)
            self.emit(make_event("sample", step=step, **sample))

    def artifact(self, kind: str, path: Path, **meta: Any) -> None:
        if not self.writer:
            return
        self.store.add_artifact(kind, path, self.store_id, meta)
        self.emit(make_event("artifact", kind=kind, path=str(path), **meta))

    def truncate_logs(self, step: int) -> None:
        """Drop metrics and samples recorded after `step` (written after the checkpoint a resume starts from)."""
        if not self.writer:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.dir / name
            if path.exists():
                lines = path.read_text(encoding="utf-8").splitlines()
                kept = [line for line in lines if line.strip() and _line_step(line) <= step]
                _atomic_text(path, "".join(line + "\n" for line in kept))
        self.store.forget_steps_after(self.store_id, step)

    # checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / CHECKPOINTS

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a partial one is a hidden temp folder, never listed)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [path for path in self.checkpoint_dir.glob("step-*") if path.name[5:].isdigit()]
        return sorted(found, key=lambda path: int(path.name[5:]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    @contextlib.contextmanager
    def new_checkpoint(self, step: int, keep: int | None) -> Iterator[Path]:
        """Yield a temp folder to fill; on success it is renamed to checkpoints/step-N in one step, and
        checkpoints beyond `keep` are deleted oldest first. A crash leaves only a hidden temp folder."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_dir / f"step-{step}"
        temp = self.checkpoint_dir / f".step-{step}.partial-{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        try:
            with disk_errors(final):
                yield temp
                if final.exists():
                    old = self.checkpoint_dir / f".step-{step}.old-{os.getpid()}"
                    os.replace(final, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(temp, final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        if keep is not None:
            for path in self.checkpoints()[:-keep] if keep > 0 else []:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.checkpoint_dir.glob(".step-*"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _append_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        stream.flush()


def write_json(path: Path, data: Any) -> None:
    _atomic_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _atomic_text(path: Path, text: str) -> None:
    from engine.fileio import atomic_write_text

    atomic_write_text(path, text)


