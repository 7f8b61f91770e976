"""Saved latents and decode jobs: the denoiser's result kept, decoded again without denoising."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

import latentmill
from latentmill import schema
from latentmill.io import latents as saved
from latentmill.io import storage
from latentmill.jobs.cli import EXIT_JOB_ERROR, main
from latentmill.pipelines.job import JobError

from tests.helpers import generate, read_parquet_folder, write_table

pytestmark = pytest.mark.slow

ROWS = [{"prompt": "a lighthouse at dusk", "seed": 1}, {"prompt": "x", "negative_prompt": "blurry"},
        {"prompt": "a red fox", "guidance_scale": 1.0}, {"prompt": "two steps", "num_inference_steps": 2}]
ONE = {"batch_size": 1, "num_cpus": 0.5, "torch_threads": 1}  # equal decode batches in both runs: equal bits


def manifest_of(uri: str, options: dict | None = None) -> dict[str, dict]:
    fs, root = storage.resolve(uri, options or {})
    return {row[schema.ID]: row for row in read_parquet_folder(fs, storage.join(root, "manifest")).to_pylist()}


def decode_again(source: str, dest: str, **sections):
    stages = {"stages": {"decode": dict(ONE)}, "ray": {"progress_bars": False}}
    return latentmill.decode(source, dest, **{**stages, **sections})


def test_saved_latents_decode_to_byte_identical_media(ray_local, s3, tmp_path):
    """On S3. Latents saved to and decoded from a local folder: `saved_run` and the tests that use it (the
    same fsspec calls write and read them)."""
    options = s3.storage_options()
    base = f"s3://latentmill/{tmp_path.name}"
    storage_section = {"storage": {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key}}
    table = write_table(tmp_path / "prompts.parquet", ROWS)
    summary, _ = generate(str(table), f"{base}/run", batch_size=1, output={"save_latents": True}, **storage_section)
    assert (summary.outputs_written, summary.rows_failed) == (4, 0)
    original = manifest_of(f"{base}/run", options)
    for row in original.values():
        data = storage.read_bytes(*storage.resolve(row[schema.LATENTS_URI], options))
        assert hashlib.sha256(data).hexdigest() == row[schema.LATENTS_SHA256]
        latents, metadata = saved.decode_latents(data)
        assert latents.shape == (4, 8, 8) and json.loads(metadata["latent_shape"]) == [4, 8, 8]
        assert metadata["model_family"] == "stable-diffusion" and metadata["model_hash"] == row["model_hash"]
        assert json.loads(metadata["parameters"])[schema.SEED] == row[schema.SEED]

    again = decode_again(f"{base}/run", f"{base}/decoded", **storage_section)
    assert (again.rows_read, again.outputs_written, again.rows_failed) == (4, 4, 0)
    decoded = manifest_of(f"{base}/decoded", options)
    assert set(decoded) == set(original)
    for row_id, row in decoded.items():
        assert row[schema.SHA256] == original[row_id][schema.SHA256], f"row {row_id} decoded differently"
        assert row[schema.LATENTS_URI] == original[row_id][schema.LATENTS_URI]  # where it came from
        assert row[schema.OUTPUT_URI].startswith(f"{base}/decoded/media/")

    resumed = decode_again(f"{base}/run", f"{base}/decoded", **storage_section)
    assert (resumed.already_done, resumed.outputs_written) == (4, 0)


@pytest.fixture
def saved_run(hostile):
    """The hostile-input run's output (conftest.py), made with saved latents: a tiny-image run in a local
    folder. Shared with test_hostile.py, so the tests here decode from it or change a copy, never it."""
    return hostile[2]


def test_another_format_and_tiled_decoding(saved_run, tmp_path):
    summary = decode_again(str(saved_run), str(tmp_path / "webp"), output={"image_format": "webp"}, tiling=True)
    source = manifest_of(str(saved_run))
    assert summary.outputs_written == len(source)
    rows = manifest_of(str(tmp_path / "webp"))
    assert set(rows) == set(source)
    assert all(row[schema.MIME_TYPE] == "image/webp" and row[schema.DECODE_MODE] == "tiled" for row in rows.values())


def test_latents_of_another_family_are_refused_before_anything_starts(saved_run, tmp_path, capsys):
    code = main(["decode", "--latents", str(saved_run), "--output", str(tmp_path / "out"),
                 "--model", "builtin:tiny-video"])
    err = capsys.readouterr().err
    assert code == EXIT_JOB_ERROR and "Traceback" not in err
    assert "were made by a stable-diffusion model (builtin:tiny-image), which the model builtin:tiny-video (wan) " \
           "cannot decode; pass --model with a stable-diffusion checkpoint" in err


def test_latents_of_another_shape_are_refused(saved_run, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = tmp_path / "source"
    shutil.copytree(saved_run, source)
    for path in (source / "latents").iterdir():
        latents, metadata = saved.decode_latents(path.read_bytes())
        metadata.pop("latent_shape"), metadata.pop("dtype")
        path.write_bytes(saved.encode_latents(latents.reshape(16, 4, 4)[:8], metadata))
    for part in (source / "manifest").iterdir():  # the copy's manifest names the copy's objects
        table = pq.read_table(part)
        uris = pc.replace_substring(table[schema.LATENTS_URI], str(saved_run), str(source))
        table = table.set_column(table.schema.get_field_index(schema.LATENTS_URI), schema.LATENTS_URI, uris)
        pq.write_table(table.cast(pa.schema(table.schema)), part)
    with pytest.raises(JobError, match=r"have shape \[8, 4, 4\] \(8 channels\), but the VAE of builtin:tiny-image "
                                       r"takes 4 latent channels"):
        latentmill.decode(str(source), str(tmp_path / "out"))


def test_a_run_without_saved_latents_is_refused(saved_run, tmp_path):
    """A run's manifest without the latents columns, as a run without output.save_latents writes it (the
    parity runs of test_parity.py check that it does)."""
    import pyarrow.parquet as pq

    source = tmp_path / "run"
    shutil.copytree(saved_run, source, ignore=shutil.ignore_patterns("latents"))
    for part in (source / "manifest").iterdir():
        pq.write_table(pq.read_table(part).drop_columns([schema.LATENTS_URI, schema.LATENTS_SHA256]), part)
    with pytest.raises(JobError, match="has no saved latents .* re-run the job with output.save_latents: true"):
        latentmill.decode(str(source), str(tmp_path / "out"))
