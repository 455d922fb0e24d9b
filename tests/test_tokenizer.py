"""textmask's CLIP tokenizer (issue 16) against transformers' CLIP tokenizers on a fixed corpus and on
hypothesis-generated text.

The reference is what the engine used before it had its own tokenizer: ``AutoTokenizer.from_pretrained(folder)``
(``CLIPTokenizerFast`` on transformers 4, ``CLIPTokenizer`` on 5, both on the ``tokenizers`` library), with and
without truncation to 77 tokens. transformers 4's pure-Python ``CLIPTokenizer`` (without ftfy) cleans text
differently (it drops control and zero-width characters and splits CJK ideographs apart): where it disagrees
with the fast one, textmask follows the fast one. One more known difference: transformers 4's fast tokenizer
matches special tokens *after* lowercasing when the folder's tokenizer config does not say otherwise (its slow
one lowercases first too), so it reads ``<|StartOfText|>`` as the start token, where transformers 5 and
textmask read text; see :func:`test_special_token_text`.
"""

from __future__ import annotations

import functools
import random
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmask.clipseg.tokenizer import CLIPTextTokenizer, TokenizerFilesError
from textmask.vocab import write_clip_tokenizer_files

CAT = [49406, 320, 1125, 539, 320, 2368, 49407]

TRICKY = [
    "a photo of a cat",
    "",
    " ",
    "   \t\n  ",
    "A Photo Of A CAT",
    "café au lait",
    "Café au lait",
    "cafe\u0301 au lait",  # combining accent: NFC makes it é
    "naïve résumé coöperate",
    "ein Kätzchen 🐱 猫",
    "猫",
    "漢字かな交じり文",
    "한국어 텍스트",
    "中文，标点。符号！",
    "Ελληνικά κείμενα",
    "Русский текст",
    "עברית \u05d7\u05ea\u05d5\u05dc",
    "العربية",
    "हिन्दी",
    "ภาษาไทย",
    "🐱🐶",
    "👨‍👩‍👧‍👦 family",
    "👍🏽 thumbs",
    "🇩🇪🇯🇵 flags",
    "don't stop",
    "I'M HERE",
    "it’s curly",
    "we'll they've you'd she's i'm",
    "''s''t",
    "1234567890",
    "3.14159 and 2,718",
    "a.b,c!?;:",
    "...!!!???",
    "(parentheses) [brackets] {braces}",
    "email@example.com https://example.com/path?q=1&x=2",
    "#hashtag @mention $100 50% ^caret *star",
    "tab\tseparated\tvalues",
    "line\nbreaks\r\nhere",
    "non\u00a0breaking\u2003em\u3000ideographic spaces",
    "zero\u200bwidth\u200cjoiners\u200d",
    "\x00\x01\x07 control",
    "\ufeffbyte order mark",
    "ﬁ ligature ＡＢＣ fullwidth",
    "İstanbul ß ẞ",
    "ǅ title-case digraph",
    "ends with space ",
    " starts with space",
    "<|startoftext|> already there",
    "text <|endoftext|> inside",
    "<|endoftext|>",
    "<|not a special|>",
    "a" * 300,
    "x" * 1000,
    " ".join(["cat"] * 100),
    "a photo of " + " ".join(["cat"] * 100) + " and " + " ".join(f"w{i}" for i in range(120)),
    "🐱" * 80,
    "supercalifragilisticexpialidocious",
    "The Quick Brown Fox Jumps Over The Lazy Dog",
    "person's hair",
    "the sky",
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " " * 8 + "\t\n\r\u00a0\u2003\u3000",
    ".,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`’“”…",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœšžčćđłńśźż",
    "\u0301\u0308\u0327\u0303",  # combining marks
    "猫犬漢字中文标点かなカナ한국어",
    "αβγδεζηθλμπσφψωЖЗИКЛМНабвгд",
    "אבגדהוזחטיكلمنهوي",
    "🐱🐶🦊🌍🔥👍🏽👨‍👩‍👧❤️🇩🇪✨",
    "\u200b\u200c\u200d\ufeff\x00\x07",
    "ﬁﬂＡＢＣ１２３",
]
WORDS = ["a", "the", "cat", "dog", "photo", "of", "red", "sky", "don't", "it's", "we'll", "hair", "person's", "car"]


def corpus(count: int = 3000, seed: int = 0) -> list[str]:
    """The fixed corpus: the tricky strings, then generated ones (words, character soup, long runs)."""
    rng = random.Random(seed)
    texts = list(TRICKY)
    while len(texts) < count:
        kind = rng.random()
        if kind < 0.35:
            texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))
        elif kind < 0.85:
            pools = rng.sample(POOLS, rng.randint(1, 4))
            texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 40))))
        else:  # long: truncation
            pool = rng.choice(POOLS[:3] + POOLS[7:8] + POOLS[10:11])
            texts.append("".join(rng.choice(pool + " ") for _ in range(rng.randint(200, 1500))))
    return texts


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    write_clip_tokenizer_files(path)
    return path


@functools.lru_cache(maxsize=4)
def _ours(folder: Path) -> CLIPTextTokenizer:
    tokenizer = CLIPTextTokenizer.from_folder(folder)
    assert tokenizer is not None
    return tokenizer


@functools.lru_cache(maxsize=4)
def _reference(folder: Path, kind: str = "auto"):
    transformers = pytest.importorskip("transformers")
    if kind == "auto":
        return transformers.AutoTokenizer.from_pretrained(str(folder))
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


