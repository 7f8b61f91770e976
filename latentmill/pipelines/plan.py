"""Build the Ray Data plan: read -> validate -> encode pool -> denoise pool -> decode pool."""

from __future__ import annotations

from typing import Any

from latentmill import schema
from latentmill.actors.stages import ClipGateSettings, EmbeddingCacheSettings, default_threads, stage_workers
from latentmill.config import JobConfig, PoolSettings
from latentmill.io.hidden import HiddenOptions
from latentmill.faults import forwarded_env
from latentmill.models import ModelRef, encoder_content_hash
from latentmill.pipelines.inputs import PromptTable
from latentmill.pipelines.validate import RowRules, validate_batch


def pool_args(pool: PoolSettings, rows: int | None = None) -> dict[str, Any]:
    """map_batches arguments for one stage's actor pool. For a pass of `rows` rows known up front (the
    quality gate's retries), no more actors than it has batches: each actor loads its weights again, and
    a pool sized for the whole table would load them on every device for a handful of rows."""
    import ray.data

    min_size, max_size = pool.min_size, pool.max_size
    if rows is not None:
        batches = max(1, -(-rows // pool.batch_size))
        min_size, max_size = min(min_size, batches), min(max_size, batches)
    args: dict[str, Any] = {
        "batch_size": pool.batch_size,
        "batch_format": "numpy",
        "num_cpus": pool.num_cpus,
        # Ray Data restarts a dead actor (node lost, OOM kill) and retries its batch by default.
        "compute": ray.data.ActorPoolStrategy(min_size=min_size, max_size=max_size),
    }
    if pool.num_gpus:
        args["num_gpus"] = pool.num_gpus
    if pool.resources:
        args["resources"] = dict(pool.resources)
    env = forwarded_env()
    if env:
        args["runtime_env"] = {"env_vars": env}
    return args


def worker_kwargs(pool: PoolSettings, model: ModelRef) -> dict[str, Any]:
    return {
        "model": model,
        "num_gpus": pool.num_gpus,
        "dtype": pool.dtype,
        "torch_threads": pool.torch_threads or default_threads(pool.num_cpus),
    }


# Rows validated at once. Without a batch size Ray Data fuses validation into the read, so a read task's
# rows (a sixteenth of a million-row table) reach it as one block, and validating a row holds about 1 KB
# of Python objects: a bound here keeps validation's memory independent of the table's size.
VALIDATE_BATCH_ROWS = 4_096


def build_dataset(config: JobConfig, table: PromptTable, rules: RowRules, model: ModelRef,
                  storage_options: dict[str, Any], ledger=None, done=None):
    ds = _read_parquet(table)
    if config.input.limit:
        ds = ds.limit(config.input.limit)
    # Validation runs in tasks of one CPU (Ray's default, like the read's): a small fraction per task
    # would let dozens run at once, each starting its own Ray worker process.
    ds = ds.map_batches(validate_batch, batch_format="pyarrow", batch_size=VALIDATE_BATCH_ROWS,
                        fn_kwargs={"rules": rules, "ledger": ledger, "done": done})
    return model_stages(ds, config, rules, model, storage_options)


def conditioning_forwarding(config: JobConfig) -> str | None:
    """Whether rows carry their prompt conditioning past the denoise stage, so that a sample the quality
    gate rejects is generated again through the denoise and decode pools only (no second text encoding):

    - None: no gate can reject a sample and ask for another attempt, or cache.embeddings is set (the next
      attempt's encode stage reads the conditioning from the cache the first attempt filled);
    - "rejected": reject_nonfinite is the only check. Its only trigger is non-finite latents, which the
      denoise stage itself finds, so only the rows it rejects keep their conditioning: the default
      configuration moves no conditioning past the denoise stage;
    - "all": reject_blank or clip_score (with a `min`) judge decoded frames, so every row takes its
      conditioning to the decode stage, which empties it on every row but the ones a gate rejects.
    """
    checks = config.quality.checks()
    if not checks or config.quality.max_attempts < 2 or config.cache.embeddings or config.decode is not None:
        return None
    return "rejected" if checks == {"reject_nonfinite"} else "all"


def build_retry_datasets(config: JobConfig, rows: list[dict[str, Any]], rules: RowRules, model: ModelRef,
                         storage_options: dict[str, Any]) -> list:
    """The quality gate's next attempt: request rows (with their new seeds) through the pools. Rows that
    carry their conditioning (conditioning_forwarding) go to the denoise and decode pools only; any other
    row (e.g. with cache.embeddings) through the encode pool first."""
    import ray.data

    carried = [row for row in rows if row.get(schema.CONDITIONING_KEPT)]
    others = [row for row in rows if not row.get(schema.CONDITIONING_KEPT)]
    datasets = []
    if carried:
        datasets.append(model_stages(ray.data.from_items(carried), config, rules, model, storage_options,
                                     encode=False, rows=len(carried)))
    if others:
        datasets.append(model_stages(ray.data.from_items(others), config, rules, model, storage_options,
                                     rows=len(others)))
    return datasets


def model_stages(ds, config: JobConfig, rules: RowRules, model: ModelRef, storage_options: dict[str, Any],
                 encode: bool = True, rows: int | None = None):
    """Request rows -> the encode, denoise and decode pools (without the encode pool: rows that already
    carry their conditioning columns, a rejected sample's next attempt). With `rows` (a pass whose row
    count is known), each pool starts at most one actor per batch of them."""
    # A small table reads as one block; split it (streaming, in the same tasks) so that all three pools
    # work in parallel from the first batch.
    smallest_batch = min(pool.batch_size for _, pool in config.stages.items())
    ds = ds.repartition(target_num_rows_per_block=smallest_batch)

    for _, pool, worker, kwargs in stage_constructors(config, rules, model, storage_options, encode):
        ds = ds.map_batches(worker, fn_constructor_kwargs=kwargs, **pool_args(pool, rows))
    return ds


def stage_constructors(config: JobConfig, rules: RowRules, model: ModelRef, storage_options: dict[str, Any],
                       encode: bool = True):
    """(pool name, pool settings, worker class, constructor arguments) of each pool, as the job starts them
    (benchmarks build the same workers in their own processes from these)."""
    workers = stage_workers()
    split = config.stages.denoise_2 is not None
    forwarding = conditioning_forwarding(config)
    for pool_name, pool in config.stages.items():
        stage = schema.STAGE_DENOISE if pool_name == schema.DENOISE_2 else pool_name
        if stage == schema.STAGE_ENCODE and not encode:
            continue
        kwargs = worker_kwargs(pool, model)
        kwargs["metrics_job"] = config.metrics.job_name  # the `job` label of the stage's metrics
        if stage == schema.STAGE_ENCODE:
            kwargs["conditioning_float32"] = config.stages.conditioning_dtype == "float32"
            if config.cache.embeddings:
                kwargs["embedding_cache"] = EmbeddingCacheSettings(
                    config.cache.embeddings, HiddenOptions(storage_options),
                    encoder_content_hash(config.model.path, storage_options))
        if stage == schema.STAGE_DENOISE:
            kwargs["options"] = config.stages.denoise_options
            if split:  # one expert per pool
                kwargs["expert"] = 1 if pool_name == schema.DENOISE_2 else 0
            if forwarding:
                kwargs["forward_conditioning"] = forwarding
        if stage == schema.STAGE_DECODE:
            kwargs.update(decode_kwargs(config, model, rules, storage_options))
            if forwarding:
                kwargs["keep_conditioning_for"] = gate_rejections(config)
        yield pool_name, pool, workers[stage], kwargs


def gate_rejections(config: JobConfig) -> tuple[tuple[str, str], ...]:
    """The (stage, error type) of the rows this job's quality gate rejects."""
    return tuple(sorted(schema.QUALITY_REJECTIONS[check] for check in config.quality.checks()))


def decode_kwargs(config: JobConfig, model: ModelRef, rules: RowRules, storage_options: dict[str, Any],
                  tiled: bool = False) -> dict[str, Any]:
    """The decode workers' settings: where and how to write, and what saved latents record."""
    from latentmill import __version__
    from latentmill.io.outputs import media_folder

    metadata = clip_score = None
    if config.quality.clip_score is not None and config.decode is None:
        clip_score = ClipGateSettings(config.quality.clip_score.model, HiddenOptions(storage_options),
                                      config.quality.clip_score.min)
    if config.output.save_latents:
        metadata = {"model": model.path, "model_hash": model.content_hash, "model_family": rules.family.name,
                    "pipeline_class": model.pipeline_class, "latentmill_version": __version__}
    return {
        "output_uri": config.output.uri,
        "storage_options": HiddenOptions(storage_options),
        "image_format": config.output.image_format,
        "png_compress_level": config.output.png_compress_level,
        "video_format": config.output.video_format,
        "latents_metadata": metadata,
        "tiled": tiled,
        "media_folder": media_folder(config.output.layout),
        "reject_blank": config.quality.reject_blank,
        "memory_budget_gb": config.stages.decode.memory_budget_gb,
        "peak_memory": config.stages.decode.peak_memory,
        "clip_score": clip_score,
    }


def _read_parquet(table: PromptTable):
    """The prompt table's columns, every file in the one schema `inspect_table` decided.

    A datasource of latentmill's own rather than Ray Data's reader: the file list and footers are
    already known (and checked), so planning reads nothing (Ray's reader samples a file on the driver,
    and its newer datasource starts 32 footer-reader actors per read); a file without a column yields
    nulls instead of failing the read; and a file whose data is corrupt stops the job with its name.
    """
    import ray.data

    from latentmill.pipelines.inputs import prompt_datasource

    return ray.data.read_datasource(prompt_datasource(table))
