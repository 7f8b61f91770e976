"""Run a job: check everything that can be checked up front, stream the plan, account for every row.

The driver only sees small result rows (no tensors, no pixels). It writes them as manifest and error
Parquet parts after their media are in storage, and ends with a summary whose counts must add up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from latentmill import __version__, schema
from latentmill.config import JobConfig, QualitySettings

log = logging.getLogger(__name__)


class JobError(Exception):
    """A job that cannot start or must stop; the message says what to do."""


@dataclass
class RunSummary:
    run_id: str
    output_uri: str
    rows_read: int = 0  # input rows
    requests: int = 0  # rows x samples per prompt, for valid rows
    outputs_written: int = 0
    already_done: int = 0
    rows_failed: int = 0
    prompts_encoded: int = 0  # text encoder runs: samples of one prompt, and equal prompts in a batch, share one
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    failed_by_gate: dict[str, int] = field(default_factory=dict)  # failures a quality gate check made, by check
    attempts: dict[int, int] = field(default_factory=dict)  # this run's outputs by the attempt kept (0 = first)
    bytes_written: int = 0  # media bytes of this run's outputs
    seconds_by_stage: dict[str, float] = field(default_factory=dict)  # sum of the outputs' per-row stage seconds
    resumed: bool = False
    budget_exceeded: bool = False
    wall_seconds: float = 0.0
    seconds_to_first_output: float | None = None
    rows_read_ahead_peak: int = 0  # the most rows that waited for the first pool (bounded by ray.read_ahead_rows)
    model: str = ""
    model_hash: str = ""
    job_fingerprint: str = ""
    latentmill_version: str = __version__
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.requests == self.outputs_written + self.already_done + self.rows_failed

    def table(self) -> str:
        rows: list[tuple[str, Any]] = [("rows read", self.rows_read)]
        if self.requests != self.rows_read:
            rows.append(("samples requested", self.requests))
        rows += [
            ("outputs written", self.outputs_written),
            ("already done", self.already_done),
            ("rows failed", self.rows_failed),
        ]
        if self.prompts_encoded and self.prompts_encoded != self.requests:
            rows.append(("prompts encoded", self.prompts_encoded))
        rows += [(f"  failed in {stage}", count) for stage, count in sorted(self.failed_by_stage.items())]
        rows.append(("wall time", f"{self.wall_seconds:.1f} s"))
        if self.seconds_to_first_output is not None:
            rows.append(("first output after", f"{self.seconds_to_first_output:.1f} s"))
        width = max(len(label) for label, _ in rows)
        lines = [f"{label:<{width}}  {value}" for label, value in rows]
        lines.append(f"{'output':<{width}}  {self.output_uri}")
        if self.budget_exceeded:
            lines.append("error budget (max_failed) exceeded")
        return "\n".join(lines)


def job_fingerprint(config: JobConfig, model_hash: str) -> str:
    """What decides the outputs: generation defaults, limits, formats, input and model content."""
    decisive = {
        "input": config.input.model_dump(mode="json"),
        "defaults": config.defaults.model_dump(mode="json"),
        "limits": config.limits.model_dump(mode="json"),
        "formats": [config.output.image_format, config.output.video_format],
        "model_hash": model_hash,
        "dtypes": [config.stages.encode.dtype, config.stages.denoise.dtype, config.stages.decode.dtype],
    }
    # Where the experts run does not change the outputs; the second expert's dtype does.
    if config.stages.denoise_2 is not None and config.stages.denoise_2.dtype != config.stages.denoise.dtype:
        decisive["dtypes"].append(config.stages.denoise_2.dtype)
    # Settings added later count only when set, so outputs of earlier versions still resume.
    if not decisive["defaults"]["model_parameters"]:
        del decisive["defaults"]["model_parameters"]
    if not decisive["input"]["keep_columns"]:
        del decisive["input"]["keep_columns"]
    if config.output.layout != "files":
        decisive["layout"] = config.output.layout
    if config.quality.decisive() is not None:
        decisive["quality"] = config.quality.decisive()
    if config.stages.conditioning_dtype != "encoder":
        decisive["conditioning_dtype"] = config.stages.conditioning_dtype
    if config.output.save_latents:
        decisive["save_latents"] = True
    if config.decode is not None:
        decisive["decode"] = config.decode.model_dump(mode="json")
    if config.interpolate is not None:
        decisive["interpolate"] = config.interpolate.model_dump(mode="json")
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


class ResultWriter:
    """Accounts for every result row: outputs go to the output store (its layout decides how), error rows
    to Parquet parts under errors/, and rows the quality gate rejects to `retries` (their next attempt)."""

    def __init__(self, output_uri: str, storage_options: dict[str, Any], run_id: str, rows_per_part: int,
                 flush_seconds: float, static: dict[str, Any], extra_names: tuple[str, ...] = (),
                 latents: bool = False, more_columns: tuple[str, ...] = (), layout: str = "files",
                 shard_size: int = 1000, quality: QualitySettings | None = None, audio: bool = False,
                 conditioning: tuple[str, ...] = ()) -> None:
        from latentmill.io import storage
        from latentmill.io.outputs import ParquetParts, open_store

        self.fs, self.root = storage.resolve(output_uri, storage_options)
        self.run_id, self.static = run_id, static
        quality = quality or QualitySettings(reject_nonfinite=False)  # None: no gate (decode, interpolate jobs)
        self.rejected = {schema.QUALITY_REJECTIONS[check]: check for check in quality.checks()}
        self.max_attempts = quality.max_attempts
        self.retries: list[dict[str, Any]] = []
        self.conditioning = conditioning  # the model's conditioning columns, which a rejected row may carry
        self.request_columns = (*schema.REQUEST_COLUMNS, *extra_names, schema.SAMPLE_INDEX, schema.INPUT_ROW,
                                schema.ATTEMPT, *more_columns)
        columns = (*schema.manifest_columns(extra_names, latents, audio), *more_columns,
                   *((schema.ATTEMPT,) if quality.enabled else ()),
                   *((schema.CLIP_SCORE,) if quality.clip_score is not None else ()))
        self.store = open_store(layout, self.fs, self.root, output_uri, run_id, columns, shard_size=shard_size,
                                rows_per_part=rows_per_part, flush_seconds=flush_seconds,
                                near_duplicate_distance=quality.near_duplicate_distance)
        self.errors = ParquetParts(self.fs, storage.join(self.root, "errors"), run_id, schema.ERROR_COLUMNS,
                                   rows_per_part, flush_seconds)

    def add(self, batch: dict[str, Any], summary: RunSummary) -> None:
        """Account for every result row: an output, an error, or already done."""
        outputs, errors = [], []
        for index in range(len(batch[schema.ID])):
            stage = batch[schema.ERROR_STAGE][index]
            if schema.ENCODED in batch and batch[schema.ENCODED][index]:
                summary.prompts_encoded += 1  # the encoder's work, also for an attempt the gate rejects
            if self._rejected(batch, index):
                self.retries.append(self._next_attempt(batch, index))
                continue  # accounted for when its next attempt comes back
            if batch[schema.SAMPLE_INDEX][index] == 0:
                summary.rows_read += 1
            summary.requests += 1
            if stage == schema.ALREADY_DONE:
                summary.already_done += 1
            elif stage:
                row = {name: _plain(batch[name][index]) for name in schema.ERROR_COLUMNS if name in batch}
                row["run_id"] = self.run_id
                errors.append(row)
                summary.rows_failed += 1
                summary.failed_by_stage[stage] = summary.failed_by_stage.get(stage, 0) + 1
                check = self.rejected.get((stage, row.get(schema.ERROR_TYPE)))
                if check:
                    summary.failed_by_gate[check] = summary.failed_by_gate.get(check, 0) + 1
            else:
                # (a column no stage of this job fills, e.g. embeddings_cached in a decode job, stays null)
                row = {name: _plain(batch[name][index]) if name in batch else None for name in self.store.columns}
                if row.get(schema.FPS) == 0:  # an image: a frame rate does not apply (video rows need fps > 0)
                    row[schema.FPS] = None
                _sound_columns(row)
                row.update(self.static)
                outputs.append(row)
                summary.outputs_written += 1
                attempt = int(batch[schema.ATTEMPT][index]) if schema.ATTEMPT in batch else 0
                summary.attempts[attempt] = summary.attempts.get(attempt, 0) + 1
                summary.bytes_written += int(row.get(schema.BYTES) or 0)
                for stage in schema.STAGES:
                    seconds = float(row.get(schema.seconds_column(stage)) or 0.0)
                    summary.seconds_by_stage[stage] = summary.seconds_by_stage.get(stage, 0.0) + seconds
        self.store.add(outputs)
        self.errors.add(errors)

    def close(self) -> None:
        self.errors.flush()
        self.store.commit()

    def _rejected(self, batch: dict[str, Any], index: int) -> bool:
        stage = batch[schema.ERROR_STAGE][index]
        if not any(stage == rejected_stage for rejected_stage, _ in self.rejected):
            return False  # (an already done row has no error type)
        attempt = int(batch[schema.ATTEMPT][index]) if schema.ATTEMPT in batch else 0
        return (stage, batch[schema.ERROR_TYPE][index]) in self.rejected and attempt + 1 < self.max_attempts

    def _next_attempt(self, batch: dict[str, Any], index: int) -> dict[str, Any]:
        """The rejected row as a request again, with the next seed derived from its last one."""
        from latentmill.pipelines.validate import derived_seed

        row = {name: _plain(batch[name][index]) for name in self.request_columns if name in batch}
        row[schema.ATTEMPT] += 1
        row[schema.SEED] = derived_seed(row[schema.SEED], row[schema.ID])
        row.update({schema.ERROR_STAGE: "", schema.ERROR_TYPE: "", schema.ERROR_MESSAGE: ""})
        if schema.CONDITIONING_KEPT in batch and batch[schema.CONDITIONING_KEPT][index]:
            # Its conditioning came along (pipelines.plan.conditioning_forwarding): the next attempt goes
            # to the denoise and decode pools only, and its encode columns say no encoding ran for it.
            row.update({name: batch[name][index] for name in self.conditioning})
            row.update({schema.CONDITIONING_KEPT: True, schema.EMBEDDINGS_CACHED: False, schema.ENCODED: False,
                        schema.PROMPT_TRUNCATED: bool(batch[schema.PROMPT_TRUNCATED][index]),
                        schema.seconds_column(schema.STAGE_ENCODE): 0.0})
        else:
            row[schema.PROMPT_TRUNCATED] = False  # the encode stage decides it again
        return row

    def remove_parts(self, paths: list[str]) -> None:
        for path in paths:
            self.fs.rm_file(path)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        from latentmill.io import storage

        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        storage.put_bytes(self.fs, storage.join(self.root, name), data)


def _sound_columns(row: dict[str, Any]) -> None:
    """A video's sound columns as written: Ray hands a column with nulls back as floats with NaN."""
    for name in (name for name in schema.AUDIO_COLUMNS if name in row):
        value = row[name]
        if value is None or value != value:
            row[name] = None
        elif name != schema.AUDIO_SECONDS:
            row[name] = int(value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def init_ray(config: JobConfig) -> None:
    """Connect to the configured cluster, or start a Ray of our own sized for the pools; JobError when
    that fails (a wrong address, a cluster that refuses the connection, a missing auth token)."""
    import os

    import ray

    from latentmill.pipelines.resources import local_num_cpus

    if ray.is_initialized():
        return
    settings = config.ray
    for name, value in ray_environment(config).items():
        os.environ.setdefault(name, value)
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except (Exception, SystemExit) as exc:  # Ray exits (SystemExit) when the GCS never answers
            raise JobError(_connection_message(address, exc)) from None
        return
    # address="local": a Ray of our own even when a cluster runs on this machine (or a stale
    # /tmp/ray/ray_current_cluster names one), which a plain ray.init() would try to join.
    try:
        ray.init(
            address="local",
            num_cpus=local_num_cpus(config),
            num_gpus=settings.local_num_gpus,
            include_dashboard=False,
            log_to_driver=True,
        )
    except (Exception, SystemExit) as exc:
        raise JobError(f"could not start a local Ray instance: {type(exc).__name__}: {exc}") from None


def ray_environment(config: JobConfig) -> dict[str, str]:
    """Ray settings the driver sets before Ray starts: Ray's core worker reads them from the environment when
    it starts in this process, and a local Ray's own processes inherit them."""
    return {"RAY_max_lineage_bytes": str(config.ray.max_lineage_mb * 2**20)}


def _connects_to_cluster(config: JobConfig) -> bool:
    import os

    return (config.ray.address or os.environ.get("RAY_ADDRESS") or "local") != "local"


_ADDRESS_HELP = (
    "Use the head node's address as `ray start --head` printed it (HOST:6379; `ray status` on the head "
    "shows it), or leave ray.address / --ray-address and RAY_ADDRESS unset to start Ray on this machine"
)


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing listens at; Ray itself retries for minutes, then exits."""
    import socket

    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "ray") or rest == "auto":
        return
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise JobError(f"the Ray address {address!r} is not HOST:PORT. {_ADDRESS_HELP}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise JobError(f"cannot reach the Ray cluster at {address}: {reason}. {_ADDRESS_HELP}") from None


def _connection_message(address: str, exc: BaseException) -> str:
    import os

    import ray

    detail = str(exc).strip().splitlines()[-1] if str(exc).strip() and not isinstance(exc, SystemExit) else (
        "the cluster's GCS did not answer")
    message = (
        f"could not connect to the Ray cluster at {address}: {type(exc).__name__}: {detail}.\n"
        f"Check that {address} is the head's GCS address and that the cluster runs Ray {ray.__version__}, as "
        "this machine does. If the cluster uses token authentication, set RAY_AUTH_MODE=token and "
        "RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it) before running"
    )
    if os.environ.get("RAY_AUTH_TOKEN") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        message += ": RAY_AUTH_TOKEN is set but RAY_AUTH_MODE is not `token`, so Ray does not send it"
    return message


def prepare(config: JobConfig):
    """Every check that needs no Ray: input table, output access, model. Raises JobError."""
    from latentmill.io.probes import check_writable
    from latentmill.io.storage_errors import StorageError
    from latentmill.models import ModelError, resolve_model
    from latentmill.pipelines.inputs import InputError, inspect_table, large_row_groups_warning
    from latentmill.pipelines.redecode import LatentsMismatch, check_source, source_columns
    from latentmill.pipelines.validate import DefaultsError, RowRules, resolve_defaults

    options = config.storage.fsspec_options()
    try:
        # The input, then the output (a credentials problem is the likeliest), then the model; the
        # table's columns are known once the model says which extra per-row parameters it takes.
        kept = config.input.keep_columns
        if config.decode is None:
            table = inspect_table(config.input.uri, options, config.input.prompt_column, config.input.id_column, kept)
            check_kept_columns(config, table.columns)
        check_writable(config.output.uri, options)
        model = resolve_model(config.model.path, options, config.model.allow_pickle)
        family = model.family()
        if config.quality.clip_score is not None and config.decode is None:
            from latentmill.models.clip_score import resolve_clip

            resolve_clip(config.quality.clip_score.model, options)
        defaults = resolve_defaults(config.defaults, family.generation_defaults(), family.extra_parameters)
        if config.decode is None and family.extra_parameters:
            table = inspect_table(config.input.uri, options, config.input.prompt_column, config.input.id_column,
                                  (*family.extra_parameters, *kept))
            check_kept_columns(config, table.columns, tuple(family.extra_parameters))
        elif config.decode is not None:
            table = inspect_table(config.input.uri, options, schema.PROMPT, schema.ID, source_columns(family))
            check_source(table, family, config.model.path, options)
    except (InputError, StorageError, ModelError, DefaultsError, LatentsMismatch) as exc:
        raise JobError(str(exc)) from None
    warning = large_row_groups_warning(table)
    if warning:
        log.warning("%s", warning)
    if config.stages.denoise_2 is not None and config.decode is None:
        problem = family.denoise_split_problem()
        if problem:
            raise JobError(f"stages.denoise_2 is set, but the model {config.model.path} cannot split its denoising "
                           f"over two pools: {problem}. Remove stages.denoise_2 from the job file")
    rules = RowRules(
        prompt_column=config.input.prompt_column,
        id_column=config.input.id_column,
        defaults=defaults,
        job_seed=config.defaults.seed,
        limits=config.limits,
        family=family,
        samples_per_prompt=config.input.samples_per_prompt,
        keep_columns=config.input.keep_columns,
    )
    return options, table, model, family, rules


def check_kept_columns(config: JobConfig, table_columns: tuple[str, ...], extra_names: tuple[str, ...] = ()) -> None:
    """input.keep_columns must name columns of the table that no manifest or row column already uses."""
    from latentmill.pipelines.inputs import InputError

    own = {*schema.manifest_columns(extra_names, latents=True, audio=True), *schema.ERROR_COLUMNS, schema.SAMPLES,
           schema.ATTEMPT, schema.CLIP_SCORE, schema.ENCODED, schema.SHARD_KEY, *schema.SHARD_MEDIA.values()}
    for name in config.input.keep_columns:
        if name in own:
            raise InputError(f"input.keep_columns names {name!r}, which is also a manifest column of latentmill's "
                             f"own; rename the input column (e.g. to 'source_{name}') to keep it")
        if name not in table_columns:
            raise InputError(f"input.keep_columns names {name!r}, which no file of the prompt table "
                             f"{config.input.uri} has; check the spelling (--keep-columns)")


def _root_cause(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (RayTaskError, ActorDiedError chains)."""
    seen = exc
    while True:
        inner = getattr(seen, "cause", None) or seen.__cause__
        # Ray Data chains empty markers (SystemException, UserCodeException) below the real error.
        if inner is None or inner is seen or type(inner).__module__ == "ray.data.exceptions":
            return seen
        seen = inner


def _find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` among `exc`, its causes and contexts (Ray wraps what a thread raised)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        pending += [inner for inner in (getattr(current, "cause", None), current.__cause__, current.__context__)
                    if isinstance(inner, BaseException)]
    return None


def run_job(config: JobConfig, on_progress: Callable[[RunSummary], None] | None = None) -> RunSummary:
    """Run the job to the end and return its summary; raises JobError when it cannot finish."""
    from latentmill.io.storage import StorageError
    from latentmill.metrics import DriverMetrics, MetricsError
    from latentmill.pipelines.plan import conditioning_forwarding
    from latentmill.pipelines.resume import OutputConflict, check_job_record

    started = time.perf_counter()
    config = _absolute_output(config)
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
        "denoise_options": config.stages.denoise_options.describe(),
        "latentmill_version": __version__,
        "job_fingerprint": fingerprint,
    }
    writer = ResultWriter(config.output.uri, options, run_id, config.output.manifest_rows_per_part,
                          config.output.manifest_flush_seconds, static, tuple(family.extra_parameters),
                          latents=config.output.save_latents or config.decode is not None,
                          more_columns=config.input.keep_columns, layout=config.output.layout,
                          shard_size=config.output.shard_size,
                          quality=config.quality if config.decode is None else None, audio=family.has_audio,
                          conditioning=family.conditioning_columns() if conditioning_forwarding(config) else ())
    try:
        summary.resumed = check_job_record(
            writer.fs, writer.root, fingerprint,
            {"output": config.output.uri, "model": config.model.path, "input": config.input.uri},
        )
        state = writer.store.resume(config.output.verify_existing)
    except OutputConflict as exc:
        raise JobError(str(exc)) from None
    except StorageError as exc:
        raise JobError(f"storage failed, job stopped: {exc}") from None
    if summary.resumed:
        log.info("resuming %s: %d output(s) already done", config.output.uri, len(state.done))

    job_metrics = DriverMetrics(config.model.path, config.metrics.job_name)
    try:
        job_metrics.serve(config.metrics.port, config.metrics.address)  # port None: not served
    except MetricsError as exc:
        raise JobError(str(exc)) from None
    expected = min(table.num_rows, config.input.limit or table.num_rows)
    # (a decode job's rows are a source manifest's, not prompt rows: it always goes through Ray)
    finished = _finished_requests(table, rules, state, expected) if expected and config.decode is None else None
    if expected == 0:
        log.warning("the prompt table %s has no rows; nothing to do", config.input.uri)
    elif finished is not None:
        log.info("every row of %s is already done in %s; Ray is not started", config.input.uri, config.output.uri)
        _account_already_done(finished, writer, summary, job_metrics, on_progress)
    else:
        _stream(config, table, rules, model, options, state, writer, summary, started, on_progress, job_metrics)
    try:
        writer.close()
    except StorageError as exc:
        raise JobError(f"storage failed, job stopped: {exc}") from None
    summary.wall_seconds = time.perf_counter() - started
    if summary.rows_read != expected or not summary.balanced:
        raise JobError(
            f"row accounting failed: expected {expected} rows, read {summary.rows_read}, "
            f"wrote {summary.outputs_written}, already done {summary.already_done}, failed "
            f"{summary.rows_failed}; please report this as a bug"
        )
    # Every row of earlier runs was either done or retried in this one: their error parts are stale.
    writer.remove_parts(state.error_parts)
    summary.budget_exceeded = config.budget_exceeded(summary.rows_failed, summary.rows_read)
    payload = asdict(summary)
    try:
        near_duplicates = _near_duplicate_pairs(config, options, writer, summary.outputs_written + summary.already_done)
        writer.write_json(f"runs/{run_id}.json", payload)
        writer.write_json("summary.json", payload)
        writer.write_json("stats.json", dataset_stats(summary, config, near_duplicates))
    except StorageError as exc:
        raise JobError(f"storage failed, job stopped: {exc}") from None
    job_metrics.finish(summary, config.metrics.pushgateway)  # final gauges; push to the Pushgateway
    return summary


def _near_duplicate_pairs(config: JobConfig, options: dict[str, Any], writer: ResultWriter,
                          samples: int) -> int | None:
    """Near-duplicate pairs among every committed sample of the output (pipelines.duplicates); None when
    they cannot be counted, which does not fail a run whose samples are all committed."""
    from latentmill.pipelines.duplicates import DRIVER_HASHES, count_dataset_pairs

    try:
        if samples > DRIVER_HASHES:
            init_ray(config)  # (a run whose rows were all done already did not start it)
        return count_dataset_pairs(config.output.uri, options, writer.store.manifest_files(), samples,
                                   config.quality.near_duplicate_distance)
    except Exception as exc:  # noqa: BLE001 - a statistic: report why it is missing, keep the run's result
        log.warning("near-duplicate pairs not counted (stats.json has null): %s: %s", type(exc).__name__, exc)
        return None


def dataset_stats(summary: RunSummary, config: JobConfig, near_duplicate_pairs: int | None) -> dict[str, Any]:
    """DEST/stats.json: what the output holds after this run and what this run cost, for whoever reads the
    dataset (summary.json has the run's full accounting and config)."""
    import shlex
    import sys

    return {
        "samples": summary.outputs_written + summary.already_done,
        "samples_written": summary.outputs_written,
        "failed": summary.rows_failed,
        "failed_by_stage": summary.failed_by_stage,
        "failed_by_gate": summary.failed_by_gate,
        "attempts": summary.attempts,
        "bytes_written": summary.bytes_written,
        "seconds_by_stage": {stage: round(seconds, 3) for stage, seconds in summary.seconds_by_stage.items()},
        "wall_seconds": round(summary.wall_seconds, 3),
        "prompts_encoded": summary.prompts_encoded,
        "near_duplicate_pairs": near_duplicate_pairs,
        "near_duplicate_distance": config.quality.near_duplicate_distance,
        "layout": config.output.layout,
        "run_id": summary.run_id,
        "command": shlex.join(sys.argv),
    }


def _absolute_output(config: JobConfig) -> JobConfig:
    """A local output folder as an absolute path: manifests name their objects by it, so a resume from
    another working directory finds them."""
    import os

    uri = config.output.uri
    if "://" in uri or os.path.isabs(uri):
        return config
    config = config.model_copy(deep=True)
    config.output.uri = os.path.abspath(os.path.expanduser(uri))
    return config


def _finished_requests(table, rules, state, expected: int) -> list[tuple[str, int]] | None:
    """(id, sample) of the `expected` rows' requests when every row of the table is provably done,
    else None (then the run goes through Ray as usual). Read on the driver, and only when the
    manifest holds at least as many verified outputs as the table asks for.

    Done means what validation would decide: every row valid, every request id unique in the table
    and in the output's verified manifest. The whole table is checked even under `input.limit`
    (Ray Data may take any `limit` rows), and only when its files have the same column types (Ray
    Data would unify differing ones) and no Hive partition key is named like a read column.
    """
    import pyarrow.parquet as pq

    from latentmill.pipelines.validate import to_requests

    samples = rules.samples_per_prompt
    if len(state.done) < table.num_rows * samples:
        return None
    columns = list(table.columns)
    for file in table.files:
        if any(part.split("=", 1)[0] in columns for part in file.split("/")[:-1] if "=" in part):
            return None
    types = None
    seen: set[str] = set()
    requests: list[tuple[str, int]] = []
    try:
        for file in table.files:
            with table.filesystem.open(file, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                file_types = [parquet.schema_arrow.field(c).type if c in names else None for c in columns]
                if types is None:
                    types = file_types
                elif file_types != types:
                    return None
                for batch in parquet.iter_batches(columns=[c for c in columns if c in names]):
                    for row in batch.to_pylist():
                        for sample, request in enumerate(to_requests(row, rules)):
                            if request.id in seen or request.id not in state.done:
                                return None
                            seen.add(request.id)
                            requests.append((request.id, sample))
    except Exception as exc:  # noqa: BLE001 - an invalid row (RowError) or anything odd: let Ray decide
        log.debug("not every row is provably done (%s: %s); running the job", type(exc).__name__, exc)
        return None
    if len(requests) != table.num_rows * samples:
        return None
    return requests[:expected * samples]


def _account_already_done(requests, writer, summary, job_metrics, on_progress, chunk: int = 10_000) -> None:
    """Count the rows of a finished output as already done, as the validate stage would have."""
    import numpy as np

    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        batch = {
            schema.ID: np.array([row_id for row_id, _ in part], dtype=object),
            schema.SAMPLE_INDEX: np.array([sample for _, sample in part], dtype=np.int64),
            schema.ERROR_STAGE: np.array([schema.ALREADY_DONE] * len(part), dtype=object),
        }
        writer.add(batch, summary)
        job_metrics.record_results(batch)
        if on_progress:
            on_progress(summary)


def _first_pool(config: JobConfig) -> tuple[int, int]:
    """The batch size and most actors of the pool the read feeds: decode in a decode job, else encode."""
    pool = config.stages.decode if config.decode is not None else config.stages.encode
    return pool.batch_size, pool.max_size


def _stream(config, table, rules, model, options, state, writer, summary, started, on_progress,
            job_metrics) -> None:
    import ray
    import ray.data

    from latentmill.actors.stages import stage_workers
    from latentmill.io.storage import StorageError
    from latentmill.pipelines import read_ahead
    from latentmill.pipelines.block_stats import block_stats_cap
    from latentmill.pipelines.heap import HeapTrimmer
    from latentmill.pipelines.ledger import IdSet, start_ledger
    from latentmill.pipelines.plan import build_dataset, build_retry_datasets
    from latentmill.pipelines.redecode import build_decode_dataset
    from latentmill.pipelines.resources import (ResourcesPending, check_cluster, cluster_view, pending_watch,
                                                pool_demands)

    timeout = config.ray.pending_timeout_s
    local = not _connects_to_cluster(config)
    demands = pool_demands(config)
    try:
        init_ray(config)
        # Before any actor is asked for: pools that cannot start would otherwise wait forever.
        error, warning = check_cluster(demands, cluster_view(local), timeout)
    except JobError:
        job_metrics.stop()
        raise
    if error:
        job_metrics.stop()
        raise JobError(f"{error}\nNothing was started; change the job file (or the cluster) and run again")
    if warning:
        log.warning("%s", warning)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = config.ray.progress_bars
    # A stage's own exception (a fatal StorageError) instead of Ray Data's message-less UserCodeException.
    context.raise_original_map_exception = True
    # Ray Data's own no-progress guard must not cut the wait that ray.pending_timeout_s allows.
    if 0 < context.execution_no_progress_timeout_s < timeout + 60:
        context.execution_no_progress_timeout_s = timeout + 60
    ledger = start_ledger(table.num_rows)
    done = ray.put(IdSet.from_ids(state.done)) if state.done else None
    if config.decode is None:
        dataset = build_dataset(config, table, rules, model, options, ledger=ledger, done=done)
    else:  # a source manifest's ids are unique: no ledger needed
        dataset = build_decode_dataset(config, table, rules, model, options, done=done)
    workers = {stage: worker.__name__ for stage, worker in stage_workers().items()}
    bound = read_ahead.ReadAhead(config.ray.read_ahead_rows or read_ahead.default_limit(*_first_pool(config)))
    heap = HeapTrimmer()

    def consume(dataset) -> None:
        # Stops the run (ResourcesPending) when a pool cannot be placed for `timeout` seconds.
        dataset.context.custom_execution_callback_classes += [pending_watch(demands, timeout, workers, local),
                                                              block_stats_cap()]
        read_ahead.install(dataset.context, bound)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            writer.add(batch, summary)
            job_metrics.record_results(batch)
            if summary.seconds_to_first_output is None and summary.outputs_written:
                summary.seconds_to_first_output = time.perf_counter() - started
            if on_progress:
                on_progress(summary)
            heap.maybe_trim()

    try:
        consume(dataset)
        while writer.retries:  # the quality gate rejected these: each gets its next attempt
            retries, writer.retries = writer.retries, []
            log.info("quality gate: generating %d rejected sample(s) again, each with a new seed", len(retries))
            for retry in build_retry_datasets(config, retries, rules, model, options):
                consume(retry)
    except Exception as exc:  # noqa: BLE001 - Ray wraps the cause; report it, not Ray's traceback
        try:
            writer.close()  # keep what finished: a re-run resumes from it
        except Exception as close_error:  # noqa: BLE001 - the error that stopped the job is the one to report
            log.warning("could not write the results of the finished rows: %s", close_error)
        pending = _find_in_chain(exc, ResourcesPending)
        if pending is not None:
            raise JobError(f"{pending}\n{summary.outputs_written} output(s) were saved; re-run the same "
                           "command to resume") from None
        cause = _root_cause(exc)
        if isinstance(cause, StorageError):
            raise JobError(f"storage failed, job stopped: {cause}") from None
        last_line = str(cause).strip().splitlines()[-1] if str(cause).strip() else ""
        if "ModelError: " in last_line:  # a stage actor could not load its part of the model
            raise JobError(
                f"model could not be loaded, job stopped: {last_line.split('ModelError: ', 1)[1]}\n"
                "Check the checkpoint's files (re-save it with save_pretrained, or download it again)"
            ) from None
        raise JobError(
            f"job stopped: {type(cause).__name__}: {last_line}"
            f"\n{summary.outputs_written} output(s) were saved; re-run the same command to resume"
        ) from None
    finally:
        summary.rows_read_ahead_peak = bound.peak_rows
        ledger.stop()
        job_metrics.stop()
