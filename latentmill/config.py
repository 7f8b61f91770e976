"""The job schema: one validated place for everything a run can be told.

A job file (YAML) fills this schema; CLI flags override the few fields people change per run. Every
field has a default a user can read here, so an empty job file runs the built-in tiny image model on a
local Ray instance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

DType = Literal["float32", "float16", "bfloat16"]


class ConfigError(Exception):
    """A job configuration that cannot run; the message names the field and the fix."""


# Ray's resource quantities: at most 1e14, fractions no finer than 0.0001 (ray_option_utils).
_MAX_RESOURCE = 1e14
_RESOURCE_STEP = 1e-4
_RAY_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def _not_bool(value: Any, what: str) -> Any:
    """Reject true/false where a number is meant (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)):
        raise ValueError(f"{what} must be a number, not {str(value).lower()}")
    return value


def _resource_quantity(value: float | None, what: str) -> float | None:
    """A quantity Ray accepts for a task or actor: finite, >= 0, 0 or at least 0.0001."""
    if value is None:
        return value
    if not math.isfinite(value) or value < 0 or value > _MAX_RESOURCE:
        raise ValueError(f"{what} must be a finite number between 0 and {_MAX_RESOURCE:g}, got {value}")
    if 0 < value < _RESOURCE_STEP:
        raise ValueError(f"{what} must be 0 or at least {_RESOURCE_STEP} (Ray's finest fraction), got {value}")
    return value


def _finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageSettings(_Strict):
    """Credentials and endpoint for object storage (input, output, and model URIs).

    Left empty, s3fs uses the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) or the instance's role.
    """

    endpoint_url: str | None = None
    key: str | None = None
    secret: SecretStr | None = None
    region: str | None = None
    anon: bool = False

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url must be a URL starting with http:// or https://, got {value!r} "
                             "(e.g. http://127.0.0.1:9000)")
        return value

    def fsspec_options(self) -> dict[str, Any]:
        """fsspec storage options for s3:// URIs; the secret is revealed only here."""
        options: dict[str, Any] = {}
        if self.anon:
            options["anon"] = True
        if self.key:
            options["key"] = self.key
        if self.secret:
            options["secret"] = self.secret.get_secret_value()
        client_kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return options


