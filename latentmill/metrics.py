"""Metric names, and their export from the stage actors and from the driver.

Two sources, one naming scheme (``latentmill_*``; labels ``stage``, ``model``, ``job``, plus
``outcome`` on row counters; never a per-row or per-run label):

* **Stage actors** record live per-stage figures with Ray's metrics API (``ray.util.metrics``). Each
  Ray node serves them on its Prometheus endpoint (``ray start --metrics-export-port``); Ray prefixes
  every application metric with ``ray_`` there and adds its own labels (``WorkerId``, ``NodeAddress``,
  ...), so ``latentmill_stage_batch_seconds`` is scraped as ``ray_latentmill_stage_batch_seconds``
  (``infra/prometheus.yml`` strips the prefix again). Use them for throughput, latency, pool sizes,
  in-flight batches.
* **The driver** keeps the run's accounting in a prometheus-client registry (rows by stage and
  outcome, outputs, bytes, per-row stage seconds, wall time). It serves it during the run when
  ``metrics.port`` is set (127.0.0.1 by default) and pushes the final values to a Prometheus
  Pushgateway at the end when ``metrics.pushgateway`` is set: the convention for batch jobs, whose
  process is gone before the next scrape.

Counters start at 0: every actor records 0 for each of its counter series (each outcome, bytes) when it
starts, and the driver creates all its labelled series at 0 with its registry. A series that first
appeared at its final value would give Prometheus no increase to see, and rate()/increase() over a
short run would show 0.

In Prometheus the pushed series (the last finished run) and the live driver's series carry the same
names and labels but one: the Pushgateway exports ``instance=""`` (it sets that label to empty when the
grouping key has none), so with ``honor_labels`` they have no ``instance``, while the driver's endpoint
is scraped with the target's ``instance``. Select ``instance=""`` for the last run and ``instance!=""``
for the running job (the dashboard does; README "Monitoring").

Importing this module is cheap: Ray and prometheus-client load in the functions that need them.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

from latentmill import schema

log = logging.getLogger(__name__)

DEFAULT_JOB = "latentmill"
LABELS = ("stage", "model", "job")
OUTCOME = "outcome"

# ---- stage actors (ray.util.metrics; exported by Ray nodes as ray_<name>) ----------------------------
STAGE_BATCH_SECONDS = "latentmill_stage_batch_seconds"  # histogram: one observation per batch
STAGE_ROWS = "latentmill_stage_rows_total"  # counter, + outcome=ok|failed: rows this stage processed
STAGE_BYTES = "latentmill_stage_bytes_written_total"  # counter: media bytes put to storage (decode)
MODEL_LOAD_SECONDS = "latentmill_model_load_seconds"  # gauge per actor: seconds to load its components
POOL_ACTORS = "latentmill_pool_actors"  # gauge, 1 per live actor: sum by (stage) = pool size
BATCHES_IN_FLIGHT = "latentmill_batches_in_flight"  # gauge per actor: sum by (stage) = pool's in flight

# ---- driver (prometheus-client registry; served live and pushed at the end) --------------------------
JOB_ROWS = "latentmill_job_rows_total"  # counter, + outcome=ok|failed|already_done, per stage
JOB_ROWS_READ = "latentmill_job_rows_read_total"  # counter: input rows
JOB_OUTPUTS = "latentmill_job_outputs_total"  # counter: manifest rows (media written)
JOB_BYTES = "latentmill_job_bytes_written_total"  # counter: bytes of the outputs
JOB_ROW_SECONDS = "latentmill_job_row_seconds"  # histogram: per-row share of each stage's batch time
JOB_WALL_SECONDS = "latentmill_job_wall_seconds"  # gauge
JOB_FIRST_OUTPUT_SECONDS = "latentmill_job_first_output_seconds"  # gauge
JOB_BUDGET_EXCEEDED = "latentmill_job_error_budget_exceeded"  # gauge 0/1
JOB_LAST_SUCCESS = "latentmill_job_last_success_timestamp_seconds"  # gauge: unix time of the last good run

OK, FAILED, ALREADY_DONE = "ok", "failed", "already_done"

# Stages a row passes in order; a row that failed in one of them passed all the earlier ones.
PIPELINE = (schema.STAGE_VALIDATE, *schema.STAGES)

# Batch and row latencies range from milliseconds (tiny models) to many minutes (video denoising).
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
                   1000.0, 2500.0)


class MetricsError(Exception):
    """Metrics cannot be served or pushed; the message says where and why."""


# ======================================================================================================
# Stage actors
# ======================================================================================================


class StageMetrics:
    """One stage actor's live metrics, recorded through Ray's metrics API.

    Recording never raises into the stage: a metrics failure is logged once and then ignored.
    """

    def __init__(self, stage: str, model: str, job: str = DEFAULT_JOB, *, backend: Any = None) -> None:
        self.tags = {"stage": stage, "model": model, "job": job}
        self._in_flight = 0
        self._warned = False
        self._m = backend if backend is not None else _RayStageMetrics()
        # Counter series exist at 0 before the first batch, so Prometheus sees them go from 0 to N.
        self._safely(self._m.start, self.tags)

    def model_loaded(self, seconds: float) -> None:
        self._safely(self._m.model_loaded, seconds, self.tags)

    def in_flight(self, delta: int) -> None:
        self._in_flight = max(0, self._in_flight + delta)
        self._safely(self._m.in_flight, self._in_flight, self.tags)

    def observe_batch(self, seconds: float, rows_ok: int, rows_failed: int, bytes_written: int = 0) -> None:
        self._safely(self._m.observe_batch, seconds, rows_ok, rows_failed, bytes_written, self.tags)

    @contextmanager
    def batch(self) -> Iterator[BatchRecord]:
        """Times one batch and keeps the in-flight gauge; call ``record.outcome(out, rows)`` inside."""
        record = BatchRecord()
        started = time.perf_counter()
        self.in_flight(+1)
        try:
            yield record
        finally:
            self.in_flight(-1)
            self.observe_batch(time.perf_counter() - started, record.rows_ok, record.rows_failed,
                               record.bytes_written)

    def _safely(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a batch
            if not self._warned:
                self._warned = True
                log.warning("%s metrics disabled after an error: %s", self.tags["stage"], exc)


class BatchRecord:
    """What one batch did, filled from the stage's output columns."""

    def __init__(self) -> None:
        self.rows_ok = self.rows_failed = self.bytes_written = 0

    def outcome(self, out: dict[str, Any], rows: list[int]) -> None:
        """`rows`: the rows this stage worked on; those with an error stage set now failed here."""
        errors = out[schema.ERROR_STAGE]
        ok = [row for row in rows if not errors[row]]
        self.rows_ok, self.rows_failed = len(ok), len(rows) - len(ok)
        if schema.BYTES in out and ok:
            self.bytes_written = int(sum(int(out[schema.BYTES][row]) for row in ok))


