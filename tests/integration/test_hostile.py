"""Hostile input (issue 3, part 4): each case ends as an output, an error row or a clear stop.

The row-level cases share ONE job run (`hostile` in conftest.py, over ROWS: every hostile row plus good
ones); each test asserts its rows' outcome and message. Table- and model-level cases stop before
Ray starts, so they are cheap.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.config import load_config
from latentmill.io import storage
from latentmill.jobs.cli import EXIT_JOB_ERROR, EXIT_OK, main
from latentmill.pipelines.job import JobError, prepare, run_job
from tests.helpers import png_zlib_level, write_table
from tests.integration.exactly_once import check_output, check_summary

LONG_PROMPT = " ".join(["a watercolour painting of a lighthouse on a cliff at dusk, gulls overhead"] * 10)
UNICODE = {
    "japanese": "富士山の上の満月、浮世絵の様式",
    "emoji": "🚀🌕 a rocket 👩‍🚀 near the moon ✨",
    "rtl": "مرحبا بالعالم — שלום עולם — mixed with English",
}
HOSTILE_IDS = ["a/b/c", "../../escape", "..", "with spaces here", "x" * 1000]
LIMITS = {"max_height": 128, "max_width": 128, "max_steps": 8, "max_prompt_chars": 2000}

# id -> row (the prompt defaults to a plain one); "dup" appears twice.
ROWS = [
    {"id": "ok", "prompt": "a red fox in the snow"},
    {"id": "null", "prompt": None},
    {"id": "empty", "prompt": ""},
    {"id": "blank", "prompt": " \t\n  "},
    {"id": "long", "prompt": LONG_PROMPT},
    {"id": "too-long", "prompt": "many words " * 200},
    *({"id": key, "prompt": text} for key, text in UNICODE.items()),
    {"id": "dup", "prompt": "first of two rows with one id"},
    {"id": "dup", "prompt": "second of two rows with one id"},
    *({"id": row_id, "prompt": f"hostile id {i}"} for i, row_id in enumerate(HOSTILE_IDS)),
    {"id": "tall", "prompt": "p", "height": 256},
    {"id": "wide", "prompt": "p", "width": 4096},
    {"id": "many-steps", "prompt": "p", "num_inference_steps": 50.0},
    {"id": "half-step", "prompt": "p", "num_inference_steps": 2.5},
    {"id": "word-guidance", "prompt": "p", "guidance_scale": "high"},
    {"id": "text-seed", "prompt": "p", "seed": "12"},
    {"id": "odd-size", "prompt": "p", "height": 60},
    {"id": "no-steps", "prompt": "p", "num_inference_steps": 0},  # 0.0: the column is float (many-steps)
    {"id": "boom", "prompt": "decoding this row raises"},
]
OUTPUTS = {"ok", "long", *UNICODE, "dup", *HOSTILE_IDS}
FAILED = {"null", "empty", "blank", "too-long", "dup", "tall", "wide", "many-steps", "half-step",
          "word-guidance", "text-seed", "odd-size", "no-steps", "boom"}


def error(hostile, row_id: str) -> dict:
    return hostile[1].errors[row_id]


def validate_error(hostile, row_id: str) -> str:
    row = error(hostile, row_id)
    assert (row[schema.ERROR_STAGE], row[schema.ERROR_TYPE]) == ("validate", "InvalidRow")
    assert json.loads(row[schema.INPUT_ROW])["id"] == row_id  # the raw row is kept
    return row[schema.ERROR_MESSAGE]


@pytest.mark.slow
def test_every_row_ends_in_exactly_one_place(hostile):
    summary, output, _ = hostile
    check_summary(summary, rows=len(ROWS), outputs=len(OUTPUTS), failed=len(FAILED))
    assert summary.failed_by_stage == {"validate": len(FAILED) - 1, "decode": 1}
    check_summary(output.summary, rows=len(ROWS), outputs=len(OUTPUTS), failed=len(FAILED))
    assert all(json.loads(row[schema.INPUT_ROW]) for row in output.errors.values())  # each keeps its raw row


@pytest.mark.slow
def test_null_empty_and_whitespace_prompts(hostile):
    assert "prompt column 'prompt' is null; give every row a prompt" in validate_error(hostile, "null")
    assert "prompt column 'prompt' is empty" in validate_error(hostile, "empty")
    assert "prompt column 'prompt' is empty" in validate_error(hostile, "blank")
    messages = [row[schema.ERROR_MESSAGE] for row in hostile[1].errors.values()]  # and on no other row
    assert sum("is null" in m for m in messages) == 1 and sum("is empty" in m for m in messages) == 2


@pytest.mark.slow
def test_prompt_longer_than_the_encoder_is_truncated_and_flagged(hostile):
    manifest = hostile[1].manifest
    assert manifest["long"][schema.PROMPT_TRUNCATED] is True
    assert manifest["long"][schema.PROMPT] == LONG_PROMPT  # the manifest keeps the full prompt
    assert manifest["ok"][schema.PROMPT_TRUNCATED] is False
    # Beyond limits.max_prompt_chars it is an error row instead.
    assert "above limits.max_prompt_chars 2000" in validate_error(hostile, "too-long")


@pytest.mark.slow
def test_unicode_emoji_and_right_to_left_prompts(hostile):
    manifest = hostile[1].manifest
    for row_id, text in UNICODE.items():
        assert manifest[row_id][schema.PROMPT] == text
        assert manifest[row_id][schema.OUTPUT_URI].endswith(f"/media/{row_id}.png")


@pytest.mark.slow
def test_duplicate_ids_keep_one_row_and_report_the_other(hostile):
    kept = hostile[1].manifest["dup"][schema.PROMPT]
    message = validate_error(hostile, "dup")
    assert "id 'dup' appears more than once in the input" in message and "unique id" in message
    dropped = json.loads(error(hostile, "dup")[schema.INPUT_ROW])["prompt"]
    assert {kept, dropped} == {"first of two rows with one id", "second of two rows with one id"}


@pytest.mark.slow
def test_hostile_ids_keep_every_key_inside_the_output_prefix(hostile):
    _, output, out = hostile
    media = (out / "media").resolve()
    for row_id in HOSTILE_IDS:
        uri = output.manifest[row_id][schema.OUTPUT_URI]
        path = Path(uri).resolve()
        assert path.parent == media, uri
        assert path.name == storage.safe_key(row_id) + ".png" and len(path.name) <= 104
        latents = Path(output.manifest[row_id][schema.LATENTS_URI]).resolve()
        assert latents.parent == (out / "latents").resolve(), latents
    # Nothing was written anywhere but the output folder's own sub-folders.
    assert sorted(p.name for p in out.iterdir()) == ["_latentmill_job.json", "errors", "latents", "manifest", "media",
                                                     "runs", "stats.json", "summary.json"]
    assert not (out.parent / "escape").exists() and not (out.parent.parent / "escape.png").exists()


@pytest.mark.slow
def test_sizes_and_steps_beyond_the_configured_limits(hostile):
    assert "size 256 x 64 exceeds limits.max_height x max_width 128 x 128" in validate_error(hostile, "tall")
    assert "exceeds limits.max_height x max_width" in validate_error(hostile, "wide")
    assert "num_inference_steps 50 exceeds limits.max_steps 8" in validate_error(hostile, "many-steps")


@pytest.mark.slow
def test_a_size_the_model_cannot_make_and_zero_steps(hostile):
    assert "multiples of 8" in validate_error(hostile, "odd-size")
    assert "num_inference_steps must be >= 1, got 0" in validate_error(hostile, "no-steps")


@pytest.mark.slow
def test_output_png_compress_level_sets_the_zlib_level(hostile):
    """The run's output.png_compress_level is 9: zlib's maximum, which the PNG's zlib header declares."""
    media = hostile[2] / "media"
    assert {png_zlib_level(path.read_bytes()) for path in media.iterdir()} == {"maximum"}


