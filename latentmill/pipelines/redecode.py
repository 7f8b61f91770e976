"""Decode jobs: the decode pool alone over the saved latents of an earlier run.

The source run's manifest is the input table: each row already holds a validated request and names its
latents object. The rows become request rows (no validation, no encoding, no denoising), the decode
actors read each row's latents from storage themselves, and the results are written and accounted for
like a run's, so a decode job resumes like a run.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from latentmill import schema
from latentmill.pipelines.inputs import READ_ERROR, READ_POSITION
from latentmill.pipelines.validate import RowRules
from latentmill.rows import empty_request_columns, request_from, write_request


# The source rows' encode and denoise seconds stay in the manifest: what the latents cost to make.
SOURCE_SECONDS = (schema.seconds_column(schema.STAGE_ENCODE), schema.seconds_column(schema.STAGE_DENOISE))


class LatentsMismatch(ValueError):
    """Saved latents the model cannot decode; the message says which and what to do."""


def source_model(source: str, options: dict[str, Any]) -> str:
    """The model the source run used (from its job record), the default model of a decode job."""
    from latentmill.io import storage
    from latentmill.pipelines.resume import JOB_RECORD

    fs, root = storage.resolve(source, options)
    try:
        return json.loads(storage.read_bytes(fs, storage.join(root, JOB_RECORD)))["model"]
    except (OSError, ValueError, KeyError):
        raise LatentsMismatch(f"{source} is not a latentmill output (no readable {JOB_RECORD}); "
                              "pass the output folder of a run made with --save-latents, or name --model") from None


def source_columns(family) -> tuple[str, ...]:
    """The manifest columns a decode job reads besides prompt and id."""
    return (*schema.OVERRIDE_COLUMNS, *family.extra_parameters, schema.LATENTS_URI, schema.LATENTS_SHA256,
            *SOURCE_SECONDS)


def check_source(table, family, model_path: str, options: dict[str, Any]) -> None:
    """Refuse latents of another family or latent layout, reading one saved object's header only."""
    import pyarrow.parquet as pq

    from latentmill.io import latents as saved
    from latentmill.io import storage

    source = table.uri.rsplit("/manifest", 1)[0]
    if schema.LATENTS_URI not in table.columns:
        raise LatentsMismatch(f"{source} has no saved latents (its manifest has no {schema.LATENTS_URI} column); "
                              "re-run the job with output.save_latents: true (--save-latents) to keep them")
    uri = None
    for path in table.files:
        with table.filesystem.open(path, "rb") as handle:
            values = pq.read_table(handle, columns=[schema.LATENTS_URI])[schema.LATENTS_URI].to_pylist()
        uri = next((value for value in values if value), None)
        if uri:
            break
    if uri is None:
        raise LatentsMismatch(f"{source} lists no saved latents; nothing to decode")
    try:
        metadata = saved.read_metadata(*storage.resolve(uri, options))
    except (OSError, ValueError) as exc:
        raise LatentsMismatch(f"cannot read the saved latents {uri}: {exc}") from None
    made_by = metadata.get("model_family")
    if made_by != family.name:
        raise LatentsMismatch(
            f"the latents in {source} were made by a {made_by} model ({metadata.get('model')}), which the model "
            f"{model_path} ({family.name}) cannot decode; pass --model with a {made_by} checkpoint"
        )
    shape = json.loads(metadata.get("latent_shape", "[]"))
    channels = family.latent_channels()
    if channels is not None and (not shape or shape[0] != channels):
        raise LatentsMismatch(
            f"the latents in {source} have shape {shape} ({shape[0] if shape else '?'} channels), but the VAE of "
            f"{model_path} takes {channels} latent channels; decode them with the model that made them "
            f"({metadata.get('model')}) or another VAE of the same latent space"
        )


def manifest_to_requests(table, rules: RowRules, done=None) -> dict[str, np.ndarray]:
    """Source manifest rows -> request rows carrying their latents object; done ones marked."""
    from latentmill.pipelines.ledger import shared_id_set

    done = shared_id_set(done)
    extra_names = tuple(rules.family.extra_parameters)
    rows = table.to_pylist()
    out = empty_request_columns(len(rows), rules.family.extra_types())
    out[schema.LATENTS_URI] = np.full(len(rows), "", dtype=object)
    out[schema.LATENTS_SHA256] = np.full(len(rows), "", dtype=object)
    for column in SOURCE_SECONDS:
        out[column] = np.array([row.get(column) or 0.0 for row in rows], dtype=np.float64)
    for index, row in enumerate(rows):
        read_error, position = row.pop(READ_ERROR, None), row.pop(READ_POSITION, None)
        if read_error:  # a damaged part of the source manifest: the row is named by its file and row number
            out[schema.ID][index] = position
            out[schema.ERROR_STAGE][index] = schema.STAGE_VALIDATE
            out[schema.ERROR_TYPE][index] = "UnreadableRow"
            out[schema.ERROR_MESSAGE][index] = read_error
            continue
        values = {**rules.defaults, **{k: v for k, v in row.items() if v is not None}}
        request = request_from(values, extra_names)
        write_request(out, index, request)
        out[schema.INPUT_ROW][index] = json.dumps(row, ensure_ascii=False, default=str)
        out[schema.LATENTS_URI][index] = row.get(schema.LATENTS_URI) or ""
        out[schema.LATENTS_SHA256][index] = row.get(schema.LATENTS_SHA256) or ""
        if not row.get(schema.LATENTS_URI):
            out[schema.ERROR_STAGE][index] = schema.STAGE_VALIDATE
            out[schema.ERROR_TYPE][index] = "NoLatents"
            out[schema.ERROR_MESSAGE][index] = "this row of the source run has no saved latents"
        elif done is not None and request.id in done:
            out[schema.ERROR_STAGE][index] = schema.ALREADY_DONE
    return out


def build_decode_dataset(config, table, rules: RowRules, model, storage_options: dict[str, Any], done=None):
    from latentmill.actors.stages import DecodeWorker
    from latentmill.pipelines.plan import VALIDATE_BATCH_ROWS, _read_parquet, decode_kwargs, pool_args, worker_kwargs

    ds = _read_parquet(table)
    if config.input.limit:
        ds = ds.limit(config.input.limit)
    ds = ds.map_batches(manifest_to_requests, batch_format="pyarrow", batch_size=VALIDATE_BATCH_ROWS,
                        fn_kwargs={"rules": rules, "done": done})
    pool = config.stages.decode
    ds = ds.repartition(target_num_rows_per_block=pool.batch_size)
    kwargs = worker_kwargs(pool, model)
    kwargs["metrics_job"] = config.metrics.job_name
    kwargs.update(decode_kwargs(config, model, rules, storage_options, tiled=config.decode.tiling))
    return ds.map_batches(DecodeWorker, fn_constructor_kwargs=kwargs, **pool_args(pool))
