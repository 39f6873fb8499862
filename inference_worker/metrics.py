"""An inference worker's Prometheus metrics (README: Metrics), served per process on WORKER_METRICS_PORT.

Jobs run in the worker process itself (RQ SimpleWorker), so counters bumped in inference_worker/jobs.py
land in this process's default registry, which `start_server` exposes. Every counting function here
swallows its own errors: metrics never fail a check.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.contract import LABELS
from core.metrics import LATENCY_BUCKETS_S, STAGES, stage_seconds
from core.settings import env

log = logging.getLogger(__name__)

JOBS = Counter("zhenjia_worker_jobs", "Verdicts this worker published, by label (error: after a job's last "
               "try failed)", ["label"])
FAILURES = Counter("zhenjia_worker_failures", "Check jobs that raised in this worker (timeouts included)")
RETRIES = Counter("zhenjia_worker_retries", "Failed tries that RQ will retry (report_failure with retries left)")
STAGE_SECONDS = Histogram("zhenjia_worker_stage_seconds", "Seconds per stage of the checks this worker ran, "
                          "from the verdict's timings_ms", ["stage"], buckets=LATENCY_BUCKETS_S)

for _l in LABELS:
    JOBS.labels(_l)
for _s in STAGES:
    STAGE_SECONDS.labels(_s)


class _ModelInfo(Collector):
    """zhenjia_worker_model_info{name,version} 1 for the model served now (read at scrape time).

    Reads the loaded model only (`jobs.PIPELINE.models.current`, set by the worker at start and swapped on a
    promote); it never loads or stats anything itself. Nothing before the model is loaded.
    """

    NAME = "zhenjia_worker_model_info"
    HELP = "The model this worker serves (value 1)"

    def describe(self) -> Iterable[Any]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["name", "version"])

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["name", "version"])
        from . import jobs  # here, not at import: jobs imports this module

        pipeline = jobs.PIPELINE
        if pipeline is not None:
            clf = pipeline.models.current
            family.add_metric([str(clf.name), str(clf.version)], 1)
        yield family


REGISTRY.register(_ModelInfo())


def checked(verdict: Any) -> None:
    """A verdict this worker published: count its label, observe its stages."""
    try:
        JOBS.labels(verdict.label if verdict.label in LABELS else "other").inc()
        for stage, seconds in stage_seconds(verdict.timings_ms):
            STAGE_SECONDS.labels(stage).observe(seconds)
    except Exception:
        log.exception("metrics_error where=checked")


def failed() -> None:
    """A check job raised (it goes to RQ's failure handling: a retry or the honest error verdict)."""
    FAILURES.inc()


def retried() -> None:
    """A failed try that RQ retries."""
    RETRIES.inc()


def port_from_env() -> int:
    """WORKER_METRICS_PORT; 0 (the default) means no metrics server."""
    raw = env("WORKER_METRICS_PORT", "0")
    if not raw.isdigit() or int(raw) > 65535:
        raise SystemExit(f"error: WORKER_METRICS_PORT must be a port number (0 = off), not {raw!r}")
    return int(raw)


def start_server(port: int) -> bool:
    """Serve /metrics on every interface at `port` (a thread in this process); False if it cannot bind.

    A port taken (e.g. several workers on one host given the same port) is logged, and the worker runs on
    without metrics: checks matter more than their counters.
    """
    if port <= 0:
        return False
    try:
        start_http_server(port)
    except OSError as exc:
        log.error("metrics_server_failed port=%d error=%s", port, exc)
        return False
    log.info("metrics_server port=%d", port)
    return True