# ---------------------------------------------------------------------------------- basics
def test_ids_truncation_and_decoding(folder: Path) -> None:
    tokenizer = _ours(folder)
    assert tokenizer("a photo of a cat")["input_ids"] == CAT
    assert tokenizer("")["input_ids"] == [49406, 49407]
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407 and len(tokenizer) == 49408
    long = " ".join(["cat"] * 100)
    assert len(tokenizer(long)["input_ids"]) == 102
    truncated = tokenizer(long, truncation=True, max_length=77)["input_ids"]
    assert len(truncated) == 77 and truncated[0] == 49406 and truncated[-1] == 49407  # the end token is kept
    assert tokenizer.decode(CAT[1:-1]) == "a photo of a cat"
    assert tokenizer(tokenizer.decode(truncated[1:-1]))["input_ids"] == truncated


def test_call_pads_batches_and_returns_tensors(folder: Path) -> None:
    tokenizer = _ours(folder)
    batch = tokenizer(["a cat", "a photo of a cat"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 7) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == [49406, 320, 2368, 49407, 49407, 49407, 49407]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    one = tokenizer(["a cat"], truncation=True, max_length=77, return_tensors="pt")
    assert one["input_ids"].tolist() == [[49406, 320, 2368, 49407]]
    with pytest.raises(ValueError, match="padding"):
        tokenizer(["a cat", "a photo of a cat"], return_tensors="pt")


def test_shipped_vocabulary_equals_the_folder_files(folder: Path) -> None:
    shipped = CLIPTextTokenizer.shipped()
    ours = _ours(folder)
    for text in corpus(600, seed=3):
        assert shipped(text)["input_ids"] == ours(text)["input_ids"], text


def test_incomplete_tokenizer_files_are_refused(folder: Path, tmp_path: Path) -> None:
    assert CLIPTextTokenizer.from_folder(tmp_path) is None  # nothing there: the caller uses the shipped one
    shutil.copy(folder / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    with pytest.raises(TokenizerFilesError, match=r"vocab\.json and merges\.txt are missing"):
        CLIPTextTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerFilesError):
        CLIPTextTokenizer.from_folder(tmp_path)


# ---------------------------------------------------------------------------------- parity
def test_corpus_matches_transformers(folder: Path) -> None:
    """A few thousand strings, with and without truncation to 77, against the engine's former tokenizer."""
    reference, ours = _reference(folder), _ours(folder)
    texts = corpus()
    assert len(texts) == 3000
    for text in texts:
        assert ours(text)["input_ids"] == reference(text)["input_ids"], repr(text)
        got = ours(text, truncation=True, max_length=77)["input_ids"]
        assert got == reference(text, truncation=True, max_length=77)["input_ids"], repr(text)


def test_corpus_against_the_slow_tokenizer(folder: Path) -> None:
    """transformers' ``CLIPTokenizer``: on transformers 5 it is the fast one and agrees everywhere; on 4.x it is
    pure Python and disagrees with the fast one on some text, where textmask follows the fast one."""
    slow, fast, ours = _reference(folder, "slow"), _reference(folder), _ours(folder)
    disagreements = 0
    for text in corpus(1500, seed=1):
        expected = slow(text)["input_ids"]
        if expected != fast(text)["input_ids"]:
            disagreements += 1
            continue
        assert ours(text)["input_ids"] == expected, repr(text)
    if type(slow) is type(fast):
        assert disagreements == 0
    assert disagreements < 500  # control/zero-width characters and CJK (4.x only)


def test_tokenizer_json_is_used_as_it_is(folder: Path, tmp_path: Path) -> None:
    reference = _reference(folder)
    reference.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    from_json = CLIPTextTokenizer.from_folder(tmp_path)
    assert from_json is not None
    for text in corpus(500, seed=2):
        assert from_json(text, truncation=True)["input_ids"] == reference(text, truncation=True)["input_ids"]


def test_special_token_text(folder: Path) -> None:
    """Special tokens written in a prompt: the exact text is the token everywhere. Another case is text for
    transformers 5 and textmask, but the token for transformers 4 (slow and fast: they lowercase first)."""
    ours, reference = _ours(folder), _reference(folder)
    for text in ("<|startoftext|> hi", "a <|endoftext|> b", "<|endoftext|>"):
        assert ours(text)["input_ids"] == reference(text)["input_ids"]
    assert ours("<|startoftext|> hi")["input_ids"] == [49406, 49406, 1883, 49407]
    mixed = "<|StartOfText|> hi"
    as_text = [49406, 27, 347, 993, 6659, 4160, 91, 285, 1883, 49407]
    assert ours(mixed)["input_ids"] == as_text
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        assert reference(mixed)["input_ids"] == as_text
    else:
        assert reference(mixed)["input_ids"] == [49406, 49406, 1883, 49407]


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)
_POOLED = st.lists(st.sampled_from(POOLS), min_size=1, max_size=3).flatmap(
    lambda pools: st.text(alphabet=st.sampled_from("".join(pools)), max_size=300)
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_TEXT, _POOLED))
def test_generated_text_matches_transformers(folder: Path, text: str) -> None:
    if "<|" in text.lower() and "|>" in text:  # special-token look-alikes: see test_special_token_text
        return
    reference, ours = _reference(folder), _ours(folder)
    assert ours(text)["input_ids"] == reference(text)["input_ids"]
    assert (
        ours(text, truncation=True, max_length=77)["input_ids"]
        == reference(text, truncation=True, max_length=77)["input_ids"]
    )
