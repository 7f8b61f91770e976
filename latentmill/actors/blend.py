"""The encode pool of an interpolation job: both endpoints encoded once, then expanded into steps.

A transition row names two prompts, two seeds and the eased positions `t` of its frames. The worker
encodes both prompts in one batch and draws both seeds' initial noise, then emits one row per frame
with the conditioning blended (tensors.blend) and the noise spherically interpolated (tensors.slerp),
so the denoise pool works on the frames in parallel. A transition that cannot be encoded becomes one
error row; frames a previous run finished are emitted as already done, without tensors.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np

from latentmill import schema
from latentmill.actors.stages import TextEncodeWorker, mark_error
from latentmill.models import tensors
from latentmill.rows import Request, empty_request_columns, request_at, write_request

# Columns of a transition row (besides the request columns, which describe endpoint a).
TRANSITION = "transition_id"
STEP = "step"
POSITION = "t"
PROMPT_B = "prompt_b"
SEED_B = "seed_b"
POSITIONS = "positions"  # JSON list of the frames' eased t
DONE_STEPS = "done_steps"  # JSON list of the frames a previous run finished

FRAME_COLUMNS = {TRANSITION: object, STEP: np.int64, POSITION: np.float64, PROMPT_B: object, SEED_B: np.int64}


def frame_id(transition_id: str, step: int) -> str:
    return f"{transition_id}-f{step:04d}"


class BlendEncodeWorker(TextEncodeWorker):
    """The text-encoder pool's worker (same load), but one call expands a transition into its frames."""

    def __call__(self, batch):
        extra_names = tuple(self.family.extra_parameters)
        extra_types = self.family.extra_types()
        pieces = []
        with self.metrics.batch() as record:
            for index in range(len(batch[schema.ID])):
                transition = request_at(batch, index, extra_names)
                positions = json.loads(batch[POSITIONS][index])
                done = set(json.loads(batch[DONE_STEPS][index]))
                other = replace(transition, prompt=str(batch[PROMPT_B][index]), seed=int(batch[SEED_B][index]))
                pieces.append(self._frames(transition, other, positions, done, extra_types))
            out = {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
            record.outcome(out, list(range(len(out[schema.ID]))))
        return out

    def _frames(self, a: Request, b: Request, positions: list[float], done: set[int], extra_types) -> dict:
        size = len(positions)
        out = empty_request_columns(size, extra_types)
        for name, kind in FRAME_COLUMNS.items():
            out[name] = np.full(size, "", dtype=object) if kind is object else np.zeros(size, dtype=kind)
        for name in (*self.columns, schema.INITIAL_NOISE):
            out[name] = np.full(size, b"", dtype=object)
        out[schema.seconds_column(self.stage)] = np.zeros(size)
        for step, position in enumerate(positions):
            write_request(out, step, replace(a, id=frame_id(a.id, step)))
            out[TRANSITION][step], out[STEP][step], out[POSITION][step] = a.id, step, position
            out[PROMPT_B][step], out[SEED_B][step] = b.prompt, b.seed
            out[schema.INPUT_ROW][step] = json.dumps({"prompt_a": a.prompt, "prompt_b": b.prompt, "seed_a": a.seed,
                                                      "seed_b": b.seed, "t": position}, ensure_ascii=False)
            if step in done:
                out[schema.ERROR_STAGE][step] = schema.ALREADY_DONE
        todo = [step for step in range(size) if step not in done]
        if not todo:
            return out
        started = time.perf_counter()
        try:
            self.faults.before_call([a.id])
            self.faults.model_call()
            encoded = self.family.encode([a, b])
            noise_a, noise_b = self.family.initial_noise(a), self.family.initial_noise(b)
        except Exception as exc:  # noqa: BLE001 - the transition fails, not the job
            for step in todo:
                mark_error(out, step, self.stage, exc)
            return out
        for step in todo:
            t = positions[step]
            for name, values in encoded.tensors.items():
                out[name][step] = tensors.pack(tensors.blend(values[0], values[1], t))
            out[schema.INITIAL_NOISE][step] = tensors.pack(tensors.slerp(noise_a, noise_b, t))
            out[schema.PROMPT_TRUNCATED][step] = encoded.truncated[0] or encoded.truncated[1]
        out[schema.seconds_column(self.stage)][todo] = (time.perf_counter() - started) / len(todo)
        return out
