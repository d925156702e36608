"""One batch worker: the task's model loaded once, then ``run_task`` for each study it is given.

The local engine runs one worker in-process; the Ray engine wraps this class as a Ray actor, one
per worker process (batch/ray_engine.py). A study that fails is returned as a ``failed`` row with
its error message; nothing of it is left in its output folder (tasks/runner.py stages every run).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from PETDiffusionLib.batch import headline
from PETDiffusionLib.batch.cohort import Study
from PETDiffusionLib.errors import PETDiffusionError
from PETDiffusionLib.progress import NULL_PROGRESS
from PETDiffusionLib.tasks.registry import task_spec
from PETDiffusionLib.tasks.runner import load_task_model, run_task

log = logging.getLogger(__name__)


def worker_name() -> str:
    """``host:pid``: tells the workers of a cluster apart in summary.csv."""
    return f"{socket.gethostname()}:{os.getpid()}"


def error_text(exc: BaseException) -> str:
    """The user-facing message of a study's failure: the message alone for the project's own
    errors (they name the file and the problem), prefixed by the exception type otherwise."""
    if isinstance(exc, PETDiffusionError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class StudyWorker:
    def __init__(self, task_id: str, device: str | None = None, model_path: str | None = None):
        t0 = time.monotonic()
        self.task_id, self.device, self.model_path = task_id, device, model_path
        self.spec = task_spec(task_id)
        self.model = load_task_model(task_id, model_path, device)
        self.name = worker_name()
        self.model_seconds = round(time.monotonic() - t0, 2)
        self.studies = 0
        log.info("worker %s: %s model loaded in %.1f s", self.name, task_id, self.model_seconds)

    def info(self) -> dict[str, Any]:
        """Who this worker is and what loading its model cost (once per worker)."""
        return {"worker": self.name, "model_seconds": self.model_seconds, "studies": self.studies}

    def run(self, study: dict, out_dir: str) -> dict[str, Any]:
        """Run one study (``Study.to_dict()``) into ``out_dir/<id>``; returns its summary row."""
        s = Study(**study)
        folder = Path(out_dir) / s.id
        t0 = time.monotonic()
        self.studies += 1
        row: dict[str, Any] = {"id": s.id, "worker": self.name}
        try:
            manifest_path = run_task(self.task_id, s.inputs, s.params, folder, NULL_PROGRESS,
                                     self.device, self.model_path, model=self.model)
            manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
            row.update(headline.read(self.spec, folder, manifest))
            row["status"] = "ok"
        except Exception as exc:  # isolate the study: its error goes into summary.csv, others go on
            log.warning("study %s failed: %s", s.id, error_text(exc))
            log.debug("study %s traceback", s.id, exc_info=True)
            row.update(status="failed", error=error_text(exc))
        row["seconds"] = round(time.monotonic() - t0, 2)
        return row
