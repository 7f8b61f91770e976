"""Run a job: check everything that can be checked up front, stream the plan, account for every row.

The driver only sees small result rows (no tensors, no pixels). It writes them as manifest and error
Parquet parts after their media are in storage, and ends with a summary whose counts must add up.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from latentmill import __version__, schema
from latentmill.config import JobConfig

log = logging.getLogger(__name__)


class JobError(Exception):
    """A job that cannot start or must stop; the message says what to do."""


@dataclass
class RunSummary:
    run_id: str
    output_uri: str
    rows_read: int = 0
    outputs_written: int = 0
    rows_failed: int = 0
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    seconds_to_first_output: float | None = None
    model: str = ""
    model_hash: str = ""
    job_fingerprint: str = ""
    latentmill_version: str = __version__
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.outputs_written + self.rows_failed

    def table(self) -> str:
        rows = [
            ("rows read", self.rows_read),
            ("outputs written", self.outputs_written),
            ("rows failed", self.rows_failed),
        ]
        rows += [(f"  failed in {stage}", count) for stage, count in sorted(self.failed_by_stage.items())]
        rows.append(("wall time", f"{self.wall_seconds:.1f} s"))
        if self.seconds_to_first_output is not None:
            rows.append(("first output after", f"{self.seconds_to_first_output:.1f} s"))
        width = max(len(label) for label, _ in rows)
        lines = [f"{label:<{width}}  {value}" for label, value in rows]
        lines.append(f"{'output':<{width}}  {self.output_uri}")
        return "\n".join(lines)


def job_fingerprint(config: JobConfig, model_hash: str) -> str:
    """What decides the outputs: generation defaults, limits, formats, input and model content."""
    decisive = {
        "input": config.input.model_dump(mode="json"),
        "defaults": config.defaults.model_dump(mode="json"),
        "limits": config.limits.model_dump(mode="json"),
        "formats": [config.output.image_format, config.output.video_format],
        "model_hash": model_hash,
        "dtypes": [pool.dtype for _, pool in config.stages.items()],
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


class ResultWriter:
    """Writes manifest and error rows as Parquet parts; a part is written only after its media."""

    def __init__(self, output_uri: str, storage_options: dict[str, Any], run_id: str, rows_per_part: int,
                 static: dict[str, Any]) -> None:
        from latentmill.io import storage

        self.fs, self.root = storage.resolve(output_uri, storage_options)
        self.run_id, self.rows_per_part, self.static = run_id, rows_per_part, static
        self.pending: dict[str, list[dict[str, Any]]] = {"manifest": [], "errors": []}
        self.parts = {"manifest": 0, "errors": 0}

    def add(self, batch: dict[str, Any], summary: RunSummary) -> None:
        for index in range(len(batch[schema.ID])):
            stage = batch[schema.ERROR_STAGE][index]
            if stage:
                self.pending["errors"].append({name: _plain(batch[name][index]) for name in schema.ERROR_COLUMNS})
                summary.rows_failed += 1
                summary.failed_by_stage[stage] = summary.failed_by_stage.get(stage, 0) + 1
            else:
                row = {name: _plain(batch[name][index]) for name in schema.MANIFEST_COLUMNS if name in batch}
                row.update(self.static)
                self.pending["manifest"].append(row)
                summary.outputs_written += 1
            summary.rows_read += 1
        for kind in self.pending:
            if len(self.pending[kind]) >= self.rows_per_part:
                self.flush(kind)

    def flush(self, kind: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from latentmill.io import storage

        rows = self.pending[kind]
        if not rows:
            return
        columns = schema.MANIFEST_COLUMNS if kind == "manifest" else schema.ERROR_COLUMNS
        table = pa.Table.from_pylist(rows).select(list(columns))
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        name = f"part-{self.run_id}-{self.parts[kind]:05d}.parquet"
        storage.put_bytes(self.fs, storage.join(self.root, kind, name), buffer.getvalue())
        self.parts[kind] += 1
        self.pending[kind] = []

    def close(self) -> None:
        for kind in self.pending:
            self.flush(kind)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        from latentmill.io import storage

        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        storage.put_bytes(self.fs, storage.join(self.root, name), data)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def init_ray(config: JobConfig) -> None:
    import os

    import ray

    if ray.is_initialized():
        return
    settings = config.ray
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    cores = os.cpu_count() or 1
    ray.init(
        num_cpus=settings.local_num_cpus or max(4, cores),
        num_gpus=settings.local_num_gpus,
        include_dashboard=False,
        log_to_driver=True,
    )


def prepare(config: JobConfig):
    """Every check that needs no Ray: input table, output access, model. Raises JobError."""
    from latentmill.io.storage import StorageError, check_writable
    from latentmill.models import ModelError, resolve_model
    from latentmill.models.tiny import TINY_DEFAULTS
    from latentmill.pipelines.inputs import InputError, inspect_table
    from latentmill.pipelines.validate import RowRules, resolve_defaults

    options = config.storage.fsspec_options()
    try:
        table = inspect_table(config.input.uri, options, config.input.prompt_column, config.input.id_column)
        check_writable(config.output.uri, options)
        model = resolve_model(config.model.path, options, config.model.allow_pickle)
    except (InputError, StorageError, ModelError) as exc:
        raise JobError(str(exc)) from None
    family = model.family()
    model_defaults = TINY_DEFAULTS.get(model.builtin_name or "", family.defaults)
    rules = RowRules(
        prompt_column=config.input.prompt_column,
        id_column=config.input.id_column,
        defaults=resolve_defaults(config.defaults, model_defaults),
        job_seed=config.defaults.seed,
        limits=config.limits,
        family=family,
    )
    return options, table, model, family, rules


def run_job(config: JobConfig, on_progress: Callable[[RunSummary], None] | None = None) -> RunSummary:
    started = time.perf_counter()
    options, table, model, family, rules = prepare(config)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    fingerprint = job_fingerprint(config, model.content_hash)
    summary = RunSummary(run_id=run_id, output_uri=config.output.uri, model=config.model.path,
                         model_hash=model.content_hash, job_fingerprint=fingerprint, config=config.public_dict())
    static = {
        "model": config.model.path,
        "model_hash": model.content_hash,
        "model_family": family.name,
        "scheduler": family.scheduler_name(),
        "latentmill_version": __version__,
        "job_fingerprint": fingerprint,
    }
    writer = ResultWriter(config.output.uri, options, run_id, config.output.manifest_rows_per_part, static)
    expected = min(table.num_rows, config.input.limit or table.num_rows)
    if expected == 0:
        log.warning("the prompt table %s has no rows; nothing to do", config.input.uri)
    else:
        import ray.data

        from latentmill.pipelines.plan import build_dataset

        init_ray(config)
        ray.data.DataContext.get_current().enable_progress_bars = config.ray.progress_bars
        dataset = build_dataset(config, table, rules, model, options)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            writer.add(batch, summary)
            if summary.seconds_to_first_output is None and summary.outputs_written:
                summary.seconds_to_first_output = time.perf_counter() - started
            if on_progress:
                on_progress(summary)
    writer.close()
    summary.wall_seconds = time.perf_counter() - started
    if summary.rows_read != expected or not summary.balanced:
        raise JobError(
            f"row accounting failed: expected {expected} rows, read {summary.rows_read}, "
            f"wrote {summary.outputs_written}, failed {summary.rows_failed}; please report this as a bug"
        )
    payload = asdict(summary)
    writer.write_json(f"runs/{run_id}.json", payload)
    writer.write_json("summary.json", payload)
    return summary
