"""The stage contract, for every built-in family, without Ray.

The job's own stage workers (actors.stages), built and called in this process as their actors call them
(as the planner's calibration does): validated rows with per-row parameters go into the encode worker,
its packed conditioning into the denoise worker, its latents into the decode worker, which writes each
row's PNG or APNG to a folder. Each output equals what the plain diffusers pipeline makes for its row; a
row's output does not depend on its batch mates; each stage holds only its own weights; negatives are
shipped only for rows whose guidance uses them. The same through Ray, one family per layout:
tests/integration/test_parity.py.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from latentmill import schema
from latentmill.actors.stages import stage_workers
from latentmill.io import media, storage
from latentmill.io.hidden import HiddenOptions
from latentmill.models import ModelRef, resolve_model, tiny
from latentmill.rows import Request, request_at

from tests.helpers import decode_media, validated_rows

pytestmark = pytest.mark.slow

# Components whose weights each stage may hold (by role): anything else is a leak.
TEXT_ENCODERS = {"text_encoder", "text_encoder_2", "text_encoder_3", "connectors"}
DENOISERS = {"unet", "transformer", "transformer_2"}


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["LATENTMILL_CACHE"] = str(tmp_path_factory.mktemp("contract-cache"))
    yield
    torch.set_num_threads(threads)
    gc.unfreeze()  # the workers freeze what they load, as in their actors; this process goes on


# Per family: per-row parameters of the rows that use guidance (defaults where empty); a third row's
# own parameters (other steps, frames, sequence lengths, fps: rows a batch cannot run together); and the
# parameter values that switch classifier-free guidance off (so no negatives may be shipped).
FAMILY_EXTRAS = {
    "tiny-image": {},
    "tiny-video": {},
    "tiny-wan22": {"guidance_scale_2": 2.0},
    "tiny-wan22-5b": {},
    "tiny-ltx": {"decode_timestep": 0.1, "decode_noise_scale": 0.05},
    "tiny-cogvideox": {},
    "tiny-hunyuan-video15": {},
    "tiny-sdxl": {},
    "tiny-sd3": {},
    "tiny-flux": {"true_cfg_scale": 3.0},
    "tiny-qwen-image": {"true_cfg_scale": 3.0},
    "tiny-z-image": {"guidance_scale": 3.0},
    "tiny-ltx2": {"audio_guidance_scale": 3.0},
    "shapes": {},
}
OWN_PARAMETERS = {
    "tiny-image": {"num_inference_steps": 2},
    "tiny-video": {"num_frames": 5},
    "tiny-wan22": {"num_frames": 5, "guidance_scale_2": 1.5},
    "tiny-wan22-5b": {"num_frames": 5, "num_inference_steps": 2},
    "tiny-ltx": {"num_frames": 17, "fps": 12.0, "decode_noise_scale": 0.1},
    "tiny-cogvideox": {"num_frames": 17, "num_inference_steps": 2},
    "tiny-hunyuan-video15": {"num_frames": 5, "guidance_scale": 3.0},
    "tiny-sdxl": {"num_inference_steps": 2},
    "tiny-sd3": {"max_sequence_length": 32},
    "tiny-flux": {"guidance_scale": 5.0, "max_sequence_length": 32},
    "tiny-qwen-image": {"true_cfg_scale": 2.5, "num_inference_steps": 2},
    "tiny-z-image": {"guidance_scale": 2.0},
    "tiny-ltx2": {"num_frames": 17, "fps": 12.0},
    "shapes": {"num_inference_steps": 2},
}
NO_GUIDANCE = {
    "tiny-flux": {"true_cfg_scale": 1.0},
    "tiny-qwen-image": {"true_cfg_scale": 1.0},
    "tiny-z-image": {"guidance_scale": 0.0},
    "tiny-ltx2": {"guidance_scale": 1.0, "audio_guidance_scale": 1.0},
}


def rows_for(name: str) -> list[dict]:
    """Four rows of one table: rows 0 and 1 can share a model call, row 2 has its own parameters, row 3
    uses no guidance."""
    guided = FAMILY_EXTRAS[name]
    return [
        {"prompt": "a cat sitting on a red sofa", "negative_prompt": "blurry", "seed": 1, **guided},
        {"prompt": "a dog running through the snow in slow motion at dawn, cinematic", "negative_prompt": "",
         "seed": 2, **guided},
        {"prompt": "x", "negative_prompt": "low quality", "seed": 3, **guided, **OWN_PARAMETERS[name]},
        {"prompt": "a river in a green valley", "negative_prompt": "ugly", "seed": 4,
         **NO_GUIDANCE.get(name, {"guidance_scale": 1.0})},
    ]


@dataclass
class StageRun:
    requests: list[Request]  # as the workers saw them, in row order
    frames: list[np.ndarray]  # each row's frames, uint8 (F, H, W, 3), read back from the media written
    encoded: dict[str, np.ndarray]  # the encode worker's output batch
    decoded: dict[str, np.ndarray]  # the decode worker's output batch
    held: dict[str, set[str]]  # the components each stage's worker loaded


def run_workers(model: ModelRef, rows: list[dict], folder: Path, dtype: str = "float32") -> StageRun:
    family = model.family()
    batch = validated_rows(family, rows)
    workers = stage_workers()
    common = {"model": model, "num_gpus": 0, "dtype": dtype, "torch_threads": 1}
    encode = workers[schema.STAGE_ENCODE](**common)
    denoise = workers[schema.STAGE_DENOISE](**common)
    decode = workers[schema.STAGE_DECODE](**common, output_uri=str(folder), storage_options=HiddenOptions({}),
                                          image_format="png", video_format="apng")
    encoded = encode(batch)
    decoded = decode(denoise(encoded))
    assert not any(decoded[schema.ERROR_MESSAGE]), list(decoded[schema.ERROR_MESSAGE])
    written = {row_id: decode_media(storage.read_bytes(*storage.resolve(uri)), mime)
               for row_id, uri, mime in zip(decoded[schema.ID], decoded[schema.OUTPUT_URI], decoded[schema.MIME_TYPE])}
    requests = [request_at(batch, i, tuple(family.extra_parameters)) for i in range(len(rows))]
    return StageRun(requests, [written[request.id] for request in requests], encoded, decoded,
                    {stage: set(worker.family.loaded_modules())
                     for stage, worker in ((schema.STAGE_ENCODE, encode), (schema.STAGE_DENOISE, denoise),
                                           (schema.STAGE_DECODE, decode))})


def assert_equal_to_plain_diffusers(family, run: StageRun, name: str) -> None:
    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for request, got in zip(run.requests, run.frames):
        want = media.to_uint8(family.reference_generate(pipe, request))
        assert got.shape == want.shape, (name, request.id)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2, f"{name} row {request.id} differs from plain diffusers"


@pytest.fixture(scope="module")
def float32_frames() -> dict[str, list[np.ndarray]]:
    """Family name -> the frames its float32 stages wrote for its four rows, as the isolation test made them
    (the bfloat16 test compares with the first two instead of running the float32 stages again)."""
    return {}


@pytest.mark.parametrize("name", sorted(FAMILY_EXTRAS))
def test_stages_in_isolation_equal_plain_diffusers(name, float32_frames, tmp_path):
    if name not in tiny.TINY_MODELS:
        pytest.skip(f"{name} has no builder")
    model = resolve_model(f"builtin:{name}")
    family = model.family()
    rows = rows_for(name)
    run = run_workers(model, rows, tmp_path / "batch")
    float32_frames[name] = run.frames

    assert run.held[schema.STAGE_ENCODE] and run.held[schema.STAGE_ENCODE] <= TEXT_ENCODERS, run.held
    assert run.held[schema.STAGE_DENOISE] and run.held[schema.STAGE_DENOISE] <= DENOISERS, run.held
    assert run.held[schema.STAGE_DECODE] == ({"vae", "audio_vae", "vocoder"} if family.has_audio else {"vae"})
    if family.has_audio:  # APNG carries no sound, and the manifest's columns say so
        assert all(rate is None for rate in run.decoded[schema.AUDIO_SAMPLE_RATE])

    for row, request in zip(rows, run.requests):  # each row's own parameters reached the stages
        assert {key: request.columns()[key] for key in row} == row, (name, request.id)

    negatives = [column for column in family.conditioning_columns() if column.startswith("negative_")]
    assert negatives, family.conditioning_columns()
    for column in negatives:
        assert run.encoded[column][3] == b"", f"{column} shipped for a row without guidance"
        assert all(run.encoded[column][i] != b"" for i in range(3)), column

    assert_equal_to_plain_diffusers(family, run, name)

    # The same row alone, and among other batch mates, gives the same result.
    alone = run_workers(model, [rows[1]], tmp_path / "alone")
    assert np.abs(alone.frames[0].astype(int) - run.frames[1].astype(int)).max() <= 1


@pytest.mark.parametrize("name", sorted(FAMILY_EXTRAS))
def test_every_stage_runs_in_bfloat16_as_on_a_gpu(name, float32_frames, tmp_path):
    """Stages in bfloat16 (what GPU pools run): latents cross to the decoder as float32 and must meet a
    bfloat16 VAE; no latents are non-finite (the denoise worker would fail the row) and the frames stay
    near the float32 ones (a row's frames do not depend on its batch mates: the isolation test's float32
    run of the same rows serves, when it ran)."""
    model = resolve_model(f"builtin:{name}")
    rows = rows_for(name)[:2]
    full = float32_frames.get(name) or run_workers(model, rows, tmp_path / "float32").frames
    half = run_workers(model, rows, tmp_path / "bfloat16", "bfloat16").frames
    for got, want in zip(half, full):
        assert got.shape == want.shape
        assert np.abs(got.astype(float) - want.astype(float)).mean() / 255 < 0.05, \
            f"{name}: bfloat16 frames far from float32 ones"


def test_ltx_decoder_without_its_own_noise_decodes_a_batch_as_plain_diffusers(tmp_path):
    """LTX-Video 0.9.5 and later add no noise inside the decoder: the decode worker decodes a batch's
    same-sized rows in one VAE call, and each row equals plain diffusers'."""
    import json
    import shutil

    from latentmill.models import materialize

    folder = tmp_path / "ltx"
    shutil.copytree(materialize("builtin:tiny-ltx"), folder)
    config_file = folder / "vae" / "config.json"
    config = json.loads(config_file.read_text())
    config["decoder_inject_noise"] = [False] * len(config["decoder_inject_noise"])
    config_file.write_text(json.dumps(config))
    model = resolve_model(str(folder))
    family = model.family()
    run = run_workers(model, rows_for("tiny-ltx")[:2], tmp_path / "out")
    assert_equal_to_plain_diffusers(family, run, "ltx without decoder noise")
