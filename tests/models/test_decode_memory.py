"""The decode mode chosen up front from the planner's measured peak memory, without Ray.

The stage workers run in this process as their actors run them. A decode budget below the estimate
picks tiled decoding before any out-of-memory error, and the video equals plain diffusers decoding
with the same tiling.
"""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import pyarrow as pa
import torch

from latentmill import schema
from latentmill.actors.decode_memory import DecodeMemoryPlan, fit_peak_memory, peak_memory
from latentmill.actors.stages import stage_workers
from latentmill.config import DecodePeakMemory, GenerationDefaults, Limits
from latentmill.io import media
from latentmill.io.hidden import HiddenOptions
from latentmill.models import resolve_model
from latentmill.pipelines.validate import RowRules, resolve_defaults, validate_batch
from latentmill.planning.calibrate import measure_decode_memory
from latentmill.rows import Request, request_from
from tests.helpers import decode_media

MODEL = "builtin:tiny-video"
# Small tiles so that the tiny model's 64 x 64 frames really are decoded in overlapping tiles.
TILES = {"tile_sample_min_height": 32, "tile_sample_min_width": 32,
         "tile_sample_stride_height": 16, "tile_sample_stride_width": 16}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Encode and denoise workers and the denoised batch of two rows (one row's latents for the planner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["LATENTMILL_CACHE"] = str(tmp_path_factory.mktemp("decode-memory-cache"))
    model = resolve_model(MODEL)
    family = model.family()
    defaults = resolve_defaults(GenerationDefaults(num_inference_steps=2), family.generation_defaults(), {})
    rules = RowRules(prompt_column="prompt", id_column="id", defaults=defaults, job_seed=0, limits=Limits(),
                     family=family)
    table = pa.table({"id": ["a", "b"], "prompt": ["a river at dawn", "a forest"], "seed": [1, 2]})
    workers = stage_workers()
    common = {"model": model, "num_gpus": 0, "dtype": "float32", "torch_threads": 1}
    batch = validate_batch(table, rules)
    for stage in (schema.STAGE_ENCODE, schema.STAGE_DENOISE):
        batch = workers[stage](**common)(batch)
    yield model, common, batch
    torch.set_num_threads(threads)


def decode_worker(common, out_dir, **memory):
    worker = stage_workers()[schema.STAGE_DECODE](**common, output_uri=str(out_dir), storage_options=HiddenOptions({}),
                                                  image_format="png", video_format="apng", **memory)
    for name, value in TILES.items():  # kept by the VAE's enable_tiling() when it is switched on
        setattr(worker.family.vae, name, value)
    return worker


@pytest.mark.slow
def test_a_budget_below_the_estimate_decodes_tiled_up_front_as_plain_diffusers_with_tiling(stages, tmp_path,
                                                                                              caplog):
    model, common, denoised = stages
    one_row = {name: values[:1] for name, values in denoised.items()}
    measured = measure_decode_memory(decode_worker(common, tmp_path / "planner"), one_row)
    peak = DecodePeakMemory(**{k: v for k, v in measured.items() if k != "samples"})
    assert peak.bytes_per_latent_element > 0

    worker = decode_worker(common, tmp_path / "out", memory_budget_gb=1e-6, peak_memory=peak)
    assert worker.memory_plan.available_bytes < 0 < worker.memory_plan.estimate(one_row[schema.LATENTS].size)
    with caplog.at_level(logging.INFO, logger="latentmill.actors.stages"):
        out = worker(denoised)
    assert list(out[schema.ERROR_STAGE]) == ["", ""], out[schema.ERROR_MESSAGE]
    assert list(out[schema.DECODE_MODE]) == ["tiled", "tiled"]
    assert "ran out of memory" not in caplog.text
    assert "decoding tiled" in caplog.text
    assert not worker.family.vae.use_tiling  # tiled for that batch only: the actor did not switch for good

    family = model.family()
    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for i in range(2):
        request = request_from({name: denoised[name][i] for name in schema.REQUEST_COLUMNS}, ())
        got = decode_media((tmp_path / "out" / "media" / f"{request.id}.apng").read_bytes(), "image/apng")
        pipe.vae.enable_tiling(**TILES)
        tiled = media.to_uint8(family.reference_generate(pipe, request)).astype(int)
        pipe.vae.disable_tiling()
        untiled = media.to_uint8(family.reference_generate(pipe, request)).astype(int)
        assert np.abs(got.astype(int) - tiled).max() <= 2, f"row {request.id} differs from tiled plain diffusers"
        assert np.abs(tiled - untiled).max() > 2  # the tiles really were decoded apart


@pytest.mark.slow
def test_a_budget_for_one_row_but_not_two_decodes_row_by_row(stages, tmp_path):
    model, common, denoised = stages
    full = decode_worker(common, tmp_path / "full")(denoised)
    per_element = 1000.0
    peak = DecodePeakMemory(fixed_bytes=0, bytes_per_latent_element=per_element, dtype="float32")
    worker = decode_worker(common, tmp_path / "sliced", peak_memory=peak, memory_budget_gb=1.0)
    weights = 2**30 - worker.memory_plan.available_bytes
    row_elements = denoised[schema.LATENTS][0].size
    budget = weights + 1.5 * row_elements * per_element  # one row fits, two do not
    worker = decode_worker(common, tmp_path / "sliced", peak_memory=peak, memory_budget_gb=budget / 2**30)
    out = worker(denoised)
    assert list(full[schema.DECODE_MODE]) == ["full", "full"]
    assert list(out[schema.DECODE_MODE]) == ["sliced", "sliced"]
    for row_id in out[schema.ID]:  # the same frames (a batch of one may round a last bit differently)
        videos = [decode_media((tmp_path / run / "media" / f"{row_id}.apng").read_bytes(), "image/apng").astype(int)
                  for run in ("full", "sliced")]
        assert np.abs(videos[0] - videos[1]).max() <= 1


def test_plan_modes_and_fit():
    plan = DecodeMemoryPlan(available_bytes=1000, fixed_bytes=100, bytes_per_element=10)
    assert plan.mode(90, 1) == "full"
    assert plan.mode(160, 2) == "sliced"
    assert plan.mode(200, 1) == "tiled"
    assert fit_peak_memory([(100, 1100), (400, 4100)]) == (100.0, 10.0)
    assert fit_peak_memory([(100, 1000), (400, 900)]) == (0.0, 900 / 400)  # no growth: all per element


def test_tiled_decoding_of_an_image_splits_it_even_where_the_vae_tile_covers_the_whole_image():
    """An image VAE's default tile is its training size (SDXL: 1024 pixels, the images it makes; the tiny
    one's: 64): tiles are made smaller than the latents, so tiling splits them and needs less memory, and
    the defaults come back afterwards."""
    family = resolve_model("builtin:tiny-sdxl").family()
    family.load_decoder(torch.device("cpu"), torch.float32)
    vae = family.vae
    defaults = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    side = defaults[1]  # latents exactly one default tile wide
    latents = np.random.default_rng(0).standard_normal((1, vae.config.latent_channels, side, side)).astype(np.float32)
    requests = [Request("r", "p", "", 1, 2, 1.0, defaults[0], defaults[0], 1, 0.0)]
    with peak_memory("cpu") as whole_peak:
        whole = family.decode(latents, requests)

    family.low_memory_decode(True, latents.shape[-2:])
    assert vae.use_tiling and vae.tile_latent_min_size < side
    assert vae.tile_sample_min_size // vae.tile_latent_min_size == defaults[0] // defaults[1]
    with peak_memory("cpu") as tiled_peak:
        tiled = family.decode(latents, requests)
    family.low_memory_decode(False)

    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == defaults and not vae.use_tiling
    assert tiled.shape == whole.shape and np.abs(tiled - whole).max() > 0  # decoded in tiles, blended
    assert tiled_peak.bytes < 0.7 * whole_peak.bytes, (tiled_peak.bytes, whole_peak.bytes)