@pytest.mark.slow
def test_per_row_overrides_of_the_wrong_type(hostile):
    assert "column 'guidance_scale' must be a number, got 'high' (str)" in validate_error(hostile, "word-guidance")
    assert "column 'seed' must be a number, got '12' (str)" in validate_error(hostile, "text-seed")
    assert "column 'num_inference_steps' must be a whole number, got 2.5" in validate_error(hostile, "half-step")


@pytest.mark.slow
def test_a_row_failing_in_decode_is_isolated_from_its_batch(hostile):
    row = error(hostile, "boom")
    assert (row[schema.ERROR_STAGE], row[schema.ERROR_TYPE]) == ("decode", "RuntimeError")
    assert row[schema.ERROR_MESSAGE] == "injected fault for row 'boom'"
    assert json.loads(row[schema.INPUT_ROW])["prompt"] == "decoding this row raises"


@pytest.mark.slow
def test_non_text_prompt_type(ray_local, tmp_path, capsys):
    """A prompt column of integers: every row is an error row naming the type (run through the CLI)."""
    table = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": [12, 7], "id": ["twelve", "seven"]}), table)
    code = main(["run", "--no-progress", "--input", str(table), "--output", str(tmp_path / "out")])
    assert code == EXIT_OK, capsys.readouterr().err[-2000:]
    output = check_output(str(tmp_path / "out"), set(), {"twelve", "seven"})
    assert "prompt column 'prompt' must be text, got 12 (int)" in output.errors["twelve"][schema.ERROR_MESSAGE]
    check_summary(output.summary, rows=2, outputs=0, failed=2)