class _RayStageMetrics:
    """The ray.util.metrics objects of one actor process."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.batch_seconds = metrics.Histogram(
            STAGE_BATCH_SECONDS, description="Seconds per batch in a stage actor (load excluded).",
            boundaries=list(SECONDS_BUCKETS), tag_keys=LABELS)
        self.rows = metrics.Counter(STAGE_ROWS, description="Rows a stage processed, by outcome.",
                                    tag_keys=(*LABELS, OUTCOME))
        self.bytes = metrics.Counter(STAGE_BYTES, description="Media bytes a stage wrote to storage.",
                                     tag_keys=LABELS)
        self.load_seconds = metrics.Gauge(MODEL_LOAD_SECONDS, description="Seconds an actor took to load its "
                                          "model components.", tag_keys=LABELS)
        self.actors = metrics.Gauge(POOL_ACTORS, description="1 per live stage actor; sum by stage = pool size.",
                                    tag_keys=LABELS)
        self.in_flight_gauge = metrics.Gauge(BATCHES_IN_FLIGHT, description="Batches an actor is processing.",
                                             tag_keys=LABELS)

    def start(self, tags: dict[str, str]) -> None:
        """Record 0 on every counter series of this actor: each outcome's rows, and bytes.

        ``Counter.inc`` refuses 0, so this goes through ``Metric._record`` (what ``inc`` calls after its
        check); the series is then exported at 0 from the actor's first metrics report on.
        """
        for outcome in (OK, FAILED):
            self.rows._record(0, tags={**tags, OUTCOME: outcome})
        self.bytes._record(0, tags=tags)

    def model_loaded(self, seconds: float, tags: dict[str, str]) -> None:
        self.load_seconds.set(seconds, tags=tags)
        self.actors.set(1, tags=tags)

    def in_flight(self, value: int, tags: dict[str, str]) -> None:
        self.in_flight_gauge.set(value, tags=tags)

    def observe_batch(self, seconds: float, rows_ok: int, rows_failed: int, bytes_written: int,
                      tags: dict[str, str]) -> None:
        self.batch_seconds.observe(seconds, tags=tags)
        for outcome, count in ((OK, rows_ok), (FAILED, rows_failed)):
            if count:  # Ray's counters refuse increments of 0
                self.rows.inc(count, tags={**tags, OUTCOME: outcome})
        if bytes_written:
            self.bytes.inc(bytes_written, tags=tags)


# ======================================================================================================
# Driver
# ======================================================================================================


def stage_outcomes(error_stage: str) -> list[tuple[str, str]]:
    """(stage, outcome) pairs one result row stands for, given its final error stage."""
    if not error_stage:
        return [(stage, OK) for stage in PIPELINE]
    if error_stage == schema.ALREADY_DONE:
        return [(schema.STAGE_VALIDATE, ALREADY_DONE)]
    if error_stage in PIPELINE:
        index = PIPELINE.index(error_stage)
        return [(stage, OK) for stage in PIPELINE[:index]] + [(error_stage, FAILED)]
    return [(error_stage, FAILED)]


class DriverMetrics:
    """The run's accounting as Prometheus metrics: fed the driver's result batches, served, pushed."""

    def __init__(self, model: str, job: str = DEFAULT_JOB) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model, self.job = model, job
        self.registry = CollectorRegistry(auto_describe=True)
        self._server = None
        self._thread = None
        self.port: int | None = None
        base = ("model", "job")
        self.rows = Counter(JOB_ROWS, "Result rows (samples) by stage and outcome.", ("stage", OUTCOME, *base),
                            registry=self.registry)
        self.rows_read = Counter(JOB_ROWS_READ, "Input rows read.", base, registry=self.registry)
        self.outputs = Counter(JOB_OUTPUTS, "Outputs written (manifest rows).", base, registry=self.registry)
        self.bytes = Counter(JOB_BYTES, "Bytes of the outputs written.", base, registry=self.registry)
        self.row_seconds = Histogram(JOB_ROW_SECONDS, "Per-row share of a stage's batch time.",
                                     ("stage", *base), buckets=SECONDS_BUCKETS, registry=self.registry)
        self.wall = Gauge(JOB_WALL_SECONDS, "Wall time of the run.", base, registry=self.registry)
        self.first_output = Gauge(JOB_FIRST_OUTPUT_SECONDS, "Seconds from start to the first output.", base,
                                  registry=self.registry)
        self.budget = Gauge(JOB_BUDGET_EXCEEDED, "1 when failed rows exceeded the error budget.", base,
                            registry=self.registry)
        self.last_success = Gauge(JOB_LAST_SUCCESS, "Unix time the last run within its error budget ended.",
                                  base, registry=self.registry)
        # Series exist (at 0) from the start, so a scrape or a push always shows the whole set, and
        # Prometheus sees every counter rise from 0 (rate() and increase() need the first sample).
        for family in (self.rows_read, self.outputs, self.bytes, self.wall, self.budget):
            family.labels(model, job)
        for stage in PIPELINE:
            for outcome in (OK, FAILED):
                self.rows.labels(stage, outcome, model, job)
        self.rows.labels(schema.STAGE_VALIDATE, ALREADY_DONE, model, job)
        for stage in schema.STAGES:
            self.row_seconds.labels(stage, model, job)

    def record_results(self, batch: dict[str, Any]) -> None:
        """Count one batch of result rows (numpy columns, as the driver receives them)."""
        model, job = self.model, self.job
        errors = batch[schema.ERROR_STAGE]
        samples = batch.get(schema.SAMPLE_INDEX)  # sample 0 of each input row counts it as read
        counts: dict[tuple[str, str], int] = {}
        read = outputs = written = 0
        for index, error_stage in enumerate(errors):
            error_stage = str(error_stage or "")
            if samples is None or int(samples[index]) == 0:
                read += 1
            for key in stage_outcomes(error_stage):
                counts[key] = counts.get(key, 0) + 1
            if error_stage:
                continue
            outputs += 1
            if schema.BYTES in batch:
                written += int(batch[schema.BYTES][index])
            for stage in schema.STAGES:
                column = batch.get(schema.seconds_column(stage))
                if column is not None:
                    self.row_seconds.labels(stage, model, job).observe(float(column[index]))
        for (stage, outcome), count in counts.items():
            self.rows.labels(stage, outcome, model, job).inc(count)
        self.rows_read.labels(model, job).inc(read)
        self.outputs.labels(model, job).inc(outputs)
        self.bytes.labels(model, job).inc(written)

    def finish(self, summary: Any, pushgateway: str | None = None) -> bool:
        """Final gauges from the RunSummary, stop serving, push when a Pushgateway is given.

        Returns False when the push failed (logged; the run's outputs are fine either way).
        """
        model, job = self.model, self.job
        self.wall.labels(model, job).set(summary.wall_seconds)
        if summary.seconds_to_first_output is not None:
            self.first_output.labels(model, job).set(summary.seconds_to_first_output)
        exceeded = bool(getattr(summary, "budget_exceeded", False))
        self.budget.labels(model, job).set(1 if exceeded else 0)
        if not exceeded:
            self.last_success.labels(model, job).set(time.time())
        self.stop()
        if not pushgateway:
            return True
        try:
            self.push(pushgateway)
        except MetricsError as exc:
            log.warning("%s", exc)
            return False
        log.info("pushed metrics of job %r to %s", job, pushgateway)
        return True

    def serve(self, port: int | None, address: str = "127.0.0.1") -> int | None:
        """Serve /metrics on address:port in a daemon thread (port 0: any free port); returns the port.

        ``port=None`` serves nothing. Raises MetricsError when the address cannot be bound.
        """
        if port is None:
            return None
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc} "
                               "(choose another metrics.port / --metrics-port)") from None
        self.port = self._server.server_port
        log.info("serving job metrics at http://%s:%d/metrics", address, self.port)
        return self.port

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def push(self, url: str, timeout: float = 10.0) -> None:
        """PUT the run's metrics to a Pushgateway; a run within its error budget also its success time.

        Two groups, so that a failed run cannot erase the last success:

        * ``{job}``: every metric except the last-success timestamp. Each run replaces the group (PUT),
          so it always holds the last run's values.
        * ``{job, model}``: ``latentmill_job_last_success_timestamp_seconds`` alone (its series already
          carry both labels, so the grouping adds none), pushed only when it was set, i.e. by a run
          within its error budget. A failed run leaves it as it was, and the alert on its age fires.
        """
        from prometheus_client import push_to_gateway

        success = _Only(self.registry, {JOB_LAST_SUCCESS})
        try:
            push_to_gateway(url, job=self.job, registry=_Only(self.registry, exclude={JOB_LAST_SUCCESS}),
                            timeout=timeout)
            if any(family.samples for family in success.collect()):
                push_to_gateway(url, job=self.job, grouping_key={"model": self.model}, registry=success,
                                timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, socket errors, bad URLs
            raise MetricsError(f"could not push metrics to the Pushgateway at {url}: {exc}") from None

    def text(self) -> str:
        """The registry in the Prometheus text format (what /metrics serves)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


class _Only:
    """A view of a registry for one push: only the families named in `names`, or all but `exclude`."""

    def __init__(self, registry: Any, names: set[str] | None = None, exclude: set[str] | None = None) -> None:
        self.registry, self.names, self.exclude = registry, names, exclude or set()

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            if (self.names is None or family.name in self.names) and family.name not in self.exclude:
                yield family
