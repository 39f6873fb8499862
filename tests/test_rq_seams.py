"""The RQ internals the worker relies on (inference_worker/rq_seams.py), checked against the installed RQ.

Any failure here means RQ changed something the worker depends on: read rq_seams.py and RQ's changelog
before relaxing a check. Real Redis (the private test server), real SimpleWorkers in burst mode, no
TensorFlow.
"""

from __future__ import annotations

import inspect
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
import rq
from rq import Callback, Queue, Retry, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from core.contract import FAILURE_CALLBACK, JOB_FUNCTION, JobPayload
from inference_worker import rq_seams
from inference_worker.rq_seams import (HookedSimpleWorker, another_try_follows, due_scheduled_job_ids,
                                       enqueue_now, failure_callback_name, refresh_started_lease,
                                       refresh_worker_key, worker_timing_kwargs)
from inference_worker.worker import CheckJob, CheckWorker

HERE = __name__  # "tests.test_rq_seams": the job functions below are imported by RQ under this name


def _params(func) -> set[str]:
    return set(inspect.signature(func).parameters)


# ---------------------------------------------------------------- the installed RQ

def test_installed_rq_is_the_tested_minor_version():
    major, minor = (int(x) for x in rq.__version__.split(".")[:2])
    assert (major, minor) == rq_seams.TESTED_RQ_MINOR, (
        f"RQ {rq.__version__} installed; rq_seams was checked against {rq_seams.TESTED_RQ_MINOR}: re-check "
        "every seam against the new RQ source, then raise TESTED_RQ_MINOR")


def test_private_and_undocumented_api_has_the_parameters_we_pass(redis_url):
    from rq.executions import Execution
    from rq.utils import current_timestamp
    from rq.worker.base import BaseWorker

    assert {"job", "pipeline", "at_front"} <= _params(Queue._enqueue_job)
    assert _params(Job.should_enqueue_at_front) == {"self"}
    assert {"execution", "pipeline", "ttl", "xx"} <= _params(StartedJobRegistry.add_execution)
    assert {"timeout", "pipeline"} <= _params(BaseWorker.heartbeat)
    assert {"timestamp"} <= _params(ScheduledJobRegistry.get_jobs_to_schedule)
    assert _params(current_timestamp) == set() and abs(current_timestamp() - time.time()) < 2
    assert {"maintenance_interval", "worker_ttl", "log_job_description", "job_class", "serializer"} <= _params(
        BaseWorker.__init__)
    # The hooks HookedSimpleWorker overrides, with the arguments RQ calls them with.
    assert _params(SimpleWorker.get_heartbeat_ttl) == {"self", "job"}
    assert _params(SimpleWorker.execute_job) == {"self", "job", "queue"}
    assert _params(SimpleWorker.run_maintenance_tasks) == {"self"}
    assert isinstance(BaseWorker.dequeue_timeout, property)
    assert "composite_key" in dir(Execution)
    # Private attributes: present on a fresh job and on a worker.
    r = redis.Redis.from_url(redis_url)
    job = Job.create("x.y", connection=r, on_failure=Callback("a.b"))
    assert job._failure_callback_name == "a.b" and job.retries_left is None
    assert SimpleWorker(["q"], connection=r).execution is None


# ---------------------------------------------------------------- each seam, behaviourally

def test_enqueue_now_only_queues_commands_on_a_given_pipeline(redis_url):
    r = redis.Redis.from_url(redis_url)
    queue = Queue("seams", connection=r, serializer=JSONSerializer)
    job = queue.create_job(JOB_FUNCTION, args=({"x": 1},))
    job.save()
    with r.pipeline(transaction=True) as pipe:
        pipe.multi()
        enqueue_now(queue, job, pipeline=pipe)
        assert queue.count == 0, "_enqueue_job executed the caller's pipeline itself"
        pipe.execute()
    assert queue.job_ids == [job.id]
    assert Job.fetch(job.id, connection=r, serializer=JSONSerializer).get_status() == JobStatus.QUEUED
    other = queue.create_job(JOB_FUNCTION, args=({"x": 2},))
    other.save()
    enqueue_now(queue, other)  # without a pipeline: at once
    assert queue.job_ids == [job.id, other.id]


