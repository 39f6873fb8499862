"""The RQ worker process: model and detector loaded once, fast abandoned-job detection, hot model swap."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import redis
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from . import jobs
from .rq_seams import (HookedSimpleWorker, due_scheduled_job_ids, enqueue_now, ensure_registered,
                       failure_callback_name, refresh_started_lease, refresh_worker_key, worker_timing_kwargs)
from core.contract import FAILURE_CALLBACK, JOB_FUNCTION
from core.keys import SERVING_MODEL_KEY
from core.settings import Settings

log = logging.getLogger(__name__)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


class RefusedJob(Exception):
    """A job naming a function (or callback) other than ours: never imported, never run."""


class CheckJob(Job):
    """A Job that can only ever call our registered function and failure callback.

    Anyone who can write to Redis can enqueue a job naming any importable function; RQ would import
    and call it. These overrides make that impossible in this worker.
    """

    @property
    def func(self) -> Any:
        if self.func_name != JOB_FUNCTION:
            raise RefusedJob(f"function {self.func_name!r} is not {JOB_FUNCTION}")
        return super().func

    @property
    def failure_callback(self) -> Any:
        name = failure_callback_name(self)
        if name and name != FAILURE_CALLBACK:
            log.warning("refused_callback job=%s", self.id)
            return None
        return super().failure_callback

    @property
    def success_callback(self) -> Any:
        return None  # we register none; refuse whatever a job names

    @property
    def stopped_callback(self) -> Any:
        return None


class CheckWorker(HookedSimpleWorker):
    """Runs jobs in this process (SimpleWorker), on purpose.

    RQ's default Worker forks a work horse per job: every job would either reload TensorFlow, the model
    and the face detector (seconds) or use TensorFlow's thread pools in a forked child, which TF does not support.
    SimpleWorker keeps the loaded model in the one process. What the fork worker gave us for free we add
    back: a heartbeat thread that keeps the job's StartedJobRegistry entry alive with a SHORT TTL while it
    runs, so that a SIGKILLed worker's job expires in seconds and any worker's frequent maintenance
    (StartedJobRegistry.cleanup) retries it; and due retries are enqueued in-process rather than by RQ's
    scheduler, which is a forked child of this TensorFlow process. Every RQ internal this needs is in
    rq_seams.
    """

    def __init__(self, *args: Any, heartbeat_s: float = 5.0, **kwargs: Any) -> None:
        self.heartbeat_s = heartbeat_s
        self.lease_ttl = max(2, round(heartbeat_s * 4))  # the job's lease: 4 missed beats = abandoned
        # Maintenance (abandoned jobs, due retries, model swap) every beat; an idle worker wakes as often.
        beat = max(1, int(heartbeat_s))
        for key, value in worker_timing_kwargs(maintenance_s=beat, idle_wake_s=beat).items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("job_class", CheckJob)
        kwargs.setdefault("serializer", JSONSerializer)
        # The description holds the payload (chat ids): keep it out of logs.
        kwargs.setdefault("log_job_description", False)
        super().__init__(*args, **kwargs)

    def around_job(self, job: Job, run: Callable[[], Any]) -> None:
        """Swap in a newly promoted model between jobs, then run the job with a heartbeat thread."""
        self.refresh_model()
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, stop), name="job-heartbeat", daemon=True)
        beat.start()
        try:
            run()
        except REDIS_GONE as exc:
            # The queue Redis went away mid-job (a restart): the job, its bytes and its answer went with it, and the
            # bot tells the user to send again. RQ's loop would quit the worker on this; wait for Redis instead.
            log.warning("job_lost_with_redis job=%s error=%s", job.id, type(exc).__name__)
            wait_for_redis(self.connection)
        finally:
            stop.set()
            beat.join(timeout=5)

    def _beat(self, job: Job, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                with self.connection.pipeline() as pipe:
                    # Only an entry that still exists is refreshed: a finished job is never resurrected.
                    if not refresh_started_lease(self, job, self.lease_ttl, pipe):
                        continue
                    refresh_worker_key(self, self.lease_ttl + 60, pipe)
                    pipe.execute()
            except redis.exceptions.RedisError as exc:
                log.warning("job_heartbeat_failed error=%s", type(exc).__name__)

    def after_maintenance(self) -> None:
        self.enqueue_due_retries()
        self.refresh_model()
        if ensure_registered(self):
            log.info("worker_registered_again name=%s", self.name)  # Redis restarted empty

    def enqueue_due_retries(self) -> int:
        """Move retries whose back-off has passed back onto the queue (what RQ's scheduler process does).

        Returns how many this worker moved. Each move is one MULTI/EXEC (ZREM from the scheduled registry +
        the enqueue): a worker dying half-way loses no retry, and two workers never both enqueue one.
        """
        moved = 0
        for queue in self.queues:
            registry = ScheduledJobRegistry(queue=queue)
            for job_id in due_scheduled_job_ids(registry):
                if self._move_due_retry(queue, registry, job_id):
                    moved += 1
        return moved

    def _move_due_retry(self, queue: Queue, registry: ScheduledJobRegistry, job_id: str) -> bool:
        """ZREM + enqueue in one transaction, under WATCH of the registry: only one worker's EXEC succeeds."""
        for _ in range(3):  # a WatchError only means the registry changed: look again
            with self.connection.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(registry.key)
                    if pipe.zscore(registry.key, job_id) is None:
                        return False  # another worker moved it (or it was cancelled)
                    try:
                        job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
                    except Exception:  # deleted or expired meanwhile: drop the dangling entry
                        job = None
                    pipe.multi()
                    pipe.zrem(registry.key, job_id)
                    if job is not None:
                        enqueue_now(queue, job, pipeline=pipe)
                    pipe.execute()
                except redis.exceptions.WatchError:
                    continue
            if job is None:
                log.warning("retry_dropped job=%s reason=missing", job_id)
                return False
            log.info("retry_enqueued job=%s retries_left=%s", job_id, job.retries_left)
            return True
        return False

    def refresh_model(self) -> None:
        """Swap in a newly promoted model; announce the served one on every maintenance round.

        Announced again each round (with a TTL of a few rounds), not only at start and on a swap: a restarted,
        empty Redis shows the served model within seconds, and a fleet that died stops claiming one.
        """
        pipeline = jobs.PIPELINE
        if pipeline is None:
            return
        pipeline.models.refresh()
        publish_serving(self.connection, pipeline.models.current.ident, self.heartbeat_s)


REDIS_GONE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def wait_for_redis(conn: redis.Redis, give_up_s: float = 300.0) -> None:
    """Until Redis answers a PING (back-off 0.5 s to 5 s); after `give_up_s` raise, and the process manager
    restarts the worker."""
    deadline, wait = time.monotonic() + give_up_s, 0.5
    while True:
        try:
            conn.ping()
            log.info("redis_back")
            return
        except REDIS_GONE:
            if time.monotonic() > deadline:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 5.0)


