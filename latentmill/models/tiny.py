"""Built-in tiny diffusers checkpoints.

They let the whole system (CLI, Ray stages, tests) run end to end on a laptop CPU without
downloading anything: each is a complete diffusers checkpoint with the same layout and
component classes as a real one (one per supported family; builders in `tiny_builds/`), only
with at most about a million randomly initialised parameters per component. Weights are
seeded and the tokenizers are trained on a fixed corpus, so every build writes byte-identical
files. One exception draws real pictures: `builtin:shapes`, trained on drawn shapes and shipped
in the package (`models/shapes/`).

Heavy libraries are imported inside the functions so that importing this module (and
starting the CLI) stays instant.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# Bump when any builder changes its output, so caches built by older code are not reused.
_VERSION = "v2"

from latentmill.models.tiny_builds import (  # noqa: E402 - after _VERSION on purpose
    cogvideox, flux, hunyuan_video15, ltx, ltx2, qwen, sd, sd3, sdxl, shapes, wan)

# name -> (builder, generation defaults). The defaults are valid for the model and take well under a
# second on a CPU; they are stored in the checkpoint's model_index.json under `_latentmill_defaults`
# (keys that start with `_` are metadata to diffusers), so a copy of the folder carries them.
_REGISTRY = {name: entry for module in (sd, wan, sdxl, sd3, flux, qwen, ltx, ltx2, cogvideox, hunyuan_video15,
                                        shapes)
             for name, entry in module.MODELS.items()}
TINY_DEFAULTS: dict[str, dict] = {name: defaults for name, (_, defaults) in _REGISTRY.items()}


def _builder(name: str) -> Callable[[Path], None]:
    build = _REGISTRY[name][0]

    def build_with_defaults(dest: Path) -> None:
        build(dest)
        index_file = Path(dest) / "model_index.json"
        index = json.loads(index_file.read_text())
        index["_latentmill_defaults"] = TINY_DEFAULTS[name]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    return build_with_defaults


TINY_MODELS: dict[str, Callable[[Path], None]] = {name: _builder(name) for name in _REGISTRY}


def _default_cache_dir() -> Path:
    env = os.environ.get("LATENTMILL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "latentmill"


def ensure_builtin(name: str, cache_dir: Path | None = None) -> Path:
    """Return the directory of built-in model `name`, building it there on first use.

    Safe to call from many processes at once (e.g. every Ray actor on a node): each builds
    into its own temporary sibling and renames it into place, which is atomic; a process that
    loses the race discards its copy and uses the winner's. A directory at the final path is
    therefore always complete.
    """
    if name not in TINY_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; known: {', '.join(sorted(TINY_MODELS))}")
    version = f"{_VERSION}-{shapes.checkpoint_digest()}" if name in shapes.MODELS else _VERSION
    target = Path(cache_dir or _default_cache_dir()) / "models" / f"{name}-{version}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        TINY_MODELS[name](tmp)
        try:
            os.rename(tmp, target)
        except OSError as err:  # target appeared meanwhile: another process won the race
            if not (target / "model_index.json").is_file():
                raise RuntimeError(f"{target} exists but is not a complete checkpoint; delete it") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our copy, if the rename did not take it
    return target


def init_tiny(dest_dir: Path) -> dict[str, Path]:
    """Write every built-in tiny model to `dest_dir/<name>` (`latentmill models init-tiny DIR`)."""
    paths = {}
    for name, build in TINY_MODELS.items():
        paths[name] = Path(dest_dir) / name
        build(paths[name])
    return paths