# --------------------------------------------------------------------------------------------
# Cases that stop the job before any Ray work (cheap).
# --------------------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", "--no-progress", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_zero_rows(model_cache, tmp_path, capsys, caplog):
    table = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), table)
    code, out, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"))
    assert code == EXIT_OK, err
    assert "has no rows; nothing to do" in caplog.text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    check_summary(summary, rows=0, outputs=0, failed=0)
    assert re.search(r"rows read\s+0\n", out) and re.search(r"rows failed\s+0\n", out)
    assert not (tmp_path / "out" / "media").exists()


def test_a_file_that_is_not_parquet_inside_a_table_folder(model_cache, tmp_path, capsys):
    folder = tmp_path / "table"
    folder.mkdir()
    write_table(folder / "part-0.parquet", [{"prompt": "fine"}])
    (folder / "part-1.parquet").write_text("prompt\nnot parquet at all\n")
    code, _, err = run_cli(capsys, "--input", str(folder), "--output", str(tmp_path / "out"))
    assert code == EXIT_JOB_ERROR
    assert "part-1.parquet' is not a readable Parquet file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_prompt_column(model_cache, tmp_path, capsys):
    table = write_table(tmp_path / "t.parquet", [{"caption": "a cat", "id": "1"}])
    code, _, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"))
    assert code == EXIT_JOB_ERROR
    assert "has no prompt column 'prompt'; its columns are ['caption', 'id']" in err
    assert "--prompt-column" in err


def test_files_of_one_table_with_different_prompt_types(model_cache, tmp_path, capsys):
    """Ray Data cannot unify text and integer columns: refused up front, naming the files and column."""
    folder = tmp_path / "table"
    folder.mkdir()
    write_table(folder / "a.parquet", [{"prompt": "text"}])
    pq.write_table(pa.table({"prompt": [5]}), folder / "b.parquet")
    code, _, err = run_cli(capsys, "--input", str(folder), "--output", str(tmp_path / "out"))
    assert code == EXIT_JOB_ERROR
    assert "column 'prompt' has different types in the files of the prompt table" in err
    assert f"string in '{folder / 'a.parquet'}'; int64 in '{folder / 'b.parquet'}'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_table_with_two_columns_of_one_name(model_cache, tmp_path, capsys):
    """Two `prompt` columns: this failed with an ArrowInvalid traceback after Ray started."""
    table = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["x"])],
                                        names=["prompt", "prompt", "id"]), table)
    code, out, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"))
    assert code == EXIT_JOB_ERROR
    assert f"'{table}' has 2 columns named 'prompt'; every column of a prompt table needs its own name" in err
    assert "Rename or drop the extra column(s)" in err and "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("ray", {"local_num_cpus": -1}, "ray.local_num_cpus: Value error, local_num_cpus must be a whole number >= 1"),
        ("ray", {"local_num_gpus": 1.5}, "ray.local_num_gpus: Value error, local_num_gpus must be a whole number >= 0"),
        ("stages", {"denoise": {"num_gpus": float("inf")}},
         "stages.denoise.num_gpus: Value error, num_gpus must be a finite number between 0 and 1e+14"),
        ("stages", {"encode": {"resources": {"GPU": 1}}}, "stages.encode.resources: Value error, 'GPU' is one of Ray's own"),
        ("stages", {"decode": {"batch_size": True}}, "stages.decode.batch_size: Value error, batch_size must be a number"),
        ("output", {"manifest_flush_seconds": float("inf")},
         "output.manifest_flush_seconds: Value error, manifest_flush_seconds must be a finite number"),
        ("storage", {"endpoint_url": "localhost:9000"}, "storage.endpoint_url: Value error, endpoint_url must be a URL"),
    ],
    ids=["negative-local-cpus", "fractional-local-gpus", "infinite-pool-gpus", "ray-resource-by-name",
         "boolean-batch-size", "infinite-flush-interval", "endpoint-without-scheme"],
)
def test_invalid_settings_stop_before_ray_naming_the_field(tmp_path, capsys, section, values, message):
    """`ray.local_num_cpus: -1` was a ValueError traceback from ray.init; every such value is now refused
    when the job file is read, naming the field."""
    import yaml

    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({section: values}))
    code, out, err = run_cli(capsys, "--config", str(job), "--input", str(table), "--output", str(tmp_path / "out"))
    assert code == EXIT_JOB_ERROR
    assert message in err and "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