def publish_serving(conn: redis.Redis, ident: str, heartbeat_s: float) -> None:
    try:
        conn.set(SERVING_MODEL_KEY, ident, ex=max(30, round(heartbeat_s * 6)))
    except redis.exceptions.RedisError as exc:  # Redis restarting: the next round announces it
        log.warning("serving_model_publish_failed error=%s", type(exc).__name__)


def configure_tensorflow() -> None:
    """Thread pools from WORKER_TF_THREADS (several workers on one host should not oversubscribe cores)."""
    from .classifier import threads_from_env

    threads = threads_from_env()
    if threads > 0:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_worker(settings: Settings, name: str | None = None, burst: bool = False) -> None:
    """Load everything once, announce the served model, then work the checks queue until stopped."""
    from .pipeline import Pipeline

    configure_tensorflow()
    pipeline = Pipeline(settings)  # raises ModelLoadError before we register as a worker
    jobs.PIPELINE = pipeline
    conn = redis.Redis.from_url(settings.redis_url)
    publish_serving(conn, pipeline.models.current.ident, _env_float("WORKER_HEARTBEAT_S", 5.0))
    queue = Queue(settings.queue_name, connection=conn, serializer=JSONSerializer, job_class=CheckJob)
    worker = CheckWorker([queue], connection=conn, name=name,
                         heartbeat_s=_env_float("WORKER_HEARTBEAT_S", 5.0))
    log.info("worker_ready name=%s model=%s detector=%s", worker.name, pipeline.models.current.ident,
             pipeline.detector.device)
    worker.work(burst=burst, logging_level=settings.log_level)