def test_failure_callback_name_is_read_without_importing_it(redis_url):
    r = redis.Redis.from_url(redis_url)
    queue = Queue("seams", connection=r, serializer=JSONSerializer, job_class=CheckJob)
    foreign = queue.enqueue(JOB_FUNCTION, {"x": 1}, on_failure=Callback("os.system"))
    ours = queue.enqueue(JOB_FUNCTION, {"x": 1}, on_failure=Callback(FAILURE_CALLBACK))
    plain = queue.enqueue(JOB_FUNCTION, {"x": 1})
    fetch = lambda j: CheckJob.fetch(j.id, connection=r, serializer=JSONSerializer)  # noqa: E731
    assert failure_callback_name(foreign) == failure_callback_name(fetch(foreign)) == "os.system"
    assert failure_callback_name(fetch(ours)) == FAILURE_CALLBACK
    assert failure_callback_name(plain) is None and failure_callback_name(fetch(plain)) is None
    assert fetch(foreign).failure_callback is None  # CheckJob refuses a foreign name through the seam
    assert fetch(ours).failure_callback.__name__ == "report_failure"


def test_worker_timing_kwargs_set_maintenance_and_idle_wake_up(redis_url):
    w = HookedSimpleWorker(["seams"], connection=redis.Redis.from_url(redis_url),
                           **worker_timing_kwargs(maintenance_s=2, idle_wake_s=3))
    assert w.maintenance_interval == 2 and w.dequeue_timeout == 3


class _StoppedOutsideTheLoopBody(HookedSimpleWorker):
    """SIGTERM's handler running where RQ's work() does not catch StopRequested (here: right after bootstrap)."""

    def bootstrap(self, *args, **kwargs):
        super().bootstrap(*args, **kwargs)
        self.request_stop(signal.SIGTERM, None)


def test_a_stop_request_outside_the_loop_body_is_a_clean_stop(redis_url):
    w = _StoppedOutsideTheLoopBody(["seams"], connection=redis.Redis.from_url(redis_url))
    assert w.work(burst=False) is False  # RQ alone raises StopRequested here: a traceback in the run log


# Job functions run by the burst workers below (RQ imports them by name from this module).
PROBE: dict = {}


def lease_probe() -> str:
    """Inside a running job: how the lease looks, is refreshed, and is never resurrected."""
    w: HookedSimpleWorker = PROBE["worker"]
    job = rq.get_current_job()
    r = job.connection
    key = job.started_job_registry.key
    member = w.execution.composite_key
    PROBE["initial_ttl"] = r.zscore(key, member) - time.time()
    with r.pipeline() as pipe:
        assert refresh_started_lease(w, job, 500, pipe)
        refresh_worker_key(w, 321, pipe)
        pipe.execute()
    PROBE["refreshed_ttl"] = r.zscore(key, member) - time.time()
    PROBE["worker_key_ttl"] = r.ttl(w.key)
    r.zrem(key, member)  # as if the job had ended (or RQ had declared it abandoned) meanwhile
    with r.pipeline() as pipe:
        refresh_started_lease(w, job, 500, pipe)
        pipe.execute()
    PROBE["after_removal"] = r.zscore(key, member)
    return "ok"


def always_fails() -> None:
    raise RuntimeError("boom")


def record_failure(job, connection, exc_type, exc_value, tb) -> None:
    PROBE.setdefault("seen", []).append((job.retries_left, another_try_follows(job), exc_type.__name__))


class _RecordingWorker(HookedSimpleWorker):
    lease_ttl = 37

    def around_job(self, job, run):
        PROBE.setdefault("order", []).append(("before", self.execution))
        run()
        PROBE["order"].append(("after", self.execution))

    def after_maintenance(self):
        PROBE["maintained"] = PROBE.get("maintained", 0) + 1


@pytest.fixture
def probe():
    PROBE.clear()
    yield PROBE
    PROBE.clear()


def _burst(redis_url: str, worker_class=_RecordingWorker) -> HookedSimpleWorker:
    r = redis.Redis.from_url(redis_url)
    w = worker_class(["seams"], connection=r, serializer=JSONSerializer)
    PROBE["worker"] = w
    w.work(burst=True)
    return w


