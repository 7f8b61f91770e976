"""Tokenizers trained on a fixed prompt corpus: no hub download, byte-identical on every build."""

from __future__ import annotations

import json


# Tokenizer training text: prompt-like sentences, so that common prompt words get their own
# tokens while anything else still tokenizes (byte-level BPE for CLIP, <unk> for T5).
CORPUS = (
    "a photo of a cat sitting on a red sofa in the living room",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse at sunset",
    "a dog running through the snow in slow motion",
    "close-up portrait of an old man with a grey beard, 35mm film",
    "a bowl of fruit on a wooden table, still life, oil painting",
    "waves crashing on a rocky beach at dawn, cinematic lighting",
    "a futuristic city skyline at night with neon lights and flying cars",
    "a small cabin in a snowy forest, smoke rising from the chimney",
    "a bowl of ramen with chopsticks, top view, studio photo",
    "a robot playing the piano on a stage, spotlight, 4k",
    "a field of sunflowers under a blue sky with white clouds",
    "a timelapse of clouds moving over the mountains",
    "a drone shot flying over a green valley with a river",
    "a girl reading a book by the window on a rainy day",
    "an oil painting of a ship in a storm, dramatic waves",
    "a macro photo of a bee on a purple flower",
    "a busy street market in the evening, people walking, lanterns",
    "a panda eating bamboo in a misty bamboo forest",
    "a cup of coffee with latte art on a marble counter",
    "a red sports car driving fast along a coastal road",
    "a cute cartoon fox wearing a scarf, children's book illustration",
    "an ancient temple covered in vines in the jungle",
    "a golden retriever puppy playing with a ball in the park",
    "a bird's eye view of a snowy mountain range at sunrise",
    "a medieval knight in shining armor holding a sword",
    "a glass of orange juice on a kitchen table, morning light",
    "a hot air balloon floating over a desert at sunset",
    "a child blowing bubbles in the garden, soft focus",
    "a neon sign that says open in a dark alley, rain reflections",
    "an underwater scene with colorful fish and coral reef",
    "a black and white photo of a jazz band playing in a club",
    "a train crossing a bridge over a deep canyon",
    "a fantasy castle on a floating island, high detail, concept art",
    "a close-up of raindrops on a leaf, shallow depth of field",
    "a woman dancing in a field of tall grass, slow motion video",
    "a camera slowly panning across a quiet lake with reflections",
    "a chef cooking pasta in a busy restaurant kitchen",
    "a pixel art scene of a village with houses and trees",
    "a low poly 3d render of a mountain and a lake",
    "a sketch of a horse drawn with charcoal on paper",
    "a café in paris with tables outside, warm evening light",
    "a crowd cheering at a football match, wide angle, 8 fps",
)


def train_clip_tokenizer(corpus=CORPUS, model_max_length: int = 77):
    """A transformers CLIPTokenizer whose BPE merges are learnt from `corpus`.

    Training uses the exact normalizer and pre-tokenizer CLIPTokenizer rebuilds on load, so
    the merges apply unchanged. The vocabulary holds every byte (alone and word-final), so any
    text, emoji and RTL scripts included, tokenizes without unknowns.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer().backend_tokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_final = [ch + "</w>" for ch in alphabet]
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = reference.normalizer
    bpe.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        # Giving the word-final symbols fixed ids up front makes merge tie-breaking (and
        # hence the output) independent of the trainer's hash-map iteration order.
        special_tokens=word_final,
    )
    bpe.train_from_iterator(corpus, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]

    tokens = alphabet + word_final + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def train_t5_tokenizer():
    """A transformers T5Tokenizer (Unigram, like UMT5's) learnt from `CORPUS`.

    Trained with the pre-tokenizer T5Tokenizer rebuilds on load. The Unigram trainer's output
    order and scores vary slightly between runs, so they are canonicalised for byte-identical
    builds. Characters that are neither in the corpus nor printable ASCII map to <unk> (T5
    has no byte fallback), which never fails.
    """
    import string

    from tokenizers import Tokenizer, models, trainers
    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: the layout T5Tokenizer expects
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = T5Tokenizer(extra_ids=0).backend_tokenizer.pre_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=1000, show_progress=False, special_tokens=specials, unk_token="<unk>"
    )
    unigram.train_from_iterator(CORPUS, trainer)
    pieces = json.loads(unigram.to_str())["model"]["vocab"]
    learnt = {piece: score for piece, score in pieces if piece not in specials}
    # Characters kept only for coverage get the trainer's minimum score plus 1e-4 steps in
    # hash-map order: give them all that minimum.
    floor = round(min(learnt.values()), 4)
    learnt = {piece: round(score, 6) if score > floor + 0.01 else floor for piece, score in learnt.items()}
    # Printable ASCII never seen in training still gets a (least likely) piece of its own.
    for char in string.ascii_letters + string.digits + string.punctuation:
        learnt.setdefault(char, floor - 1.0)
    vocab = [(piece, 0.0) for piece in specials]
    vocab += sorted(learnt.items(), key=lambda item: (-item[1], item[0]))
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