def test_model_path_that_does_not_exist(tmp_path, capsys):
    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    code, _, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"),
                           "--model", str(tmp_path / "no-such-model"))
    assert code == EXIT_JOB_ERROR
    assert "no-such-model' does not exist" in err and "diffusers checkpoint folder" in err


def test_model_that_is_not_a_diffusers_checkpoint(tmp_path, capsys):
    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"\0" * 16)
    code, _, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"), "--model", str(model))
    assert code == EXIT_JOB_ERROR
    assert "is not a diffusers checkpoint: " in err and "model_index.json is missing" in err


def _damage(model: Path, damage: str) -> str:
    """Damage a copy of the tiny image checkpoint; returns the file the message must name."""
    if damage == "unet-config-missing":
        (model / "unet" / "config.json").unlink()
        return f"component 'unet' (UNet2DConditionModel): {model / 'unet' / 'config.json'} is missing"
    if damage == "vae-config-not-json":
        (model / "vae" / "config.json").write_text('{"block_out_channels": [8, 8')
        return f"{model / 'vae' / 'config.json'} cannot be read as JSON (JSONDecodeError: "
    if damage == "vae-weights-missing":
        (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
        return (f"component 'vae' (AutoencoderKL): its weights are missing: {model / 'vae'} holds no "
                "diffusion_pytorch_model.safetensors")
    if damage == "text-encoder-truncated":
        weights = model / "text_encoder" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        return f"component 'text_encoder' (CLIPTextModel): the weights file {weights} is truncated: "
    if damage == "scheduler-config-missing":
        (model / "scheduler" / "scheduler_config.json").unlink()
        return f"component 'scheduler' (PNDMScheduler): {model / 'scheduler' / 'scheduler_config.json'} is missing"
    if damage == "tokenizer-empty":
        for file in (model / "tokenizer").iterdir():
            file.unlink()
        return f"component 'tokenizer' (CLIPTokenizer): none of its files is in {model / 'tokenizer'}"
    if damage == "weight-shard-missing":
        unet = model / "unet"
        (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model-00001-of-00002.safetensors")
        shards = {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                  "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}
        (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
        return f"weight shard(s) diffusion_pytorch_model-00002-of-00002.safetensors named in {unet}"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["unet-config-missing", "vae-config-not-json", "vae-weights-missing",
                                    "text-encoder-truncated", "scheduler-config-missing", "tokenizer-empty",
                                    "weight-shard-missing"])
def test_incomplete_checkpoint_components_stop_before_anything_starts(model_cache, tmp_path, capsys, damage):
    """Each component a stage loads needs its config file and its weights: a missing or damaged one was a
    KeyError or a load failure only after the actors started; now the job stops up front naming the file."""
    from latentmill.models import materialize

    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    model = tmp_path / "model"
    shutil.copytree(materialize("builtin:tiny-image"), model)
    expected = _damage(model, damage)
    code, out, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"), "--model", str(model))
    assert code == EXIT_JOB_ERROR
    assert f"model '{model}' is incomplete: " in err and expected in err
    assert "copy or download the whole checkpoint" in err and "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


def test_pickle_only_component_is_complete_when_pickles_are_allowed(model_cache, tmp_path):
    """`.bin` weights count as a component's weights with model.allow_pickle: true (and only then)."""
    from latentmill.models import ModelError, materialize, resolve_model

    model = tmp_path / "model"
    shutil.copytree(materialize("builtin:tiny-image"), model)
    (model / "vae" / "diffusion_pytorch_model.safetensors").rename(model / "vae" / "diffusion_pytorch_model.bin")
    assert resolve_model(str(model), allow_pickle=True).pipeline_class == "StableDiffusionPipeline"
    with pytest.raises(ModelError, match="has pickle weights"):
        resolve_model(str(model))


def _checkpoint(root: Path, index, folders: dict[str, dict] | None = None) -> Path:
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(index))
    for folder, config in (folders or {}).items():
        (root / folder).mkdir()
        (root / folder / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("index", "folders", "message"),
    [
        ({"_class_name": "KandinskyPipeline"}, {},
         "is a KandinskyPipeline, which latentmill has no adapter for; supported pipeline classes: "
         "CogVideoXPipeline, FluxPipeline, "),
        ({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
          "vae": ["diffusers", "AutoencoderKL"]}, {"vae": {}},
         "is incomplete: component folder(s) transformer named in"),
        (["FluxPipeline"], {}, "is not a valid model_index.json (it needs a mapping with a text _class_name)"),
        ({"_class_name": ["diffusers", "FluxPipeline"]}, {}, "is not a valid model_index.json"),
        ({"_class_name": "StableDiffusionPipeline", "_latentmill_defaults": [64]}, {},
         "_latentmill_defaults must be a mapping of generation defaults"),
    ],
    ids=["unsupported-class", "missing-component", "index-is-a-list", "class-name-is-a-list",
         "defaults-are-a-list"],
)
def test_checkpoints_that_cannot_run_stop_before_anything_starts(tmp_path, capsys, index, folders, message):
    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    model = _checkpoint(tmp_path / "model", index, folders)
    code, out, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"), "--model", str(model))
    assert code == EXIT_JOB_ERROR
    assert message in err
    assert "Traceback" not in out + err


@pytest.mark.slow
def test_a_model_on_s3_that_cannot_be_downloaded(model_cache, s3, tmp_path, capsys):
    """Wrong credentials for an s3:// model: an s3fs traceback before; now a stop naming the model URI."""
    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"storage": {"endpoint_url": s3.endpoint_url, "key": s3.access_key,
                                           "secret": "not-the-secret"}}))
    code, out, err = run_cli(capsys, "--config", str(job), "--input", str(table), "--output", str(tmp_path / "out"),
                             "--model", "s3://latentmill/models/tiny")
    assert code == EXIT_JOB_ERROR
    assert "cannot download the model 's3://latentmill/models/tiny' (" in err and "storage credentials" in err
    assert "not-the-secret" not in out + err and "Traceback" not in out + err