def test_hooks_lease_ttl_and_lease_refresh_never_resurrect_an_entry(redis_url, probe):
    r = redis.Redis.from_url(redis_url)
    job = Queue("seams", connection=r, serializer=JSONSerializer).enqueue(f"{HERE}.lease_probe")
    w = _burst(redis_url)
    assert job.get_status(refresh=True) == JobStatus.FINISHED, job.latest_result().exc_string
    assert 35 <= probe["initial_ttl"] <= 38  # get_heartbeat_ttl decides the StartedJobRegistry score
    assert 498 <= probe["refreshed_ttl"] <= 501
    assert 300 <= probe["worker_key_ttl"] <= 321
    assert probe["after_removal"] is None  # xx=True: a removed entry stays removed
    assert r.zcard(StartedJobRegistry("seams", connection=r).key) == 0
    # around_job wraps RQ's execution (no execution before, none left after); maintenance ran our hook.
    assert probe["order"] == [("before", None), ("after", None)]
    assert probe["maintained"] >= 1
    with r.pipeline() as pipe:  # no running job: nothing to refresh
        assert not refresh_started_lease(w, job, 5, pipe) and len(pipe) == 0


def test_on_failure_runs_before_retries_left_is_decremented(redis_url, probe):
    """jobs.report_failure answers only when no try follows: it relies on this order in RQ."""
    r = redis.Redis.from_url(redis_url)
    job = Queue("seams", connection=r, serializer=JSONSerializer).enqueue(
        f"{HERE}.always_fails", retry=Retry(max=1), on_failure=Callback(f"{HERE}.record_failure"))
    _burst(redis_url)
    assert probe["seen"] == [(1, True, "RuntimeError"), (0, False, "RuntimeError")]
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and job.retries_left == 0


def test_abandoned_job_calls_on_failure_before_its_retry(redis_url, probe):
    """The other path: a dead worker's job found by StartedJobRegistry.cleanup (any worker's maintenance)."""
    r = redis.Redis.from_url(redis_url)
    queue = Queue("seams", connection=r, serializer=JSONSerializer)
    jobs = [queue.enqueue(f"{HERE}.always_fails", retry=retry, on_failure=Callback(f"{HERE}.record_failure"))
            for retry in (Retry(max=1), None)]
    r.delete(queue.key)
    registry = StartedJobRegistry("seams", connection=r, serializer=JSONSerializer)
    for job in jobs:  # started by a worker that then died: its lease ran out a while ago
        r.zadd(registry.key, {f"{job.id}:dead-execution": time.time() - 30})
    registry.cleanup()
    assert sorted(probe["seen"], key=str) == [(1, True, "AbandonedJobError"), (None, False, "AbandonedJobError")]
    assert queue.job_ids == [jobs[0].id]
    assert jobs[0].get_status(refresh=True) == JobStatus.QUEUED and Job.fetch(
        jobs[0].id, connection=r, serializer=JSONSerializer).retries_left == 0
    assert jobs[1].get_status(refresh=True) == JobStatus.FAILED


# ---------------------------------------------------------------- due retries: one transaction, one winner

def _due_retries(redis_url: str, n: int) -> tuple[redis.Redis, Queue, list[str]]:
    """n check jobs waiting in the ScheduledJobRegistry with a back-off that has passed."""
    r = redis.Redis.from_url(redis_url)
    queue = Queue("checks-test", connection=r, serializer=JSONSerializer, job_class=CheckJob)
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    ids = []
    for _ in range(n):
        payload = JobPayload.new("web", {}, image_sha256="ab" * 32).to_dict()
        queue.enqueue_at(past, JOB_FUNCTION, payload, job_id=payload["request_id"], retry=Retry(max=2))
        ids.append(payload["request_id"])
    assert queue.count == 0 and len(due_scheduled_job_ids(ScheduledJobRegistry(queue=queue))) == n
    return r, queue, ids


def _worker(r: redis.Redis) -> CheckWorker:
    return CheckWorker([Queue("checks-test", connection=r, serializer=JSONSerializer, job_class=CheckJob)],
                       connection=r, heartbeat_s=1)


def test_due_retry_moves_to_the_queue_in_one_step(redis_url):
    r, queue, ids = _due_retries(redis_url, 2)
    assert _worker(r).enqueue_due_retries() == 2
    assert sorted(queue.job_ids) == sorted(ids)
    assert r.zcard(ScheduledJobRegistry(queue=queue).key) == 0
    assert {Job.fetch(i, connection=r, serializer=JSONSerializer).get_status() for i in ids} == {JobStatus.QUEUED}
    assert _worker(r).enqueue_due_retries() == 0  # nothing left to move


