"""Model families and model resolution.

`resolve_model` turns what the user wrote (`builtin:tiny-image`, a folder, an s3:// URI) into a local
diffusers folder plus the family adapter that can run it. Families are discovered from the modules of
this package, so a new family is one new file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

from latentmill.io.hidden import HiddenOptions
from latentmill.models.base import Family

BUILTIN_PREFIX = "builtin:"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class ModelError(Exception):
    """A model that cannot be used; the message says why and what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("LATENTMILL_CACHE", Path.home() / ".cache" / "latentmill"))


def families() -> dict[str, type[Family]]:
    """diffusers pipeline class name -> family adapter, from every module in this package."""
    found: dict[str, type[Family]] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name in {"base", "tiny", "tiny_builds"}:  # not families
            continue
        importlib.import_module(f"{__name__}.{module.name}")
    for family in _subclasses(Family):
        for class_name in getattr(family, "pipeline_classes", ()):
            found[class_name] = family
    return found


def _subclasses(cls: type) -> list[type]:
    result = []
    for sub in cls.__subclasses__():
        result.append(sub)
        result.extend(_subclasses(sub))
    return result


@dataclass(frozen=True)
class ModelRef:
    """Everything a stage actor needs to find and load the model; small and picklable."""

    path: str  # as the user wrote it
    pipeline_class: str
    content_hash: str
    storage_options: Any = field(default=None, repr=False)  # HiddenOptions: never printed

    def family(self) -> Family:
        local = materialize(self.path, self.storage_options.reveal() if self.storage_options else {})
        return families()[self.pipeline_class](local)


def materialize(path: str, storage_options: dict | None = None,
                marker: str | tuple[str, ...] = "model_index.json") -> Path:
    """A local folder holding the checkpoint: built-in ones are built on first use, URIs are copied (a copy
    counts as complete when it has `marker`, the file the checkpoint is recognised by, or one of them)."""
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX):]
        if name.startswith("sim-"):
            from latentmill.models.simulated import ensure_simulated as ensure
        else:
            from latentmill.models.tiny import ensure_builtin as ensure
        try:
            return ensure(name)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    if "://" in path and not path.startswith("file://"):
        return _download(path, storage_options or {}, marker)
    return Path(path.removeprefix("file://")).expanduser()


def _download(uri: str, storage_options: dict, marker: str | tuple[str, ...] = "model_index.json") -> Path:
    import fsspec

    target = cache_root() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if any((target / name).exists() for name in ((marker,) if isinstance(marker, str) else marker)):
        return target
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        fs, root = fsspec.core.url_to_fs(uri, **storage_options)
        fs.get(root.rstrip("/") + "/", str(partial), recursive=True)
    except Exception as exc:  # noqa: BLE001 - fsspec/s3fs/botocore raise many types; name the model
        import shutil

        from latentmill.io.storage_errors import redact

        shutil.rmtree(partial, ignore_errors=True)
        raise ModelError(redact(
            f"cannot download the model {uri!r} ({_one_line(exc)}); check the URI, the storage credentials "
            "and endpoint (storage section of the job file), or copy the checkpoint to a local folder",
            storage_options=storage_options)) from None
    try:
        os.rename(partial, target)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return target


# Component folders whose content decides prompt embeddings (text encoders, their tokenizers/processors).
ENCODING_COMPONENT_PREFIXES = ("text_encoder", "tokenizer", "processor")


def encoder_content_hash(path: str, storage_options: dict | None = None) -> str:
    """sha256 over the checkpoint's text-encoding components only: the embedding cache's model key, so a
    new denoiser or VAE for the same encoders keeps the cache."""
    local = materialize(path, storage_options)
    index = json.loads((local / "model_index.json").read_text())
    names = sorted(name for name in _components(index) if name.startswith(ENCODING_COMPONENT_PREFIXES))
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}:{_content_hash(local / name)}\n".encode())
    return digest.hexdigest()