@pytest.fixture
def pickled_model(model_cache, tmp_path) -> Path:
    """The tiny image checkpoint with one extra pickle weights file in unet/."""
    from latentmill.models import materialize

    model = tmp_path / "pickled"
    shutil.copytree(materialize("builtin:tiny-image"), model)
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle bytes")
    return model


def test_pickle_weights_are_refused_by_default(pickled_model, tmp_path, capsys):
    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    code, _, err = run_cli(capsys, "--input", str(table), "--output", str(tmp_path / "out"),
                           "--model", str(pickled_model))
    assert code == EXIT_JOB_ERROR
    assert "has pickle weights (unet/diffusion_pytorch_model.bin, 1 file(s))" in err
    assert "Convert them to safetensors, or set model.allow_pickle: true" in err


def test_pickle_weights_are_accepted_when_explicitly_allowed(pickled_model, tmp_path):
    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    config = load_config(None, {"input": {"uri": str(table)}, "output": {"uri": str(tmp_path / "out")},
                                "model": {"path": str(pickled_model), "allow_pickle": True}})
    _, _, model, family, _ = prepare(config)  # every up-front check passes
    assert family.model_dir == pickled_model and family.name == "stable-diffusion"
    config.model.allow_pickle = False
    with pytest.raises(JobError, match="pickle weights"):
        run_job(config)


def test_frame_counts_beyond_the_configured_limit(model_cache, tmp_path):
    """Video rows are validated with the job's limits and the real tiny video checkpoint's rules."""
    from latentmill.pipelines.validate import validate_batch

    rows = [{"id": "ok", "prompt": "v", "num_frames": 9}, {"id": "long", "prompt": "v", "num_frames": 13},
            {"id": "odd", "prompt": "v", "num_frames": 8}, {"id": "fps", "prompt": "v", "fps": "fast"}]
    table = write_table(tmp_path / "video.parquet", rows)
    config = load_config(None, {"input": {"uri": str(table)}, "output": {"uri": str(tmp_path / "out")},
                                "model": {"path": "builtin:tiny-video"}, "limits": {"max_frames": 9}})
    _, _, _, family, rules = prepare(config)
    assert family.is_video
    out = validate_batch(pq.read_table(table), rules)
    messages = dict(zip(out[schema.ID], out[schema.ERROR_MESSAGE]))
    assert messages["ok"] == "" and out[schema.NUM_FRAMES][0] == 9
    assert "num_frames 13 must be between 1 and limits.max_frames 9" in messages["long"]
    assert "4k+1" in messages["odd"]
    assert "column 'fps' must be a number, got 'fast' (str)" in messages["fps"]
