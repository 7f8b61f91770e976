"""The stage contract, for every built-in family, without Ray.

Each stage runs in its own family object holding only its stage's weights (as the actors do): the
encode stage, then the denoise stage on conditioning that went through the inter-stage packing, then
the decode stage. The result equals the plain diffusers pipeline; a row's result does not depend on its
batch mates; negatives exist only for rows whose guidance uses them.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from latentmill.models import resolve_model, tensors, tiny
from latentmill.rows import Request

pytestmark = pytest.mark.slow

# Components whose weights each stage may hold (by role): anything else is a leak.
TEXT_ENCODERS = {"text_encoder", "text_encoder_2", "text_encoder_3"}
DENOISERS = {"unet", "transformer", "transformer_2"}


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["LATENTMILL_CACHE"] = str(tmp_path_factory.mktemp("contract-cache"))
    yield
    torch.set_num_threads(threads)


def requests_for(family, name: str) -> list[Request]:
    d = family.generation_defaults()
    values = {parameter: d.get(parameter, default) for parameter, (_, default) in family.extra_parameters.items()}

    def make(i, prompt, negative, seed, **overrides):
        row = {**d, **values, **overrides}
        row_extras = tuple(sorted((parameter, row[parameter]) for parameter in values))
        return Request(f"r{i}", prompt, negative, seed, row["num_inference_steps"], row["guidance_scale"],
                       row["height"], row["width"], row.get("num_frames", 1), float(row.get("fps", 0.0)), row_extras)

    guided = FAMILY_EXTRAS[name]
    return [
        make(0, "a cat sitting on a red sofa", "blurry", 1, **guided),
        make(1, "a dog running through the snow in slow motion at dawn, cinematic", "", 2, **guided),
        make(2, "x", "low quality", 3, **guided),
        make(3, "a river in a green valley", "ugly", 4, **NO_GUIDANCE.get(name, {"guidance_scale": 1.0})),
    ]


# Per family: per-row parameters of the rows that use guidance (defaults where empty), and the
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
    "shapes": {},
}
NO_GUIDANCE = {
    "tiny-flux": {"true_cfg_scale": 1.0},
    "tiny-qwen-image": {"true_cfg_scale": 1.0},
    "tiny-z-image": {"guidance_scale": 0.0},
}


def run_stages(ref, requests: list[Request], dtype_name: str = "float32") -> tuple[np.ndarray, dict, dict]:
    encoder, denoiser, decoder = ref.family(), ref.family(), ref.family()
    device, dtype = encoder.prepare_runtime(0, dtype_name, 1)
    encoder.load_encoder(device, dtype)
    encoded = encoder.encode(requests)
    denoiser.load_denoiser(device, dtype)
    decoder.load_decoder(device, dtype)
    latents: list = [None] * len(requests)
    groups: dict = {}
    for i, request in enumerate(requests):
        groups.setdefault(denoiser.denoise_group_key(request), []).append(i)
    for rows in groups.values():
        # exactly what crosses the object store: packed bytes per row and column
        conditioning = {name: [tensors.unpack(tensors.pack(values[i])) for i in rows]
                        for name, values in encoded.tensors.items()}
        for i, value in zip(rows, denoiser.denoise([requests[i] for i in rows], conditioning)):
            latents[i] = value
    frames = np.concatenate([decoder.decode(value[None], [request]) for value, request in zip(latents, requests)])
    held = {"encode": set(encoder.loaded_modules()), "denoise": set(denoiser.loaded_modules()),
            "decode": set(decoder.loaded_modules())}
    return frames, encoded.tensors, held


@pytest.fixture(scope="module")
def float32_frames() -> dict[str, np.ndarray]:
    """Family name -> the float32 frames of its four rows, as the isolation test made them (the bfloat16
    test compares with the first two instead of running the float32 stages again)."""
    return {}


@pytest.mark.parametrize("name", sorted(FAMILY_EXTRAS))
def test_stages_in_isolation_equal_plain_diffusers(name, float32_frames):
    if name not in tiny.TINY_MODELS:
        pytest.skip(f"{name} has no builder")
    ref = resolve_model(f"builtin:{name}")
    family = ref.family()
    requests = requests_for(family, name)
    frames, conditioning, held = run_stages(ref, requests)
    float32_frames[name] = frames

    assert held["encode"] and held["encode"] <= TEXT_ENCODERS, held
    assert held["denoise"] and held["denoise"] <= DENOISERS, held
    assert held["decode"] == {"vae"}, held

    negatives = [column for column in conditioning if column.startswith("negative_")]
    assert negatives, conditioning.keys()
    for column in negatives:
        assert conditioning[column][3] is None, f"{column} shipped for a row without guidance"
        assert all(conditioning[column][i] is not None for i in range(3)), column

    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for request, got in zip(requests, frames):
        want = family.reference_generate(pipe, request)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2 / 255, f"{name} row {request.id} differs from plain diffusers"

    # The same row alone, and among other batch mates, gives the same result.
    alone, _, _ = run_stages(ref, [requests[1]])
    assert np.abs(alone[0] - frames[1]).max() <= 1e-4


@pytest.mark.parametrize("name", sorted(FAMILY_EXTRAS))
def test_every_stage_runs_in_bfloat16_as_on_a_gpu(name, float32_frames):
    """Stages in bfloat16 (what GPU pools run): latents cross to the decoder as float32 and must meet a
    bfloat16 VAE; the frames stay finite and near the float32 ones (a row's frames do not depend on its
    batch mates: the isolation test's float32 run of the same rows serves, when it ran)."""
    ref = resolve_model(f"builtin:{name}")
    requests = requests_for(ref.family(), name)[:2]
    if name in float32_frames:
        full = float32_frames[name][:2]
    else:
        full, _, _ = run_stages(ref, requests)
    half, _, _ = run_stages(ref, requests, "bfloat16")
    assert half.shape == full.shape and np.isfinite(half).all()
    assert np.abs(half - full).mean() < 0.05, f"{name}: bfloat16 frames far from float32 ones"


def test_ltx_decoder_without_its_own_noise_decodes_a_batch_as_plain_diffusers(tmp_path):
    """LTX-Video 0.9.5 and later add no noise inside the decoder: a decode batch is one VAE call whose
    rows equal plain diffusers' and the same rows decoded alone."""
    import json
    import shutil

    from latentmill.models import materialize

    model = tmp_path / "ltx"
    shutil.copytree(materialize("builtin:tiny-ltx"), model)
    config_file = model / "vae" / "config.json"
    config = json.loads(config_file.read_text())
    config["decoder_inject_noise"] = [False] * len(config["decoder_inject_noise"])
    config_file.write_text(json.dumps(config))
    ref = resolve_model(str(model))
    family = ref.family()
    requests = requests_for(family, "tiny-ltx")[:2]
    alone, _, _ = run_stages(ref, requests)

    encoder, denoiser, decoder = ref.family(), ref.family(), ref.family()
    device, dtype = encoder.prepare_runtime(0, "float32", 1)
    encoder.load_encoder(device, dtype)
    denoiser.load_denoiser(device, dtype)
    decoder.load_decoder(device, dtype)
    encoded = encoder.encode(requests)
    latents = np.stack(denoiser.denoise(requests, encoded.tensors))
    batched = decoder.decode(latents, requests)
    assert np.abs(batched - alone).max() <= 1e-4

    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for request, got in zip(requests, batched):
        assert np.abs(got - family.reference_generate(pipe, request)).max() <= 2 / 255, request.id
