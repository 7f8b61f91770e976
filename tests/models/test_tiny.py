"""The built-in tiny checkpoints load with plain diffusers, generate, and build reproducibly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib
import multiprocessing
import subprocess
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from latentmill.models import families, tiny

LONG_PROMPT = " ".join(["a red fox jumping over a lazy dog in the snow"] * 40)
WORLD_TEXT = "A cat 🐱🚀 naïve café Ünïcödé 東京 مرحبا بالعالم שלום עולם  tabs\tand\nnewlines"


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    # The models are tiny: on a busy 2-core machine extra intra-op threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return tiny.init_tiny(tmp_path_factory.mktemp("tiny"))


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _image_pipe(path: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _video_pipe(path: Path):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_init_tiny_writes_complete_checkpoints(built):
    import json

    assert set(built) == set(tiny.TINY_MODELS) == set(tiny.TINY_DEFAULTS)
    for name, path in built.items():
        assert path.name == name
        index = json.loads((path / "model_index.json").read_text())
        components = {c: spec for c, spec in index.items() if isinstance(spec, list) and spec[0] is not None}
        for component, (_, class_name) in components.items():
            if component.startswith("tokenizer"):
                assert list((path / component).glob("tokenizer*.json")), (name, component)
            elif component == "scheduler":
                assert (path / component / "scheduler_config.json").is_file()
            elif component == "guider":
                assert (path / component / "guider_config.json").is_file()
            else:
                assert list((path / component).glob("*.safetensors")), (name, component)
        # Realistic VAE compression, so a stage that assumes a default factor gets caught.
        factor = families()[index["_class_name"]](path).vae_scale_factor()
        assert factor in (8, 16, 32), (name, factor)


def test_builds_are_byte_identical(built, tmp_path):
    for name, build in tiny.TINY_MODELS.items():
        build(tmp_path / name)
        assert _digests(tmp_path / name) == _digests(built[name])


def test_module_import_is_light():
    heavy = "{'torch', 'diffusers', 'transformers', 'tokenizers'}"
    code = f"import sys, latentmill.models.tiny; print(sorted({heavy} & set(sys.modules)))"
    repo = Path(tiny.__file__).parents[2]
    run = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    out = run.stdout
    assert out.strip() == "[]"


def test_tiny_image_generates(built):
    pipe = _image_pipe(built["tiny-image"])
    assert pipe.vae_scale_factor == 8
    settings = tiny.TINY_DEFAULTS["tiny-image"]

    def generate(prompt):
        generator = torch.Generator().manual_seed(0)
        return pipe(prompt, generator=generator, output_type="np", **settings).images

    images = generate("a photo of a cat")
    assert images.shape == (1, settings["height"], settings["width"], 3)
    assert np.isfinite(images).all()
    np.testing.assert_array_equal(images, generate("a photo of a cat"))
    assert np.isfinite(generate([LONG_PROMPT, WORLD_TEXT])).all()


def test_tiny_video_generates(built):
    pipe = _video_pipe(built["tiny-video"])
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    settings = dict(tiny.TINY_DEFAULTS["tiny-video"])
    settings.pop("fps")  # for the encoder, not the pipeline

    def generate(prompt):
        generator = torch.Generator().manual_seed(0)
        output = pipe(prompt, negative_prompt="blurry", generator=generator, output_type="np", **settings)
        return output.frames

    frames = generate("a dog running through the snow")
    assert frames.shape == (1, settings["num_frames"], settings["height"], settings["width"], 3)
    assert np.isfinite(frames).all()
    np.testing.assert_array_equal(frames, generate("a dog running through the snow"))
    assert np.isfinite(generate(WORLD_TEXT)).all()


def test_clip_tokenizer_truncates_and_covers_any_text(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["tiny-image"] / "tokenizer")
    assert tokenizer.model_max_length == 77
    assert 300 <= len(tokenizer) <= 1000

    def encode(text):
        return tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids

    long_ids = encode(LONG_PROMPT)
    assert len(long_ids) == 77
    assert (long_ids[0], long_ids[-1]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert len(tokenizer(LONG_PROMPT).input_ids) > 77

    assert len(encode(WORLD_TEXT)) == 77
    body = tokenizer(WORLD_TEXT).input_ids[1:-1]
    assert tokenizer.unk_token_id not in body  # byte-level: nothing unknown
    expected = " ".join(unicodedata.normalize("NFC", WORLD_TEXT).lower().split())
    assert tokenizer.decode(body) == expected


def test_t5_tokenizer_truncates_and_survives_any_text(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["tiny-video"] / "tokenizer")
    assert tokenizer.model_max_length == 512
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)

    def encode(text, max_length):
        return tokenizer(text, padding="max_length", max_length=max_length, truncation=True).input_ids

    long_ids = encode(LONG_PROMPT, 64)
    assert len(long_ids) == 64 and long_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in tokenizer("Any ASCII: Zebra #42 {x} ~ ok!").input_ids

    ids = encode(WORLD_TEXT, 512)
    assert len(ids) == 512 and ids[-1] == tokenizer.pad_token_id
    assert tokenizer.eos_token_id in ids


def test_ensure_builtin_builds_once(tmp_path, monkeypatch):
    path = tiny.ensure_builtin("tiny-image", tmp_path)
    assert path == tmp_path / "models" / f"tiny-image-{tiny._VERSION}"
    stamp = (path / "model_index.json").stat().st_mtime_ns

    def must_not_build(dest):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setitem(tiny.TINY_MODELS, "tiny-image", must_not_build)
    assert tiny.ensure_builtin("tiny-image", tmp_path) == path
    assert (path / "model_index.json").stat().st_mtime_ns == stamp
    assert list(path.parent.iterdir()) == [path]  # no temporary directory left behind


def test_ensure_builtin_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTMILL_CACHE", str(tmp_path))

    def fake_build(dest):
        (dest / "model_index.json").write_text("{}")

    monkeypatch.setitem(tiny.TINY_MODELS, "tiny-video", fake_build)
    assert tiny.ensure_builtin("tiny-video") == tmp_path / "models" / f"tiny-video-{tiny._VERSION}"


def test_ensure_builtin_loser_of_a_race_uses_the_winner(tmp_path, monkeypatch):
    def winner(dest):
        (dest / "model_index.json").write_text('"winner"')

    def loser(dest):
        # Another process finishes first while this one is still building.
        monkeypatch.setitem(tiny.TINY_MODELS, "tiny-image", winner)
        tiny.ensure_builtin("tiny-image", tmp_path)
        (dest / "model_index.json").write_text('"loser"')

    monkeypatch.setitem(tiny.TINY_MODELS, "tiny-image", loser)
    path = tiny.ensure_builtin("tiny-image", tmp_path)
    assert (path / "model_index.json").read_text() == '"winner"'
    assert list(path.parent.iterdir()) == [path]


def test_ensure_builtin_concurrent_processes(tmp_path, built):
    # fork: the children reuse the parent's imports, which spawn would take many seconds to redo.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [pool.submit(tiny.ensure_builtin, "tiny-video", tmp_path) for _ in range(2)]
        paths = [future.result(timeout=120) for future in futures]
    assert paths[0] == paths[1] == tmp_path / "models" / f"tiny-video-{tiny._VERSION}"
    assert list(paths[0].parent.iterdir()) == [paths[0]]
    assert _digests(paths[0]) == _digests(built["tiny-video"])


def test_ensure_builtin_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="tiny-image.*tiny-video"):
        tiny.ensure_builtin("huge-model", tmp_path)
