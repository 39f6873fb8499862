"""The one place that touches RQ internals: private attributes, undocumented methods and worker hooks.

The worker needs a few things RQ does not offer as public API (an in-process worker with a short job lease,
due retries moved without RQ's forked scheduler, a look at a job's failure callback name before importing
it). Each is wrapped here, with the RQ version and behaviour it relies on, so that an RQ upgrade has one
module to read and tests/test_rq_seams.py to fail loudly when any of it changes. Tested against RQ 2.12.x.
"""

from __future__ import annotations

from typing import Any, Callable

from redis.client import Pipeline
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import StopRequested
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.utils import current_timestamp

TESTED_RQ_MINOR = (2, 12)  # tests/test_rq_seams.py refuses any other minor version until re-checked


def enqueue_now(queue: Queue, job: Job, pipeline: Pipeline | None = None) -> None:
    """Put an existing (stored) job back on `queue`, front or back as the job asks; no dependency checks.

    RQ 2.12: `Queue._enqueue_job(job, pipeline=None, at_front=False, unique=False)` is what RQ's own
    scheduler (`RQScheduler.enqueue_scheduled_jobs`) and `Job.retry` call. With a pipeline it only queues
    commands on it (HSET status and job hash, EXPIRE, RPUSH/LPUSH) and does NOT execute it, so the caller
    can make it part of a MULTI/EXEC transaction; its one read (the Redis server version) goes through
    `queue.connection`, not the pipeline. `Job.should_enqueue_at_front()` (undocumented) is the at_front
    rule RQ's scheduler applies to a retried job.
    """
    queue._enqueue_job(job, pipeline=pipeline, at_front=job.should_enqueue_at_front())


def failure_callback_name(job: Job) -> str | None:
    """The dotted name of the job's on_failure callback, read WITHOUT importing it; None when it has none.

    RQ 2.12: `Job._failure_callback_name` (private) holds `Callback(name).name` after `enqueue` and the
    stored `failure_callback_name` field after `Job.fetch` (None when the field is empty). The public
    `Job.failure_callback` property imports the named attribute, which is what we must avoid for a name
    we do not trust.
    """
    return job._failure_callback_name or None


def another_try_follows(job: Job) -> bool:
    """In an on_failure callback: will RQ try this job again after this failed try?

    RQ 2.12 calls on_failure on EVERY failed try, BEFORE it decides to retry and before `Job.retry`
    decrements `retries_left`: in `Worker.perform_job` (an exception in the job; `handle_job_failure`, which
    retries, comes after `execute_failure_callback`) and in `StartedJobRegistry.cleanup` (an abandoned job,
    its worker gone). So a positive `retries_left` here means another try is coming, 0 or None that this
    was the last.
    """
    return bool(job.retries_left)


def refresh_started_lease(worker: SimpleWorker, job: Job, ttl: int, pipeline: Pipeline) -> bool:
    """Push the job's StartedJobRegistry expiry to now + ttl, only if its entry still exists.

    False (and nothing queued on the pipeline) when the worker has no current execution.
    RQ 2.12: the running execution is `worker.execution` (set by `prepare_execution`, cleared by
    `cleanup_execution`); `StartedJobRegistry.add_execution(execution, pipeline, ttl, xx)` ZADDs the
    `{job_id}:{execution_id}` member with score now + ttl; xx=True (ZADD XX) refreshes an existing member
    only, so a heartbeat that races the job's end never resurrects a finished job's entry. Expired members
    are what `StartedJobRegistry.cleanup` treats as abandoned (on_failure, then retry or fail).
    """
    execution = worker.execution
    if execution is None:
        return False
    job.started_job_registry.add_execution(execution, pipeline=pipeline, ttl=ttl, xx=True)
    return True


def refresh_worker_key(worker: SimpleWorker, ttl: int, pipeline: Pipeline) -> None:
    """Keep the worker's own `rq:worker:{name}` hash alive for ttl seconds (last_heartbeat updated).

    RQ 2.12: `BaseWorker.heartbeat(timeout=None, pipeline=None)` HSETs last_heartbeat and EXPIREs the key,
    queued on the pipeline when one is given. A SimpleWorker does not call it while a job runs.
    """
    worker.heartbeat(ttl, pipeline=pipeline)


def ensure_registered(worker: SimpleWorker) -> bool:
    """Put the worker back into RQ's worker sets if a Redis restart emptied them; True when it had to.

    RQ 2.12 registers a worker once, at birth (`rq.worker_registration.register`: the `rq:workers` set and
    one set per queue); nothing registers it again, so after a restart `Worker.count()` (the operators'
    worker gauge) said 0 while the worker kept working."""
    if worker.connection.sismember(worker_registration.REDIS_WORKER_KEYS, worker.key):
        return False
    worker_registration.register(worker)
    return True


def due_scheduled_job_ids(registry: ScheduledJobRegistry) -> list[str]:
    """Ids of the jobs in `registry` whose scheduled time has passed (up to RQ's chunk of 1000).

    RQ 2.12: `ScheduledJobRegistry.get_jobs_to_schedule(timestamp)` (undocumented; RQ's scheduler uses
    it) is a ZRANGEBYSCORE 0..timestamp; scores are UTC epoch seconds as `rq.utils.current_timestamp()`
    gives them.
    """
    return registry.get_jobs_to_schedule(current_timestamp())


def worker_timing_kwargs(maintenance_s: int, idle_wake_s: int) -> dict[str, int]:
    """Worker constructor kwargs: maintenance every `maintenance_s`, an idle worker waking every `idle_wake_s`.

    RQ 2.12: `BaseWorker(maintenance_interval=..., worker_ttl=...)`; maintenance (registry cleanup, our
    retries) runs from the work loop when `maintenance_interval` has passed, and the idle BLPOP waits
    `dequeue_timeout = max(1, worker_ttl - 15)` seconds, so the loop wakes at least that often.
    """
    return {"maintenance_interval": max(1, maintenance_s), "worker_ttl": 15 + max(1, idle_wake_s)}


class HookedSimpleWorker(SimpleWorker):
    """A SimpleWorker whose RQ-internal hooks are turned into three of ours.

    RQ 2.12 hooks overridden (none is documented API):
    - `get_heartbeat_ttl(job)`: called by `prepare_execution` and `prepare_job_execution` for the
      StartedJobRegistry score (now + ttl), the Execution and worker key TTLs of the job about to run;
      returns `lease_ttl` (SimpleWorker's own returns the job timeout or DEFAULT_WORKER_TTL).
    - `execute_job(job, queue)`: SimpleWorker runs the job in this process (prepare_execution,
      perform_job, IDLE); `around_job(job, run)` wraps it, `run()` being RQ's execution.
    - `run_maintenance_tasks()`: called from the work loop every `maintenance_interval` (registry
      cleanup); `after_maintenance()` runs after RQ's own tasks.
    - `work()`: RQ's warm-shutdown handler (`request_stop` -> `_shutdown`) raises StopRequested when the worker
      is idle. `work()` catches it only inside its loop body, so a SIGTERM landing on the loop's own lines
      (`while True:`, or before the loop) escapes as a traceback (seen in CI). Here it is the clean stop it
      was meant to be.
    """

    lease_ttl: int = 60

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.lease_ttl

    def work(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return super().work(*args, **kwargs)
        except StopRequested:
            self.log.info("Worker %s: stopping on request", self.name)
            return False

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.around_job(job, lambda: SimpleWorker.execute_job(self, job, queue))

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        self.after_maintenance()

    def around_job(self, job: Job, run: Callable[[], Any]) -> None:
        run()

    def after_maintenance(self) -> None:
        pass