def test_two_workers_racing_for_one_retry_enqueue_it_once(redis_url, monkeypatch):
    """Worker B moves the retry while worker A is between its check and its EXEC: A's EXEC must fail."""
    r, queue, (job_id,) = _due_retries(redis_url, 1)
    a, b = _worker(r), _worker(redis.Redis.from_url(redis_url))
    fetch = CheckJob.fetch.__func__
    raced = []

    def fetch_then_lose_the_race(cls, *args, **kwargs):
        job = fetch(cls, *args, **kwargs)
        if not raced:
            raced.append("B runs")
            raced.append(b.enqueue_due_retries())  # B, on its own connection, inside A's WATCH
        return job

    monkeypatch.setattr(CheckJob, "fetch", classmethod(fetch_then_lose_the_race))
    assert a.enqueue_due_retries() == 0  # A's transaction was discarded; on its second look it was gone
    assert raced == ["B runs", 1]
    assert queue.job_ids == [job_id]
    assert r.zcard(ScheduledJobRegistry(queue=queue).key) == 0


def test_a_failure_between_zrem_and_enqueue_loses_no_retry(redis_url, monkeypatch):
    r, queue, ids = _due_retries(redis_url, 1)

    def dies(*args, **kwargs):
        raise redis.exceptions.ConnectionError("worker lost Redis mid-move")

    monkeypatch.setattr(Queue, "push_job_id", dies)
    with pytest.raises(redis.exceptions.ConnectionError):
        _worker(r).enqueue_due_retries()
    monkeypatch.undo()
    assert queue.count == 0 and due_scheduled_job_ids(ScheduledJobRegistry(queue=queue)) == ids  # still due
    assert _worker(r).enqueue_due_retries() == 1 and queue.job_ids == ids


def test_many_workers_at_once_enqueue_each_retry_exactly_once(redis_url):
    r, queue, ids = _due_retries(redis_url, 40)
    workers = [_worker(redis.Redis.from_url(redis_url)) for _ in range(6)]
    moved = [0] * len(workers)
    go = threading.Barrier(len(workers))

    def run(i: int) -> None:
        go.wait()
        moved[i] = workers[i].enqueue_due_retries()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # A worker that kept losing WATCH races may leave a retry for its next maintenance round: run one.
    moved.append(_worker(r).enqueue_due_retries())
    assert sum(moved) == 40
    assert sorted(queue.job_ids) == sorted(ids)  # each exactly once
    assert r.zcard(ScheduledJobRegistry(queue=queue).key) == 0


def test_a_dangling_registry_entry_is_dropped(redis_url):
    r, queue, (job_id,) = _due_retries(redis_url, 1)
    r.delete(Job.key_for(job_id))  # the job's hash expired while it waited
    assert _worker(r).enqueue_due_retries() == 0
    assert queue.count == 0 and r.zcard(ScheduledJobRegistry(queue=queue).key) == 0


def test_check_worker_lease_and_timings_come_from_its_heartbeat(redis_url):
    w = CheckWorker(["checks-test"], connection=redis.Redis.from_url(redis_url), heartbeat_s=5)
    assert w.lease_ttl == 20 and w.maintenance_interval == 5 and w.dequeue_timeout == 5
    assert w.log_job_description is False and w.job_class is CheckJob and w.get_heartbeat_ttl(None) == 20


def test_a_worker_forgotten_by_a_restarted_redis_registers_again(redis_url):
    conn = redis.Redis.from_url(redis_url)
    w = CheckWorker(["checks-test"], connection=conn, heartbeat_s=5)
    w.register_birth()
    assert rq_seams.ensure_registered(w) is False  # registered: nothing to do
    assert _worker_count(conn) == 1
    conn.flushdb()  # what a restart of the memory-only queue Redis does
    assert _worker_count(conn) == 0
    assert rq_seams.ensure_registered(w) is True
    assert _worker_count(conn) == 1 and conn.sismember("rq:workers:checks-test", w.key)


def _worker_count(conn: redis.Redis) -> int:
    from rq import Worker

    return Worker.count(connection=conn)