class InputSettings(_Strict):
    uri: str = Field("", description="Parquet file, folder, glob or URI of the prompt table.")
    prompt_column: str = "prompt"
    id_column: str = "id"
    limit: int | None = Field(None, ge=1, description="Use only the first N rows.")
    samples_per_prompt: int = Field(
        1, ge=1, description="Outputs per row; sample k gets id '<id>-s<k>' and its own derived seed. The row's "
        "prompt is encoded once for all of them.",
    )
    keep_columns: tuple[str, ...] = Field(
        (), description="Input columns copied into every manifest row of the row's outputs (e.g. a license or "
        "source URL), as they are.",
    )

    @field_validator("prompt_column", "id_column")
    @classmethod
    def _check_column(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a column name must not be empty")
        return value

    @field_validator("keep_columns", mode="before")
    @classmethod
    def _split_columns(cls, value: Any) -> Any:
        return tuple(name.strip() for name in value.split(",") if name.strip()) if isinstance(value, str) else value

    @field_validator("keep_columns")
    @classmethod
    def _check_kept(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("keep_columns names a column twice")
        return value


class OutputSettings(_Strict):
    uri: str = Field("", description="Local folder or URI that receives media/, manifest/, errors/.")
    image_format: Literal["png", "jpeg", "webp"] = "png"
    video_format: Literal["mp4", "apng"] = "mp4"
    png_compress_level: int = Field(
        1, ge=0, le=9, description="zlib level of PNG and APNG files, 0-9: 1 costs 1.3-8x less CPU than 6 for files "
        "9-18% larger; PNG is lossless, so the pixels are the same at every level.",
    )
    manifest_rows_per_part: int = Field(1000, ge=1, description="Rows per manifest Parquet part.")
    manifest_flush_seconds: float = Field(
        30.0, gt=0, description="Write a manifest part at least this often, so a crash loses little."
    )
    save_latents: bool = Field(
        False, description="Also keep each row's final latents (before VAE decode) as DEST/latents/<key>.safetensors, "
        "for `latentmill decode` (another VAE, format or tiling without denoising again).",
    )
    verify_existing: Literal["sha256", "size"] = Field(
        "sha256", description="How a resumed run checks the objects a manifest names: re-hash, or size only."
    )
    layout: Literal["files", "webdataset", "parquet"] = Field(
        "files", description="files: one object per sample under media/ and a manifest/ of Parquet parts; "
        "webdataset: tar shards under shards/ with a sidecar Parquet each; parquet: Parquet shards under shards/ "
        "with the media bytes in an `image` column (README, 'Synthesizing a dataset').",
    )
    shard_size: int = Field(1000, ge=1, description="Samples per shard (webdataset and parquet layouts).")

    @field_validator("manifest_flush_seconds")
    @classmethod
    def _check_flush(cls, value: float) -> float:
        return _finite(value, "manifest_flush_seconds")


class ModelSettings(_Strict):
    path: str = Field("builtin:tiny-image", description="builtin:NAME, a local diffusers folder or a URI.")
    allow_pickle: bool = Field(False, description="Allow .bin/.ckpt pickle weights (unsafe).")


class GenerationDefaults(_Strict):
    """Defaults for every row; per-row columns of the same name override them.

    None means: take the model's own default (the built-in models and each family define one).
    """

    negative_prompt: str = ""
    seed: int = Field(0, ge=0, lt=2**63,
                      description="Job seed; a row without a seed gets one derived from it and its id.")
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    num_frames: int | None = Field(None, ge=1)
    fps: float | None = Field(None, gt=0)
    model_parameters: dict[str, float | int | str] = Field(
        default_factory=dict,
        description="The model family's extra per-row parameters (README, 'Model families'), e.g. "
        "{true_cfg_scale: 4.0}; a prompt-table column of the same name overrides them per row.",
    )

    @field_validator("guidance_scale", "fps")
    @classmethod
    def _check_finite(cls, value: float | None, info) -> float | None:
        return _finite(value, info.field_name)


class Limits(_Strict):
    """Per-row requests beyond these become error rows instead of exhausting a device."""

    max_height: int = Field(2048, ge=8)
    max_width: int = Field(2048, ge=8)
    max_frames: int = Field(257, ge=1)
    max_steps: int = Field(500, ge=1)
    max_prompt_chars: int = Field(10_000, ge=1)


class PoolSettings(_Strict):
    """One stage's actor pool: how many actors, what each gets, how big a batch."""

    size: int | tuple[int, int] = Field(1, description="Fixed pool size N, or [min, max] to autoscale.")
    batch_size: int = Field(4, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources to target.")
    dtype: DType = "float32"
    torch_threads: int | None = Field(None, ge=1, description="Default: max(1, round(num_cpus)).")

    @field_validator("size", "batch_size", "torch_threads", mode="before")
    @classmethod
    def _check_whole(cls, value: Any, info) -> Any:
        return _not_bool(value, info.field_name)

    @field_validator("num_cpus", "num_gpus")
    @classmethod
    def _check_quantity(cls, value: float, info) -> float:
        return _resource_quantity(value, info.field_name)

    @field_validator("resources")
    @classmethod
    def _check_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, quantity in value.items():
            if not name.strip():
                raise ValueError("a resource name must not be empty")
            if name in _RAY_BUILTIN_RESOURCES:
                raise ValueError(f"{name!r} is one of Ray's own resources; set it with num_cpus/num_gpus, "
                                 "not resources")
            _resource_quantity(quantity, f"resource {name!r}")
        return value

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("pool size must be >= 1")
        else:
            low, high = value
            if low < 1 or high < low:
                raise ValueError("pool size [min, max] needs 1 <= min <= max")
        return value

    @property
    def min_size(self) -> int:
        return self.size if isinstance(self.size, int) else self.size[0]

    @property
    def max_size(self) -> int:
        return self.size if isinstance(self.size, int) else self.size[1]


class DecodePeakMemory(_Strict):
    """The VAE decode's peak memory above its loaded weights, as `fixed_bytes + bytes_per_latent_element x`
    the latent elements of a decode call; measured by `latentmill plan` at two latent sizes."""

    fixed_bytes: float = Field(ge=0)
    bytes_per_latent_element: float = Field(ge=0)
    dtype: DType = Field(description="The decode dtype it was measured in (other dtypes scale by element size).")
    device: str = Field("", description="Where it was measured (cpu, cuda).")


class DecodePoolSettings(PoolSettings):
    """The decode pool, plus what decides its decode mode up front (full, sliced or tiled)."""

    memory_budget_gb: float | None = Field(
        None, gt=0, description="Memory one decode actor may use, VAE weights included. Default: the actor's share "
        "of its GPU (num_gpus x device memory); none on CPUs (then only an out-of-memory error switches to tiling).",
    )
    peak_memory: DecodePeakMemory | None = Field(
        None, description="The decode's measured peak memory (written by `latentmill plan` into the plan file). "
        "With a budget, a batch whose estimate exceeds it is decoded row by row, or tiled, from the start.",
    )


def _default_pools() -> dict[str, PoolSettings]:
    return {
        "encode": PoolSettings(batch_size=8, num_cpus=0.25),
        "denoise": PoolSettings(batch_size=4, num_cpus=1.0),
        "decode": DecodePoolSettings(batch_size=4, num_cpus=0.5),
    }


class DenoiseOptions(_Strict):
    """Speed options of the denoise pool. Off by default: each changes the numbers a little, so the
    manifest names the ones that made a row (column `denoise_options`)."""

    compile: bool = Field(
        False, description="torch.compile the denoiser once per actor: only its repeated blocks where the model "
        "names them (diffusers' regional compile_repeated_blocks, far quicker to compile), else the whole model. "
        "Pays on GPUs after the first batches; the first batch of each shape waits for the compiler.",
    )
    attention_backend: str | None = Field(
        None, description="diffusers attention backend for the denoiser (set_attention_backend), e.g. "
        "'_native_cudnn', 'flash' (needs flash-attn); models on diffusers' attention dispatcher only.",
    )

    @field_validator("attention_backend")
    @classmethod
    def _check_backend(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("attention_backend must be a backend name or null")
        return value.strip().lower() if value else None

    def describe(self) -> str | None:
        """`compile,attention_backend=NAME` for the manifest; None when every option is off."""
        parts = (["compile"] if self.compile else []) + \
            ([f"attention_backend={self.attention_backend}"] if self.attention_backend else [])
        return ",".join(parts) or None


class StageSettings(_Strict):
    encode: PoolSettings = Field(default_factory=lambda: _default_pools()["encode"])
    denoise: PoolSettings = Field(default_factory=lambda: _default_pools()["denoise"])
    decode: DecodePoolSettings = Field(default_factory=lambda: _default_pools()["decode"])
    conditioning_dtype: Literal["encoder", "float32"] = Field(
        "encoder", description="dtype of the embeddings sent from the encode pool to the denoise pool: the "
        "encoder's own (half the bytes of float32 at float16/bfloat16), or float32.",
    )
    denoise_options: DenoiseOptions = Field(default_factory=DenoiseOptions)
    denoise_2: PoolSettings | None = Field(
        None, description="A second denoise pool, for a model with two denoising experts (Wan 2.2 A14B): `denoise` "
        "then holds only the first (high-noise) expert and runs the steps above the boundary, this pool the second "
        "(low-noise) expert and the rest, each pool sized on its own. Unset: each denoise actor holds both.",
    )

    def items(self) -> list[tuple[str, PoolSettings]]:
        """Every actor pool, in the order rows pass them (the second denoise pool where there is one)."""
        second = [("denoise_2", self.denoise_2)] if self.denoise_2 is not None else []
        return [("encode", self.encode), ("denoise", self.denoise), *second, ("decode", self.decode)]


class RaySettings(_Strict):
    address: str | None = Field(None, description="Existing cluster address; None starts Ray locally.")
    local_num_cpus: float | None = Field(
        None,
        description="Logical CPUs of a locally started Ray; default max(4, cores, the pools' minimum plus a read "
        "task) so three pools and the read tasks fit on a small machine without deadlock.",
    )
    local_num_gpus: float | None = None
    progress_bars: bool = True
    read_ahead_rows: int | None = Field(
        None, ge=1,
        description="Most rows read and validated ahead of the first actor pool; the read waits beyond it, so "
        "the driver's memory does not grow with the table. Default: four batches per actor of the first pool, "
        "at least 1,000.",
    )
    max_lineage_mb: int = Field(
        4, ge=1,
        description="Most memory the driver spends on Ray's lineage of finished tasks (Ray's own default is 1 GB, "
        "which a job of millions of rows fills: the encode tasks' specifications carry their prompt blocks). "
        "Ray drops all of it each time it reaches the cap, so the driver's memory rises and falls by this much. "
        "Applied when latentmill starts or joins Ray; RAY_max_lineage_bytes in the environment wins. Lower "
        "means an intermediate block lost with a node can be rebuilt from less far back (else the job stops "
        "and the same command resumes it).",
    )
    pending_timeout_s: float = Field(
        600.0, gt=0,
        description="Stop the job when a pool has had no actor alive this long while Ray cannot place one "
        "(or nothing moved while nothing ran), instead of waiting forever for resources.",
    )

    @field_validator("local_num_cpus", "local_num_gpus", mode="before")
    @classmethod
    def _check_number(cls, value: Any, info) -> Any:
        return _not_bool(value, info.field_name)

    @field_validator("local_num_cpus", "local_num_gpus")
    @classmethod
    def _check_local(cls, value: float | None, info) -> float | None:
        least = 1 if info.field_name == "local_num_cpus" else 0
        what = "CPUs" if least else "GPUs"
        if value is None:
            return value
        if not math.isfinite(value) or value != int(value) or not least <= value <= _MAX_RESOURCE:
            raise ValueError(f"{info.field_name} must be a whole number >= {least} (the {what} of the Ray started "
                             f"on this machine), or null for the default; got {value!r}")
        return value


class MetricsSettings(_Strict):
    """Prometheus metrics of a run (see README.md, "Monitoring")."""

    port: int | None = Field(None, ge=0, le=65535,
                             description="Serve the driver's metrics at http://ADDRESS:PORT/metrics during the "
                             "run (0: any free port); None: don't serve.")
    address: str = Field("127.0.0.1", description="Address the driver's metrics endpoint binds to.")
    pushgateway: str | None = Field(None, description="Push the run's final metrics to this Prometheus "
                                    "Pushgateway URL at the end.")
    job_name: str = Field("latentmill", min_length=1,
                          description="The `job` label of every latentmill metric, and the Pushgateway job.")


class InterpolateSettings(_Strict):
    """An interpolation job (`latentmill interpolate`): defaults of a keyframe table's transitions."""

    frames: int = Field(16, ge=2, description="Frames per transition (a keyframe row's `frames` overrides it).")
    fps: float = Field(8.0, gt=0, description="Frame rate of the transition videos (`fps` column overrides it).")
    easing: Literal["linear", "ease-in-out"] = Field("linear", description="How t advances over the frames.")


class DecodeSettings(_Strict):
    """A decode job (`latentmill decode`): decode the saved latents of an earlier run, no denoising."""

    latents: str = Field(description="Output folder or URI of a run made with output.save_latents: true.")
    tiling: bool = Field(False, description="Tiled and sliced VAE decoding from the start (less memory, slower).")


class ClipScoreSettings(_Strict):
    """The CLIP-score gate: how well a sample's decoded frames match its prompt (models.clip_score)."""

    model: str = Field(description="Folder or URI (s3://...) of a CLIP model: a transformers CLIPModel and its "
                       "CLIPProcessor saved with save_pretrained, or a diffusers pipeline's CLIP (subfolders "
                       "text_encoder, image_encoder, tokenizer, and feature_extractor or image_processor).")
    min: float | None = Field(None, description="Regenerate a sample scoring below this (100 x cosine "
                              "similarity); null only records each sample's score in the clip_score column.")

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("quality.clip_score.model must be a folder or URI of a CLIP model")
        return value

    @field_validator("min")
    @classmethod
    def _check_min(cls, value: float | None) -> float | None:
        return _finite(value, "quality.clip_score.min")


class QualitySettings(_Strict):
    """A quality gate: a rejected sample is generated again with the next seed derived from its last one."""

    reject_nonfinite: bool = Field(True, description="Regenerate a sample whose latents are NaN or infinite "
                                   "(otherwise an error row).")
    reject_blank: bool = Field(False, description="Regenerate a sample whose decoded frames are blank (one flat "
                               "colour).")
    clip_score: ClipScoreSettings | None = Field(None, description="Score each sample with a CLIP model against "
                                                 "its prompt; regenerate those below `min`.")
    max_attempts: int = Field(3, ge=1, description="Attempts per sample, the first included; past them the sample "
                              "is an error row.")
    near_duplicate_distance: int = Field(4, ge=0, le=12, description="Two samples whose perceptual hashes differ "
                                         "in at most this many of 64 bits count as a near-duplicate pair in "
                                         "stats.json (counted, never rejected). Counting compares hashes that "
                                         "share one of distance+1 bands, so its cost grows with the distance.")

    @property
    def enabled(self) -> bool:
        return bool(self.checks())

    def checks(self) -> set[str]:
        """The checks that reject samples (clip_score only with a `min`)."""
        on = {"reject_nonfinite": self.reject_nonfinite, "reject_blank": self.reject_blank,
              "clip_score": self.clip_score is not None and self.clip_score.min is not None}
        return {check for check, rejects in on.items() if rejects}

    def decisive(self) -> dict[str, Any] | None:
        """What of the gate decides which samples the output keeps, for the job fingerprint; None when that
        is what any run keeps (a sample with NaN latents is never kept, gate or not; the near-duplicate
        distance changes no sample)."""
        if not self.reject_blank and self.clip_score is None:
            return None
        return self.model_dump(mode="json", exclude={"reject_nonfinite", "near_duplicate_distance"})


def parse_budget(value: str | float | int | None) -> float | int | None:
    """`10` -> 10 rows, `0.05` or `5%` -> that fraction of the rows read."""
    if value is None or isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100
    number = float(text)
    return int(number) if number.is_integer() and number >= 1 else number


class CacheSettings(_Strict):
    embeddings: str | None = Field(
        None, description="Folder or URI (s3://...) of a prompt-embedding cache shared across runs: rows whose "
        "embeddings are there skip the text encoder, and an encode actor loads its encoder only at its first "
        "uncached row. Keyed by the text encoders' content, the prompt, the negative prompt where guidance uses "
        "it, the per-row parameters and the dtypes; it never changes an output. Uses storage: credentials.",
    )

    @field_validator("embeddings")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("cache.embeddings must be a folder or URI, or null")
        return value


class JobConfig(_Strict):
    input: InputSettings = Field(default_factory=InputSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    limits: Limits = Field(default_factory=Limits)
    stages: StageSettings = Field(default_factory=StageSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    decode: DecodeSettings | None = Field(None, description="Set by `latentmill decode`: decode saved latents.")
    interpolate: InterpolateSettings | None = Field(None, description="Set by `latentmill interpolate`.")
    quality: QualitySettings = Field(default_factory=QualitySettings)
    max_failed: int | float | None = Field(
        None,
        description="Error budget: a count (10) or a fraction of rows read (0.05); past it the job exits 3.",
    )

    @field_validator("max_failed", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> Any:
        try:
            budget = parse_budget(value)
        except ValueError:
            raise ValueError("max_failed must be a count (10), a fraction (0.05) or a percentage ('5%')") from None
        if budget is not None and (not math.isfinite(budget) or budget < 0
                                   or (isinstance(budget, float) and budget >= 1)):
            raise ValueError("max_failed must be a count >= 0 or a fraction below 1")
        return budget

    def budget_exceeded(self, failed: int, read: int) -> bool:
        if self.max_failed is None:
            return False
        if isinstance(self.max_failed, float):
            return failed > self.max_failed * read
        return failed > self.max_failed

    @model_validator(mode="after")
    def _check_uris(self) -> JobConfig:
        if self.decode is not None and not self.input.uri:  # a decode job reads the source run's manifest
            self.input.uri = self.decode.latents.rstrip("/") + "/manifest"
        if not self.input.uri:
            raise ValueError("input.uri is required (or --input)")
        if not self.output.uri:
            raise ValueError("output.uri is required (or --output)")
        return self

    def public_dict(self) -> dict[str, Any]:
        """The config as plain data with secrets masked, for summaries and logs."""
        return self.model_dump(mode="json")


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid job configuration ({source}):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    lines.append("Fix the field(s) above; `latentmill run --help` and the README list every field.")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read a YAML job file (optional), apply overrides (nested dict), validate.

    Raises ConfigError with every bad field named.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        import yaml

        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read job file {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"job file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"job file {path} must be a mapping of sections (input, output, model, ...)")
        data = loaded
    if overrides:
        data = _deep_merge(data, overrides)
        source = f"{source} + command-line flags"
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
