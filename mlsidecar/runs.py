"""Training runs, from the optional ``status`` of ``training`` events.

``started`` begins a run (at the event's ``ts``, or when the sidecar reads it);
``running`` begins one too when the job has none in progress (the sidecar
first hears of it mid-run); ``completed`` and ``failed`` end it and observe its
duration (the event's ``duration_s`` when given, else the time since the
start) in ``ml_training_run_duration_seconds{job_name,status}``. Events
without ``status`` leave runs alone, so a workload that never sends one has no
run series.

Exported: ``ml_training_run_active{job_name}`` (1/0),
``ml_training_run_start_timestamp_seconds{job_name}`` (the current run's age
is ``time() - ...``), and ``ml_training_active_jobs``. After a restart the runs
in progress are read back from the first two, so nothing restarts from zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import catalogue as C

if TYPE_CHECKING:
    from .store import Batch, SeriesKey

STATUSES = ("started", "running", "completed", "failed")


class TrainingRuns:
    """The runs in progress of the jobs one worker has seen: job name -> start (unix seconds)."""

    def __init__(self) -> None:
        self.active: dict[str, float] = {}

    def restore(self, values: dict[SeriesKey, Any]) -> None:
        """Runs in progress from the stored series of a previous worker."""
        for (fam, labels), v in values.items():
            if fam is C.TRAINING_RUN_ACTIVE and v == 1.0:
                self.active[labels[0]] = values.get((C.TRAINING_RUN_START, labels), 0.0)

    def event(self, batch: Batch, job: str, status: str, at: float, duration: float | None) -> None:
        key = (job,)
        if status == "started" or (status == "running" and job not in self.active):
            self.active[job] = at
            batch.set(C.TRAINING_RUN_START, key, at)
            batch.set(C.TRAINING_RUN_ACTIVE, key, 1.0)
        elif status in ("completed", "failed"):
            start = self.active.pop(job, None)
            if duration is None and start:
                duration = max(0.0, at - start)
            if duration is not None:
                batch.observe(C.TRAINING_RUN_DURATION, key + (status,), duration)
            batch.set(C.TRAINING_RUN_ACTIVE, key, 0.0)
        batch.set(C.TRAINING_ACTIVE_JOBS, (), float(len(self.active)))
