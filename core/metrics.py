"""What the bot's and the workers' Prometheus metrics share: the check's stages and the latency buckets.

Constants only (no prometheus_client here): core/ stays import-light. The metrics themselves live in
bot/metrics.py and inference_worker/metrics.py; README "Metrics" lists them.
"""

from __future__ import annotations

# Keys of Verdict.timings_ms (milliseconds) that become `stage` label values. decode, detect, classify and
# total come from inference_worker.pipeline (total: the worker's time for the picture, queue not included);
# queue_wait is added by inference_worker.jobs.check_image (JobPayload.received_at to the start of the try).
STAGES: tuple[str, ...] = ("queue_wait", "decode", "detect", "classify", "total")

# Histogram buckets in seconds for 5 ms (a cached classifier call) to 30 s (a long queue, a slow host).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def stage_seconds(timings_ms: dict[str, float] | None) -> list[tuple[str, float]]:
    """(stage, seconds) for each known stage present in a verdict's timings_ms; others are ignored."""
    out = []
    for stage in STAGES:
        ms = (timings_ms or {}).get(stage)
        if isinstance(ms, (int, float)) and ms >= 0:
            out.append((stage, ms / 1000.0))
    return out
