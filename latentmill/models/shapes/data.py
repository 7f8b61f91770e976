"""The synthetic shapes data: one flat-coloured shape on a flat background, with its caption.

Pictures are drawn with PIL from a seed, so the training set, the held-out captions and the test
pictures are the same on every machine.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 235),
    "yellow": (245, 220, 30),
    "white": (245, 245, 245),
}
BACKGROUNDS = {"black": (10, 10, 10), "gray": (128, 128, 128), "white": (245, 245, 245)}
SIZES = {"small": 8, "large": 14}  # half the shape's width in pixels
POSITIONS = {  # the shape's centre
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
    "center": (32, 32),
}
JITTER = 3  # pixels the centre moves at random, so the model learns places, not single pixels


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"in the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """Every combination whose shape is visible (not white on white)."""
    return [Scene(*combo) for combo in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS)
            if combo[1] != combo[4]]


def held_out_scenes(count: int = 12, seed: int = 1) -> list[Scene]:
    """Combinations never shown in training: the test of whether the model composes words it knows."""
    return random.Random(seed).sample(all_scenes(), count)


def training_scenes() -> list[Scene]:
    held_out = set(held_out_scenes())
    return [scene for scene in all_scenes() if scene not in held_out]


def draw(scene: Scene, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 array, its centre moved by `offset` pixels."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    x, y = POSITIONS[scene.position]
    x, y = x + offset[0], y + offset[1]
    r = SIZES[scene.size]
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
        pen.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    return np.asarray(image)


def dataset(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` training pictures (uint8, N x 64 x 64 x 3) and captions, each scene equally often."""
    rng = random.Random(seed)
    scenes = training_scenes()
    images, captions = [], []
    for i in range(count):
        scene = scenes[i % len(scenes)]
        offset = (rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER))
        images.append(draw(scene, offset))
        captions.append(scene.caption)
    return np.stack(images), captions
