"""Wan 2.2 A14B's experts in two denoise stages, without Ray: the high-noise stage's handover crosses as
packed bytes (as between two pools) to the low-noise stage, and the result equals WanPipeline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from latentmill.models import resolve_model, tensors
from latentmill.rows import Request

pytestmark = pytest.mark.slow

MODEL = "builtin:tiny-wan22"


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["LATENTMILL_CACHE"] = str(tmp_path_factory.mktemp("wan22-split-cache"))
    ref = resolve_model(MODEL)
    encoder, high, low, both, decoder = (ref.family() for _ in range(5))
    device, dtype = encoder.prepare_runtime(0, "float32", 1)
    encoder.load_encoder(device, dtype)
    high.load_denoiser_expert(device, dtype, 0)
    low.load_denoiser_expert(device, dtype, 1)
    both.load_denoiser(device, dtype)
    decoder.load_decoder(device, dtype)
    yield encoder, high, low, both, decoder
    torch.set_num_threads(threads)


def requests() -> list[Request]:
    def make(i, prompt, seed, guidance, guidance_2, steps=4):
        return Request(f"r{i}", prompt, "blurry", seed, steps, guidance, 64, 64, 9, 16.0,
                       (("guidance_scale_2", guidance_2),))

    return [make(0, "a river at dawn", 1, 4.0, 2.0), make(1, "a forest in the snow", 2, 4.0, 2.0),
            make(2, "a city at night", 3, 1.0, 3.0), make(3, "eight steps", 4, 5.0, 1.5, steps=8),
            make(4, "one step: the high-noise expert's only", 5, 4.0, 2.0, steps=1)]


def split_denoise(stages, batch: list[Request]) -> list[np.ndarray]:
    encoder, high, low, _, _ = stages
    encoded = encoder.encode(batch)
    conditioning = {name: [tensors.unpack(tensors.pack(value)) for value in values]
                    for name, values in encoded.tensors.items()}
    handover = high.denoise_first_expert(batch, conditioning)
    return low.denoise_second_expert(batch, conditioning, [bytes(data) for data in handover])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_two_expert_stages_equal_one_stage_with_both_and_plain_diffusers(stages, batch_size):
    encoder, _, _, both, decoder = stages
    rows = requests()
    groups = [rows[i:i + batch_size] for i in range(0, 2, batch_size)] + [[row] for row in rows[2:]]
    family = decoder
    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for group in groups:
        split = split_denoise(stages, group)
        encoded = encoder.encode(group)
        together = both.denoise(group, encoded.tensors)
        for request, got, want in zip(group, split, together):
            assert np.abs(got - want).max() <= 1e-5, f"row {request.id}: two pools differ from one"
            frames = decoder.decode(got[None], [request])[0]
            reference = family.reference_generate(pipe, request)
            assert np.abs(frames - reference).max() <= 2 / 255, f"row {request.id} differs from WanPipeline"