def _content_hash(local_dir: Path) -> str:
    """sha256 over every file's relative path and content; cached by size and mtime."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    listing = json.dumps([(str(p.relative_to(local_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    cache = cache_root() / "hashes" / hashlib.sha256(f"{local_dir.resolve()}|{listing}".encode()).hexdigest()
    if cache.exists():
        return cache.read_text()
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(local_dir)).encode() + b"\0")
        try:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise ModelError(f"cannot read {path} of the model ({_one_line(exc)}); make the checkpoint's "
                             "files readable") from None
    value = digest.hexdigest()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(value)
    return value


def resolve_model(path: str, storage_options: dict | None = None, allow_pickle: bool = False) -> ModelRef:
    """Check the checkpoint on the driver, before any actor starts; raise ModelError with the fix."""
    local = materialize(path, storage_options)
    if not local.is_dir():
        raise ModelError(
            f"model {path!r} does not exist (looked for folder {local}); pass a diffusers checkpoint folder, "
            "an s3:// URI of one, or builtin:tiny-image / builtin:tiny-video"
        )
    index_file = local / "model_index.json"
    if not index_file.exists():
        raise ModelError(
            f"model {path!r} is not a diffusers checkpoint: {index_file} is missing. Save the pipeline with "
            "`pipe.save_pretrained(DIR)` or convert a single-file checkpoint with diffusers' conversion scripts"
        )
    try:
        index = json.loads(index_file.read_text())
        pipeline_class = index["_class_name"] if isinstance(index, dict) else None
    except (ValueError, KeyError):
        pipeline_class = None
    except OSError as exc:
        raise ModelError(f"cannot read {index_file} ({_one_line(exc)}); make the checkpoint's files readable") from None
    if not isinstance(pipeline_class, str):
        raise ModelError(f"{index_file} is not a valid model_index.json (it needs a mapping with a text "
                         "_class_name); re-save the checkpoint with save_pretrained")
    if not isinstance(index.get("_latentmill_defaults", {}), dict):
        raise ModelError(f"{index_file} is not a valid model_index.json: _latentmill_defaults must be a mapping "
                         "of generation defaults (e.g. {\"height\": 512}); fix or remove it")
    components = _components(index)
    missing = sorted(name for name in components if not (local / name).is_dir())
    if missing:
        raise ModelError(f"model {path!r} is incomplete: component folder(s) {', '.join(missing)} named in "
                         f"{index_file} are missing; copy or download the whole checkpoint")
    for name in components:  # the family reads these configs on the driver: each must be valid JSON
        for file_name in ("config.json", "scheduler_config.json"):
            problem = _json_problem(local / name / file_name, required=False)
            if problem:
                raise ModelError(f"model {path!r} is incomplete: {problem}; copy or download the whole checkpoint")
    known = families()
    if pipeline_class not in known:
        supported = sorted(name for name in known if not name.startswith("Latentmill"))
        raise ModelError(
            f"model {path!r} is a {pipeline_class}, which latentmill has no adapter for; "
            f"supported pipeline classes: {', '.join(supported)}"
        )
    family = known[pipeline_class]
    try:
        family(local)  # reads the component configs the stages will read
    except (ValueError, KeyError, TypeError, IndexError, OSError) as exc:  # a config of an unexpected shape
        raise ModelError(f"model {path!r} cannot be read as a {pipeline_class} ({_one_line(exc)}); re-save the "
                         "checkpoint with save_pretrained") from None
    pickles = [p for p in local.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        example = pickles[0].relative_to(local)
        raise ModelError(
            f"model {path!r} has pickle weights ({example}, {len(pickles)} file(s)); loading pickles can run "
            "arbitrary code. Convert them to safetensors, or set model.allow_pickle: true if you trust the source"
        )
    for name in _loaded_components(family, components):
        problem = _component_problem(local / name, components[name], allow_pickle)
        if problem:
            raise ModelError(f"model {path!r} is incomplete: component {name!r} ({components[name][1]}): "
                             f"{problem}; copy or download the whole checkpoint (or re-save it with save_pretrained)")
    return ModelRef(
        path=path,
        pipeline_class=pipeline_class,
        content_hash=_content_hash(local),
        storage_options=HiddenOptions(storage_options or {}),
    )


# --------------------------------------------------------------------------------------------
# Checkpoint completeness: what each stage loads must be there, checked before Ray starts
# --------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _components(index: dict) -> dict[str, tuple[str, str]]:
    """The checkpoint's components: name -> (library, class) for each `[library, class]` entry."""
    return {name: (spec[0], spec[1]) for name, spec in index.items()
            if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2
            and isinstance(spec[0], str) and isinstance(spec[1], str)}


