"""Embedding-cache entries: what a hit gives back is what was stored, and a wrong entry is refused."""

import pytest

from latentmill.io.embeddings import decode_entry, encode_entry, entry_key
from latentmill.models import tensors


def test_an_entry_round_trips_its_packed_columns_and_flag():
    import numpy as np

    packed = {"prompt_embeds": tensors.pack(np.arange(12, dtype=np.float16).reshape(3, 4)),
              "negative_prompt_embeds": b""}
    key = entry_key("enc", "stable-diffusion-xl", "bfloat16", False, ("a cat", None, ()))
    columns, truncated = decode_entry(key, encode_entry(key, packed, True))
    assert columns == packed and truncated is True
    assert tensors.unpack(columns["negative_prompt_embeds"]) is None


@pytest.mark.parametrize("damage", ["another key", "cut short", "not an entry"])
def test_a_damaged_or_foreign_entry_is_refused(damage):
    key = entry_key("enc", "flux", "bfloat16", False, ("a cat", None, ()))
    data = encode_entry(key, {"prompt_embeds": b"x" * 100}, False)
    if damage == "another key":
        data = encode_entry(entry_key("enc", "flux", "bfloat16", False, ("a dog", None, ())),
                            {"prompt_embeds": b"x" * 100}, False)
    elif damage == "cut short":
        data = data[:-10]
    else:
        data = b"not an entry"
    with pytest.raises(ValueError):
        decode_entry(key, data)


def test_every_decisive_input_changes_the_key():
    base = ("enc", "sd3", "float16", False, ("a cat", "blurry", (("max_sequence_length", 256),)))
    keys = {entry_key(*base)}
    for position, other in ((0, "enc2"), (1, "flux"), (2, "bfloat16"), (3, True),
                            (4, ("a cat", None, (("max_sequence_length", 256),))),
                            (4, ("a cat", "blurry", (("max_sequence_length", 512),)))):
        changed = list(base)
        changed[position] = other
        keys.add(entry_key(*changed))
    assert len(keys) == 7
