"""Fault injection (LATENTMILL_FAULTS) and the stage workers' per-row isolation, without Ray.

The workers are built around a fake model family, so the real `__call__` / retry / error-row code
runs in this process: one bad row becomes one error row, out-of-memory in decode retries with tiled
decoding, fatal storage errors stop the batch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from latentmill import faults, schema
from latentmill.faults import ENV, Fault, FaultInjector, forwarded_env, parse
from latentmill.models import tensors

# --------------------------------------------------------------------------------------------
# parse / injector
# --------------------------------------------------------------------------------------------


def test_parse_the_documented_example():
    assert parse("decode:oom:2;denoise:raise:row-7;denoise:nan:row-9;denoise:sleep:1.5") == [
        Fault("decode", "oom", "2"),
        Fault("denoise", "raise", "row-7"),
        Fault("denoise", "nan", "row-9"),
        Fault("denoise", "sleep", "1.5"),
    ]


def test_parse_tolerates_blanks_and_keeps_colons_in_ids():
    assert parse("") == [] and parse(" ; ;") == []
    assert parse(" decode:raise:a:b ; encode:oom ") == [Fault("decode", "raise", "a:b"), Fault("encode", "oom", "")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("decode:boom:1", "unknown fault 'decode:boom:1' (kinds: oom, raise, nan, blank, sleep)"),
        ("decoder:oom:1", "unknown stage in 'decoder:oom:1' (stages: encode, denoise, decode)"),
        ("denoise:raise", "'denoise:raise' needs a row id (denoise:raise:ID)"),
        ("denoise:nan:", "needs a row id"),
        ("denoise:sleep:soon", "'denoise:sleep:soon' needs a number >= 0 after sleep:"),
        ("denoise:sleep:-1", "needs a number >= 0"),
        ("decode:oom:1.5", "'decode:oom:1.5' needs a number >= 0 after oom:"),
    ],
)
def test_parse_rejects_what_it_cannot_do(text, message):
    with pytest.raises(ValueError) as caught:
        parse(text)
    assert message in str(caught.value) and ENV in str(caught.value)


def test_injector_takes_only_its_stage(monkeypatch):
    monkeypatch.setenv(ENV, "decode:raise:a;denoise:raise:b;denoise:nan:c")
    injector = FaultInjector("denoise")
    assert [f.arg for f in injector.faults] == ["b", "c"]
    injector.before_call(["a", "x"])  # decode's fault: nothing happens here
    with pytest.raises(RuntimeError, match="injected fault for row 'b'"):
        injector.before_call(["x", "b"])
    assert injector.poisoned("c") and not injector.poisoned("b")


def test_unset_variable_injects_nothing(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    injector = FaultInjector("decode")
    injector.before_call(["anything"])
    injector.model_call()
    assert injector.faults == [] and forwarded_env() == {}


def test_out_of_memory_is_raised_by_the_first_n_model_calls(monkeypatch):
    import torch

    monkeypatch.setenv(ENV, "decode:oom:2")
    injector = FaultInjector("decode")
    injector.before_call(["a"])  # not a model call
    for _ in range(2):
        with pytest.raises(torch.OutOfMemoryError):
            injector.model_call()
    injector.model_call()
    injector.model_call()
    assert injector.ooms_raised == 2
    monkeypatch.setenv(ENV, "decode:oom")  # no count: once
    injector = FaultInjector("decode")
    with pytest.raises(torch.OutOfMemoryError):
        injector.model_call()
    injector.model_call()


def test_sleep_slows_every_call(monkeypatch):
    slept = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    monkeypatch.setenv(ENV, "encode:sleep:0.25")
    injector = FaultInjector("encode")
    injector.before_call(["a"])
    injector.before_call([])
    assert slept == [0.25, 0.25]


def test_the_variable_is_forwarded_to_the_actors(monkeypatch):
    monkeypatch.setenv(ENV, "denoise:sleep:1")
    assert forwarded_env() == {ENV: "denoise:sleep:1"}


# --------------------------------------------------------------------------------------------
# stage workers around a fake family
# --------------------------------------------------------------------------------------------


class FakeFamily:
    """Deterministic stand-in: latents from the seed, frames from the latents' mean."""

    is_video = False
    has_audio = False
    extra_parameters: dict = {}
    extra_latent_columns: tuple = ()

    def __init__(self) -> None:
        self.decode_calls: list[int] = []
        self.low_memory = False

    def denoise_group_key(self, request):
        return (request.height, request.width)

    def conditioning_columns(self):
        return ("prompt_embeds",)

    def denoise(self, requests, conditioning, noise=None):
        assert all(value.shape == (3, 4) for value in conditioning["prompt_embeds"])
        return [np.full((4, 2, 2), r.seed % 7, dtype=np.float32) for r in requests]

    def decode(self, latents, requests):
        self.decode_calls.append(len(latents))
        values = latents.mean(axis=(1, 2, 3)) / 10
        return np.broadcast_to(values[:, None, None, None, None], (len(latents), 1, 8, 8, 3)).astype(np.float32)

    def low_memory_decode(self, on: bool, latent_size=None) -> None:
        self.low_memory = on


