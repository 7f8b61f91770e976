"""Does a picture follow its caption? Simple image maths, no learnt judge.

A picture follows its caption's place when enough pixels have the named colour and their centroid lies
in the named region (a quadrant, or the middle for "center"). Its shape is read from how much of the
colour's bounding box the colour fills: a square fills all of it, a circle pi/4, a triangle half.

`python -m latentmill.models.shapes.measure [MODEL]` prints the figures for the held-out captions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from latentmill.models.shapes import data

COLOUR_DISTANCE = 80  # RGB distance within which a pixel counts as the named colour
MIN_PIXELS = 40  # a small triangle covers about 130 pixels
FILL_RATIOS = {"triangle": 0.5, "circle": np.pi / 4, "square": 1.0}
SEEDS = (0, 1, 2, 3)


@dataclass(frozen=True)
class Reading:
    pixels: int  # pixels of the named colour
    in_place: bool  # enough of them, centred in the named region
    shape: str | None  # the shape their fill ratio is nearest to; None when too few


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    distance = np.linalg.norm(image.astype(np.float32) - np.array(data.COLOURS[colour], np.float32), axis=-1)
    return distance < COLOUR_DISTANCE


def in_region(x: float, y: float, position: str) -> bool:
    half = data.SIZE / 2
    if position == "center":
        return abs(x - half) < data.SIZE / 6 and abs(y - half) < data.SIZE / 6
    vertical, horizontal = position.split()
    return (y < half) == (vertical == "top") and (x < half) == (horizontal == "left")


def read(image: np.ndarray, scene: data.Scene) -> Reading:
    """`image`: (64, 64, 3) uint8."""
    mask = colour_mask(image, scene.colour)
    count = int(mask.sum())
    if count < MIN_PIXELS:
        return Reading(count, False, None)
    ys, xs = np.nonzero(mask)
    fill = fill_ratio(mask)
    shape = min(FILL_RATIOS, key=lambda name: abs(FILL_RATIOS[name] - fill))
    return Reading(count, in_region(xs.mean(), ys.mean(), scene.position), shape)


def fill_ratio(mask: np.ndarray) -> float:
    """The share of the mask's bounding box it fills (see `FILL_RATIOS`); the mask must not be empty."""
    ys, xs = np.nonzero(mask)
    return len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))


def generate(model_dir, prompts: list[str], seeds: list[int], negative_prompts: list[str] | None = None,
             **settings) -> np.ndarray:
    """Pictures from the plain diffusers pipeline, one generator per row, as (N, 64, 64, 3) uint8;
    `settings` override the model's defaults (those `latentmill run` uses)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from latentmill.models.tiny import TINY_DEFAULTS

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    settings = {**TINY_DEFAULTS["shapes"], **settings}
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        images = pipe(prompts, negative_prompt=negative_prompts, generator=generators, output_type="np",
                      **settings).images
    return (images * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class Adherence:
    in_place: float  # share of pictures with the named colour centred in the named place
    shaped: float  # ... that also have the named shape
    pictures: int


def held_out_pictures(model_dir, **settings) -> tuple[list[data.Scene], np.ndarray]:
    """Each held-out caption at every seed in `SEEDS`, a caption's seeds next to each other;
    `settings` as for `generate`."""
    scenes = [scene for scene in data.held_out_scenes() for _ in SEEDS]
    images = generate(model_dir, [scene.caption for scene in scenes], list(SEEDS) * len(data.held_out_scenes()),
                      **settings)
    return scenes, images


def held_out_readings(model_dir, **settings) -> list[tuple[data.Scene, Reading]]:
    scenes, images = held_out_pictures(model_dir, **settings)
    return [(scene, read(image, scene)) for scene, image in zip(scenes, images)]


def adherence(readings: list[tuple[data.Scene, Reading]]) -> Adherence:
    placed = [reading.in_place for _, reading in readings]
    shaped = [reading.in_place and reading.shape == scene.shape for scene, reading in readings]
    return Adherence(float(np.mean(placed)), float(np.mean(shaped)), len(readings))


def main(argv: list[str]) -> None:
    from latentmill.models import materialize

    model_dir = materialize(argv[0] if argv else "builtin:shapes")
    readings = held_out_readings(model_dir)
    for scene, reading in readings:
        print(f"{scene.caption:70s} pixels {reading.pixels:4d} in place {reading.in_place!s:5s} "
              f"shape {reading.shape}")
    score = adherence(readings)
    print(f"{score.pictures} pictures: colour in the named place {score.in_place:.0%}, "
          f"also the named shape {score.shaped:.0%}")


if __name__ == "__main__":
    main(sys.argv[1:])
