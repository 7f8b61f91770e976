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


def materialize(path: str, storage_options: dict | None = None) -> Path:
    """A local folder holding the checkpoint: built-in ones are built on first use, URIs are copied."""
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
        return _download(path, storage_options or {})
    return Path(path.removeprefix("file://")).expanduser()


def _download(uri: str, storage_options: dict) -> Path:
    import fsspec

    target = cache_root() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (target / "model_index.json").exists():
        return target
    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    fs.get(root.rstrip("/") + "/", str(partial), recursive=True)
    try:
        os.rename(partial, target)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return target


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
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
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
    if not isinstance(pipeline_class, str):
        raise ModelError(f"{index_file} is not a valid model_index.json (it needs a mapping with a text "
                         "_class_name); re-save the checkpoint with save_pretrained")
    missing = sorted(name for name, spec in index.items()
                     if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None
                     and not (local / name).is_dir())
    if missing:
        raise ModelError(f"model {path!r} is incomplete: component folder(s) {', '.join(missing)} named in "
                         f"{index_file} are missing; copy or download the whole checkpoint")
    known = families()
    if pipeline_class not in known:
        supported = sorted(name for name in known if not name.startswith("Latentmill"))
        raise ModelError(
            f"model {path!r} is a {pipeline_class}, which latentmill has no adapter for; "
            f"supported pipeline classes: {', '.join(supported)}"
        )
    reason = known[pipeline_class](local).unsupported_reason()
    if reason:
        raise ModelError(f"model {path!r} cannot run: {reason}")
    pickles = [p for p in local.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        example = pickles[0].relative_to(local)
        raise ModelError(
            f"model {path!r} has pickle weights ({example}, {len(pickles)} file(s)); loading pickles can run "
            "arbitrary code. Convert them to safetensors, or set model.allow_pickle: true if you trust the source"
        )
    return ModelRef(
        path=path,
        pipeline_class=pipeline_class,
        content_hash=_content_hash(local),
        storage_options=HiddenOptions(storage_options or {}),
    )