class NullBackend:
    def __getattr__(self, name):
        return lambda *args: None


def request_batch(ids: list[str], failed: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    from latentmill.rows import empty_request_columns

    batch = empty_request_columns(len(ids))
    for i, row_id in enumerate(ids):
        batch[schema.ID][i] = row_id
        batch[schema.PROMPT][i] = f"prompt {row_id}"
        batch[schema.NEGATIVE_PROMPT][i] = ""
        batch[schema.SEED][i] = i + 1
        batch[schema.STEPS][i] = 2
        batch[schema.GUIDANCE][i] = 1.0
        batch[schema.HEIGHT][i] = batch[schema.WIDTH][i] = 8
        batch[schema.NUM_FRAMES][i] = 1
        if row_id in (failed or {}):
            batch[schema.ERROR_STAGE][i] = "validate"
            batch[schema.ERROR_MESSAGE][i] = failed[row_id]
    return batch


def make_worker(cls, monkeypatch, fault_text: str, **attributes):
    from latentmill.metrics import StageMetrics

    monkeypatch.setenv(ENV, fault_text)
    worker = cls.__new__(cls)  # skip __init__: no model to load
    worker.family = FakeFamily()
    worker.faults = FaultInjector(cls.stage)
    worker.metrics = StageMetrics(cls.stage, "fake", backend=NullBackend())
    for name, value in attributes.items():
        setattr(worker, name, value)
    return worker


def denoise_worker(monkeypatch, fault_text=""):
    from latentmill.actors.stages import DenoiseWorker

    return make_worker(DenoiseWorker, monkeypatch, fault_text, columns=("prompt_embeds",), expert=None)


def decode_worker(monkeypatch, tmp_path, fault_text=""):
    from latentmill.actors.stages import DecodeWorker
    from latentmill.io import storage

    fs, root = storage.resolve(str(tmp_path / "out"))
    return make_worker(DecodeWorker, monkeypatch, fault_text, fs=fs, root=root, output_uri=str(tmp_path / "out"),
                       image_format="png", video_format="mp4", low_memory=False,
                       latents_metadata=None, media_folder="media", reject_blank=False, memory_plan=None, clip=None,
                       clip_settings=None, png_compress_level=1)


def denoised(ids, monkeypatch, fault_text="", failed=None):
    batch = request_batch(ids, failed)
    size = len(ids)
    batch["prompt_embeds"] = np.array([tensors.pack(np.zeros((3, 4), dtype=np.float32))] * size, dtype=object)
    return denoise_worker(monkeypatch, fault_text)(batch)


def outcomes(out) -> dict[str, tuple[str, str, str]]:
    return {str(i): (s, t, m) for i, s, t, m in zip(out[schema.ID], out[schema.ERROR_STAGE], out[schema.ERROR_TYPE],
                                                  out[schema.ERROR_MESSAGE])}


def test_denoise_raise_and_nan_fail_only_their_rows(monkeypatch):
    out = denoised(["a", "b", "c", "d"], monkeypatch, "denoise:raise:b;denoise:nan:c")
    result = outcomes(out)
    assert result["b"] == ("denoise", "RuntimeError", "injected fault for row 'b'")
    assert result["c"][:2] == ("denoise", "FloatingPointError")
    assert "non-finite latents for row 'c'" in result["c"][2]
    assert result["a"] == result["d"] == ("", "", "")
    latents = out[schema.LATENTS]  # failed rows carry a small placeholder of the same rank
    assert [np.shape(latents[i]) for i in range(4)] == [(4, 2, 2), (1, 1, 1), (1, 1, 1), (4, 2, 2)]
    assert np.isfinite(latents[0]).all() and np.isfinite(latents[3]).all()


def test_conditioning_goes_on_from_denoise_and_decode_only_where_the_gate_may_need_it(monkeypatch, tmp_path):
    """"rejected": only the row with NaN latents keeps its conditioning; "all": healthy rows too, and the
    decode stage empties it on every row but the gate's rejections (NaN latents, a blank image)."""
    from latentmill.actors.stages import DenoiseWorker

    def kept(out) -> dict[str, bool]:
        flags = {str(i): bool(k) for i, k in zip(out[schema.ID], out[schema.CONDITIONING_KEPT])}
        assert all(bool(value) == flags[str(i)] for i, value in zip(out[schema.ID], out["prompt_embeds"]))
        return flags

    ids = ["a", "b", "c", "d"]
    faults = "denoise:raise:b;denoise:nan:c"
    embeds = np.array([tensors.pack(np.zeros((3, 4), dtype=np.float32))] * 4, dtype=object)
    batch = request_batch(ids) | {"prompt_embeds": embeds}
    rejected = make_worker(DenoiseWorker, monkeypatch, faults, columns=("prompt_embeds",), expert=None,
                           forward_conditioning="rejected")(batch)
    assert kept(rejected) == {"a": False, "b": False, "c": True, "d": False}
    forwarded = make_worker(DenoiseWorker, monkeypatch, faults, columns=("prompt_embeds",), expert=None,
                            forward_conditioning="all")(batch)
    assert kept(forwarded) == {"a": True, "b": False, "c": True, "d": True}
    worker = decode_worker(monkeypatch, tmp_path)
    worker.keep_conditioning_for = frozenset({("denoise", "FloatingPointError"), ("decode", "BlankImage")})
    decoded = worker(forwarded)  # a and d are written: their conditioning goes no further
    assert outcomes(decoded)["a"] == outcomes(decoded)["d"] == ("", "", "")
    assert kept(decoded) == {"a": False, "b": False, "c": True, "d": False}
    worker.reject_blank = True  # (the fake family's images are all of one colour)
    decoded = worker(forwarded)
    assert outcomes(decoded)["a"][:2] == outcomes(decoded)["d"][:2] == ("decode", "BlankImage")
    assert kept(decoded) == {"a": True, "b": False, "c": True, "d": True}
    assert "prompt_embeds" not in denoised(ids, monkeypatch)  # no gate asks for it: dropped as before


def test_rows_that_already_failed_pass_through_untouched(monkeypatch):
    out = denoised(["a", "b"], monkeypatch, failed={"a": "prompt is null"})
    assert outcomes(out)["a"] == ("validate", "", "prompt is null")
    assert outcomes(out)["b"] == ("", "", "")


def decode(monkeypatch, tmp_path, fault_text, ids=("a", "b", "c", "d")):
    latents = denoised(list(ids), monkeypatch)
    worker = decode_worker(monkeypatch, tmp_path, fault_text)
    return worker, worker(latents)


def assert_written(out, tmp_path, ids):
    for i, row_id in enumerate(out[schema.ID]):
        if row_id not in ids:
            assert out[schema.OUTPUT_URI][i] == ""
            continue
        data = (tmp_path / "out" / "media" / f"{row_id}.png").read_bytes()
        assert out[schema.OUTPUT_URI][i] == str(tmp_path / "out" / "media" / f"{row_id}.png")
        assert out[schema.SHA256][i] == hashlib.sha256(data).hexdigest() and out[schema.BYTES][i] == len(data)
    assert sorted(p.name for p in (tmp_path / "out" / "media").iterdir()) == sorted(f"{i}.png" for i in ids)


def test_decode_out_of_memory_once_retries_the_batch_with_tiled_decoding(monkeypatch, tmp_path):
    worker, out = decode(monkeypatch, tmp_path, "decode:oom:1")
    assert set(out[schema.ERROR_STAGE]) == {""}
    assert worker.family.low_memory and worker.low_memory
    assert worker.family.decode_calls == [4]  # the tiled retry of the whole batch succeeded
    assert_written(out, tmp_path, {"a", "b", "c", "d"})


def test_decode_out_of_memory_twice_then_row_by_row(monkeypatch, tmp_path):
    worker, out = decode(monkeypatch, tmp_path, "decode:oom:2")
    assert set(out[schema.ERROR_STAGE]) == {""}
    assert worker.family.low_memory and worker.family.decode_calls == [1, 1, 1, 1]
    assert_written(out, tmp_path, {"a", "b", "c", "d"})


def test_decode_out_of_memory_that_persists_fails_one_row(monkeypatch, tmp_path):
    _, out = decode(monkeypatch, tmp_path, "decode:oom:3")
    result = outcomes(out)
    assert result["a"] == ("decode", "OutOfMemoryError", "injected out-of-memory error")
    assert result["b"] == result["c"] == result["d"] == ("", "", "")
    assert_written(out, tmp_path, {"b", "c", "d"})


def test_decode_raise_fails_one_row_and_its_batch_mates_are_written(monkeypatch, tmp_path):
    _, out = decode(monkeypatch, tmp_path, "decode:raise:c")
    assert outcomes(out)["c"] == ("decode", "RuntimeError", "injected fault for row 'c'")
    assert_written(out, tmp_path, {"a", "b", "d"})


def test_fatal_storage_error_stops_the_batch_instead_of_failing_rows(monkeypatch, tmp_path):
    from latentmill.io import storage

    def denied(fs, path, data, **kwargs):
        error = storage.StorageError(f"Access denied writing {path}")
        error.fatal = True
        raise error

    latents = denoised(["a", "b"], monkeypatch)
    worker = decode_worker(monkeypatch, tmp_path)
    monkeypatch.setattr(storage, "put_bytes", denied)
    with pytest.raises(storage.StorageError, match="Access denied"):
        worker(latents)


def test_non_fatal_storage_error_is_a_row_error(monkeypatch, tmp_path):
    from latentmill.io import storage

    real = storage.put_bytes

    def flaky(fs, path, data, **kwargs):
        if path.endswith("/b.png"):
            raise storage.StorageError(f"Storage unavailable while writing {path}: gave up after 6 attempt(s)")
        return real(fs, path, data, **kwargs)

    latents = denoised(["a", "b", "c"], monkeypatch)
    worker = decode_worker(monkeypatch, tmp_path)
    monkeypatch.setattr(storage, "put_bytes", flaky)
    out = worker(latents)
    assert outcomes(out)["b"][:2] == ("decode", "StorageError")
    assert_written(out, tmp_path, {"a", "c"})


# --------------------------------------------------------------------------------------------
# a model that cannot load; the error the driver reports
# --------------------------------------------------------------------------------------------


class UnloadableModel:
    path = "/models/broken"

    def family(self):
        raise OSError("Unable to load weights from checkpoint file for '/models/broken/unet/x.safetensors'")


def test_a_stage_that_cannot_load_the_model_names_the_stage_and_the_model(monkeypatch):
    from latentmill.actors.stages import DenoiseWorker
    from latentmill.models import ModelError

    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ModelError) as caught:
        DenoiseWorker(UnloadableModel(), num_gpus=0, dtype="float32", torch_threads=1)
    assert str(caught.value) == (
        "the denoise stage could not load the model /models/broken: OSError: Unable to load weights from "
        "checkpoint file for '/models/broken/unet/x.safetensors'"
    )


def test_the_reported_cause_skips_ray_datas_empty_markers():
    from latentmill.pipelines.job import _root_cause

    marker = type("SystemException", (Exception,), {"__module__": "ray.data.exceptions"})
    actor_died = RuntimeError("The actor died ...\nlatentmill.models.ModelError: the denoise stage could not load")
    actor_died.__cause__ = marker()
    assert _root_cause(actor_died) is actor_died

    class TaskError(Exception):  # like RayTaskError: the user's exception in .cause
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    inner = ValueError("the real problem")
    assert _root_cause(TaskError(inner)) is inner
