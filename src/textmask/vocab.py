"""The CLIP byte-level BPE vocabulary, rebuilt offline from the file this package ships.

``data/bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's merge list as shipped by open_clip (MIT licence,
see ``data/LICENSE-open_clip``). Hugging Face's ``CLIPTokenizer`` files derive from it: the vocabulary is
the 256 byte-level characters, the same 256 with ``</w>``, the first 48,894 merges joined, then
``<|startoftext|>`` and ``<|endoftext|>`` (49,408 entries); ``merges.txt`` is ``#version: 0.2`` plus those
merges. With these files a real CLIP tokenizer works on a machine that cannot download one.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48,894: the merges CLIP uses
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    """The 48,894 BPE merges, in priority order."""
    raw = resources.files("textmask").joinpath("data").joinpath(BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])  # type: ignore[misc]


def clip_vocab() -> dict[str, int]:
    """Token string → id, 49,408 entries, identical to ``openai/clip-vit-base-patch32``'s ``vocab.json``."""
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in clip_merges()]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer_files(folder: str | Path) -> None:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs that ``CLIPTokenizer`` loads.

    Args:
        folder: an existing folder (usually a ``save_pretrained`` model folder).
    """
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(), ensure_ascii=False), encoding="utf-8")
    merges = "\n".join(" ".join(pair) for pair in clip_merges())
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
