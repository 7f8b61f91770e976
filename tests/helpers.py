"""Helpers shared by the integration tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import latentmill
from latentmill import schema
from latentmill.config import load_config
from latentmill.io import media, storage
from latentmill.models import resolve_model
from latentmill.rows import request_from

PARTI_PROMPTS_64 = Path(__file__).resolve().parents[1] / "examples" / "parti-prompts-64.parquet"


def rows_table(rows: list[dict]) -> pa.Table:
    """A table of `rows` with every column any row has (null where a row lacks it), as a prompt table's."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])


def write_table(path: Path, rows: list[dict]) -> Path:
    pq.write_table(rows_table(rows), path)
    return path


def generate(input_uri: str, output_uri: str, model: str = "builtin:tiny-image", batch_size: int = 4,
             **sections) -> tuple:
    """Run the whole job through the Python API with every pool at `batch_size`.

    Returns (summary, config) where config is the validated job the run used.
    """
    pool = {"batch_size": batch_size, "num_cpus": 0.5, "torch_threads": 1}
    overrides = {
        "stages": {"encode": dict(pool), "denoise": dict(pool), "decode": dict(pool)},
        "ray": {"progress_bars": False},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    summary = latentmill.run(input_uri, output_uri, model=model, **overrides)
    config = load_config(None, {**overrides, "input": {"uri": input_uri}, "output": {"uri": output_uri},
                                "model": {"path": model}})
    return summary, config


def validated_rows(family, rows: list[dict]) -> dict[str, np.ndarray]:
    """`rows` (ids r0, r1, ...) validated over the model's defaults: a batch as the encode stage receives it."""
    from latentmill.pipelines.validate import validate_batch
    from latentmill.planning.calibrate import calibration_rules

    table = rows_table([{"id": f"r{i}", **row} for i, row in enumerate(rows)])
    batch = validate_batch(table, calibration_rules(family, None))
    assert not any(batch[schema.ERROR_STAGE]), list(batch[schema.ERROR_MESSAGE])
    return batch


def loaded_stage_families(model, dtype: str = "float32") -> tuple:
    """(encoder, denoiser, decoder): three family objects of `model`, each holding only its stage's weights
    (as the stage actors do), on the CPU with one thread."""
    encoder, denoiser, decoder = model.family(), model.family(), model.family()
    device, torch_dtype = encoder.prepare_runtime(0, dtype, 1)
    encoder.load_encoder(device, torch_dtype)
    denoiser.load_denoiser(device, torch_dtype)
    decoder.load_decoder(device, torch_dtype)
    return encoder, denoiser, decoder


def denoise_groups(denoiser, requests) -> list[list[int]]:
    """Positions of the requests that may share one denoise call (the denoise worker's grouping)."""
    groups: dict = {}
    for i, request in enumerate(requests):
        groups.setdefault(denoiser.denoise_group_key(request), []).append(i)
    return list(groups.values())


def read_parquet_folder(fs, root: str) -> pa.Table | None:
    files = sorted(fs.glob(root.rstrip("/") + "/*.parquet")) if fs.exists(root) else []
    if not files:
        return None
    tables = []
    for file in files:
        with fs.open(file, "rb") as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables)


def decode_media(data: bytes, mime: str):
    return media.decode_video(data) if mime in ("video/mp4", "image/apng") else media.decode_image(data)[None]


def png_zlib_level(data: bytes) -> str:
    """The compression level a PNG's zlib stream declares (its header's FLEVEL bits, RFC 1950)."""
    idat = data.index(b"IDAT") + 4
    return ["fastest", "fast", "default", "maximum"][data[idat + 1] >> 6]


def mp4_top_level_boxes(data: bytes) -> list[bytes]:
    """The types of an MP4's top-level boxes, in file order (b"ftyp", b"moov", b"mdat", ...)."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset:offset + 4], "big"), data[offset + 4:offset + 8]
        if size == 1:  # 64-bit size after the type
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        elif size == 0:  # the box runs to the end of the file
            size = len(data) - offset
        if size < 8:
            raise ValueError(f"corrupt MP4: box {kind!r} at {offset} has size {size}")
        boxes.append(kind)
        offset += size
    if offset != len(data):
        raise ValueError(f"corrupt MP4: the last box overruns the data ({offset} > {len(data)})")
    return boxes


def tiny_clip(folder: Path) -> Path:
    """A random CLIP model (a CLIPModel and its CLIPProcessor, a few thousand parameters) saved in `folder`,
    with the built-in tokenizer trained locally: the quality gate's clip_score plumbing, not its judgement."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from latentmill.models.tiny_builds.tokenizers import train_clip_tokenizer

    tokenizer = train_clip_tokenizer()
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "projection_dim": 16}
    text = {**layers, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config={**layers, "image_size": 32, "patch_size": 8},
                                 projection_dim=16))
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def reference_frames(model_path: str, manifest_rows: list[dict]) -> dict[str, np.ndarray]:
    family = resolve_model(model_path).family()
    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    frames = {}
    for row in manifest_rows:
        request = request_from(row, tuple(family.extra_parameters))
        frames[row[schema.ID]] = media.to_uint8(family.reference_generate(pipe, request))
    return frames


def check_against_reference(output_uri: str, model_path: str, expected_rows: int) -> list[dict]:
    """Every output of a run is intact (sha256, size) and within 2/255 of what the plain diffusers pipeline
    makes for its manifest row; returns the manifest rows."""
    fs, root = storage.resolve(output_uri)
    manifest = read_parquet_folder(fs, storage.join(root, "manifest")).to_pylist()
    assert len(manifest) == expected_rows
    assert len({row[schema.ID] for row in manifest}) == expected_rows
    reference = reference_frames(model_path, manifest)
    for row in manifest:
        data = storage.read_bytes(*storage.resolve(row[schema.OUTPUT_URI]))
        assert hashlib.sha256(data).hexdigest() == row[schema.SHA256]
        assert len(data) == row[schema.BYTES]
        got = decode_media(data, row[schema.MIME_TYPE]).astype(int)
        want = reference[row[schema.ID]].astype(int)
        assert got.shape == want.shape, row[schema.ID]
        assert np.abs(got - want).max() <= 2, f"row {row[schema.ID]} differs from plain diffusers"
    return manifest