def _loaded_components(family: type[Family], components: dict[str, tuple[str, str]]) -> list[str]:
    """The components the stages load: a plain family names them; a Modular Diffusers family's blocks
    would need diffusers imported on the driver (seconds), so there every component counts."""
    declared = getattr(family, "stage_components", None)
    if isinstance(declared, dict):
        names = {name for stage in declared.values() for name in stage}
        return sorted(name for name in components if name in names)
    return sorted(components)


def _component_kind(class_name: str) -> str:
    if "Scheduler" in class_name:
        return "scheduler"
    if class_name.endswith("Guidance"):  # diffusers guiders (ClassifierFreeGuidance, ...): a config only
        return "guider"
    if "Tokenizer" in class_name:
        return "tokenizer"
    if class_name.endswith(("Processor", "FeatureExtractor")):
        return "processor"
    return "model"


def _json_problem(path: Path, required: bool = True) -> str | None:
    """What is wrong with a JSON config file (missing, unreadable, not a JSON object), or None."""
    if not path.exists():
        return f"{path} is missing" if required else None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"{path} cannot be read as JSON ({_one_line(exc)})"
    if not isinstance(value, dict):
        return f"{path} is not a JSON object"
    return None


def _component_problem(folder: Path, spec: tuple[str, str], allow_pickle: bool) -> str | None:
    """Why a component cannot load (its config file or weights missing or broken), or None."""
    library, class_name = spec
    kind = _component_kind(class_name)
    if kind == "scheduler":
        return _json_problem(folder / "scheduler_config.json")
    if kind == "guider":
        return _json_problem(folder / "guider_config.json")
    if kind in ("tokenizer", "processor"):
        expected = TOKENIZER_FILES if kind == "tokenizer" else PROCESSOR_FILES
        if not any((folder / name).exists() for name in expected):
            return f"none of its files is in {folder} (expected one of {', '.join(expected)})"
        for file in sorted(folder.glob("*.json")):
            problem = _json_problem(file)
            if problem:
                return problem
        return None
    problem = _json_problem(folder / "config.json")
    if problem:
        return problem
    return _weights_problem(folder, library, allow_pickle)


def _weights_problem(folder: Path, library: str, allow_pickle: bool) -> str | None:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if allow_pickle:
        indexes += sorted(folder.glob("*.bin.index.json"))
    for index_file in indexes:
        try:
            shards = set(json.loads(index_file.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"the shard index {index_file} cannot be read ({_one_line(exc)})"
        absent = sorted(shard for shard in shards if not (folder / shard).is_file())
        if absent:
            return f"weight shard(s) {', '.join(absent)} named in {index_file} are missing"
    safetensors = sorted(folder.glob("*.safetensors"))
    for file in safetensors:
        problem = _safetensors_problem(file)
        if problem:
            return problem
    if safetensors or indexes:
        return None
    if allow_pickle and any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
        return None
    stem = "diffusion_pytorch_model" if library == "diffusers" else "model"
    return (f"its weights are missing: {folder} holds no {stem}.safetensors (nor any other .safetensors file"
            f"{' or .bin weights' if allow_pickle else ''})")


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header or length (a truncated copy), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
            if length < 2 or length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return f"the weights file {path} is truncated or not a safetensors file ({size} bytes)"
            header = json.loads(handle.read(length))
    except OSError as exc:
        return f"the weights file {path} cannot be read ({_one_line(exc)})"
    except ValueError:
        return f"the weights file {path} is damaged (its safetensors header is not valid JSON)"
    try:
        end = max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
                  default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return f"the weights file {path} is damaged (its safetensors header is not valid)"
    expected = 8 + length + end
    if size != expected:
        state = "truncated" if size < expected else "longer than its header describes"
        return f"the weights file {path} is {state}: {size} bytes, its header describes {expected}"
    return None
