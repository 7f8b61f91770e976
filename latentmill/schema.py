"""Column names and row contracts shared by every stage.

Stages address columns by these names only, never by position, so a positive prompt embedding can
never be mistaken for a negative one. No torch or ray imports here: the CLI and the unit tests use it.
"""

from __future__ import annotations

# Request columns: one generation request per input row, after validation.
ID = "id"
PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
SEED = "seed"
STEPS = "num_inference_steps"
GUIDANCE = "guidance_scale"
HEIGHT = "height"
WIDTH = "width"
NUM_FRAMES = "num_frames"
FPS = "fps"
SAMPLE_INDEX = "sample_index"  # k of N samples per prompt; every input row has exactly one sample 0
PROMPT_TRUNCATED = "prompt_truncated"
EMBEDDINGS_CACHED = "embeddings_cached"  # the row's prompt embeddings came from cache.embeddings
INPUT_ROW = "input_row"  # the raw input row as JSON, kept so an error row shows what came in
# With N samples per prompt, validation emits one row per prompt whose SAMPLES (JSON) lists each sample's
# id, seed, index and state; the encode stage encodes the prompt once and expands the row into its samples.
SAMPLES = "samples"
ATTEMPT = "attempt"  # 0, or how many times the quality gate had the sample generated again (each with a new seed)
ENCODED = "encoded"  # True on the one row whose text encoding ran; rows that reuse that encoding have False

# The request's columns and their types (rows.Request has one field per column).
REQUEST_COLUMN_TYPES: dict[str, type] = {
    ID: str,
    PROMPT: str,
    NEGATIVE_PROMPT: str,
    SEED: int,
    STEPS: int,
    GUIDANCE: float,
    HEIGHT: int,
    WIDTH: int,
    NUM_FRAMES: int,
    FPS: float,
}
REQUEST_COLUMNS = tuple(REQUEST_COLUMN_TYPES)

# Per-row columns a user may put in the prompt table to override the job's defaults; a model family
# adds its own extra parameters (models.base.Family.extra_parameters).
OVERRIDE_COLUMNS: dict[str, type] = {name: kind for name, kind in REQUEST_COLUMN_TYPES.items() if name not in (ID, PROMPT)}

# Row state carried by every row. An empty ERROR_STAGE means the row still needs work; otherwise it
# names the stage that failed it, or is ALREADY_DONE for a row a previous run completed.
ERROR_STAGE = "error_stage"
ALREADY_DONE = "already_done"
ERROR_TYPE = "error_type"
ERROR_MESSAGE = "error_message"

# Stage names, used in error rows, timings and metrics.
STAGE_VALIDATE = "validate"
STAGE_ENCODE = "encode"
STAGE_DENOISE = "denoise"
STAGE_DECODE = "decode"
STAGES = (STAGE_ENCODE, STAGE_DENOISE, STAGE_DECODE)  # the model stages, in order: one actor pool each

# What each quality gate check rejects: the stage and error type of the row it would otherwise fail.
QUALITY_REJECTIONS = {"reject_nonfinite": (STAGE_DENOISE, "FloatingPointError"),
                      "reject_blank": (STAGE_DECODE, "BlankImage"),
                      "clip_score": (STAGE_DECODE, "LowClipScore")}

# The one tensor column the generic code names: the denoiser's output. The conditioning columns between
# encode and denoise are named by the model (its text encoder's outputs), any number of them.
LATENTS = "latents"
DENOISE_2 = "denoise_2"  # the second denoise pool of a model with two experts (stages.denoise_2); its stage is denoise
# From the first to the second denoise pool: a row's latents and scheduler state at the experts' boundary.
DENOISE_HANDOVER = "denoise_handover"
INITIAL_NOISE = "initial_noise"  # optional: a row's own initial noise (interpolation), packed like conditioning
# True where a row still carries its conditioning columns past the denoise stage: a sample the quality gate
# rejected, whose next attempt then skips the encode stage (see pipelines.plan.conditioning_forwarding).
# Elsewhere those columns are empty (b""), so every batch has the same columns and types.
CONDITIONING_KEPT = "conditioning_kept"


def seconds_column(stage: str) -> str:
    return f"{stage}_seconds"


# Output columns filled by the decode stage.
OUTPUT_URI = "output_uri"
BYTES = "bytes"
SHA256 = "sha256"
MIME_TYPE = "mime_type"
DECODE_MODE = "decode_mode"  # full (the batch in one VAE call) | sliced (one row per call) | tiled (the VAE's tiling)
# A video's sound track as written into its media (null where the format has none, e.g. apng); for
# models whose videos have sound only.
AUDIO_SAMPLE_RATE = "audio_sample_rate"
AUDIO_CHANNELS = "audio_channels"
AUDIO_SECONDS = "audio_seconds"
AUDIO_COLUMNS = (AUDIO_SAMPLE_RATE, AUDIO_CHANNELS, AUDIO_SECONDS)
LATENTS_URI = "latents_uri"  # with output.save_latents: the row's saved latents (a decode job: its source)
LATENTS_SHA256 = "latents_sha256"
PHASH = "phash"  # perceptual hash (io.perceptual) of the image, or of each keyframe of a video, in hex
CLIP_SCORE = "clip_score"  # with quality.clip_score: 100 x cosine similarity of the frames and the prompt
SHARD_KEY = "key"  # a sample's name inside its shard (webdataset and parquet layouts)
SHARD_MEDIA = {"image": "image", "video": "video"}  # the parquet layout's media column, by kind of media

# One manifest row per output (order as written to Parquet); a family's extra parameters follow the
# request columns (see `manifest_columns`).
MANIFEST_COLUMNS = (
    *REQUEST_COLUMNS,
    SAMPLE_INDEX,
    PROMPT_TRUNCATED,
    EMBEDDINGS_CACHED,
    "model",
    "model_hash",
    "model_family",
    "scheduler",
    "denoise_options",  # the denoise pool's speed options that were on (compile, attention backend), else null
    OUTPUT_URI,
    BYTES,
    SHA256,
    MIME_TYPE,
    DECODE_MODE,
    PHASH,
    *(seconds_column(s) for s in STAGES),
    "latentmill_version",
    "job_fingerprint",
)

# One error row per failed input row.
ERROR_COLUMNS = (ID, SAMPLE_INDEX, INPUT_ROW, ERROR_STAGE, ERROR_TYPE, ERROR_MESSAGE, "run_id")


def manifest_columns(extra_names: tuple[str, ...] = (), latents: bool = False, audio: bool = False) -> tuple[str, ...]:
    """The manifest's columns for a model with these extra per-row parameters (and saved latents, and videos
    with sound)."""
    at = len(REQUEST_COLUMNS)
    columns = (*MANIFEST_COLUMNS[:at], *sorted(extra_names), *MANIFEST_COLUMNS[at:])
    if audio:
        after = columns.index(MIME_TYPE) + 1
        columns = (*columns[:after], *AUDIO_COLUMNS, *columns[after:])
    if latents:
        after = columns.index(MIME_TYPE) + 1
        columns = (*columns[:after], LATENTS_URI, LATENTS_SHA256, *columns[after:])
    return columns
