"""CLIP's text tokenizer (byte-level BPE) on the ``tokenizers`` library, without transformers.

The pipeline is the one transformers builds for ``CLIPTokenizerFast`` / ``CLIPTokenizer``: NFC, runs of
whitespace to one space, lowercase; split into letters runs, single digits, punctuation runs and the
contractions 's 't 're 've 'm 'll 'd; byte-level BPE with ``</w>`` word ends; ``<|startoftext|>`` …
``<|endoftext|>`` around the ids. A folder's ``tokenizer.json`` is used as it is; otherwise its
``vocab.json`` + ``merges.txt``; a folder with no tokenizer files at all gets the CLIP vocabulary textmask
ships (:mod:`textmask.vocab`).

:class:`CLIPTextTokenizer` answers the part of transformers' tokenizer call that textmask uses
(``tokenizer(text)["input_ids"]``, ``truncation``/``max_length``, ``padding``, ``return_tensors="pt"``,
``decode``, ``eos_token_id``, ``len``), so a transformers tokenizer can stand in for it and vice versa.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77
END_OF_WORD = "</w>"
# transformers 5's split pattern (4.x's lacks the two special tokens; they are matched as added tokens before
# this split in both, so the results agree).
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class TokenizerFilesError(ValueError):
    """A folder's tokenizer files are incomplete or unreadable (the message says which)."""


class CLIPTextTokenizer:
    """CLIP text → token ids ``[<|startoftext|>, ..., <|endoftext|>]``.

    Args:
        backend: a ``tokenizers.Tokenizer`` with CLIP's pipeline (start and end tokens added by its
            post-processor).
        bos_token, eos_token, pad_token: the special tokens' text (CLIP pads with the end token).
    """

    def __init__(
        self, backend: Any, bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN, pad_token: str | None = None
    ) -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token or eos_token
        self.model_max_length = MAX_TOKENS
        tokens = (bos_token, eos_token, self.pad_token)
        ids = [backend.token_to_id(token) for token in tokens]
        if None in ids:
            raise TokenizerFilesError(f"the vocabulary has no {tokens[ids.index(None)]!r}")
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (int(i) for i in ids)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_vocabulary(
        cls,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        special: dict[str, str] | None = None,
        normalized_specials: set[str] | frozenset[str] = frozenset(),
    ) -> CLIPTextTokenizer:
        """CLIP's pipeline over a vocabulary (token → id) and its merges (in priority order).

        Args:
            special: ``bos_token``/``eos_token``/``unk_token``/``pad_token`` text (CLIP's by default).
            normalized_specials: special tokens matched after normalization (lowercasing), as a folder's
                tokenizer config may ask; the others are matched in the raw text.
        """
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import BPE

        names = _special_tokens(special)
        backend = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix=END_OF_WORD,
                fuse_unk=False,
                unk_token=names["unk_token"],
            )
        )
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        specials = list(dict.fromkeys(names[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token")))
        backend.add_special_tokens(
            [AddedToken(token, special=True, normalized=token in normalized_specials) for token in specials]
        )
        bos, eos = names["bos_token"], names["eos_token"]
        backend.post_processor = processors.RobertaProcessing(
            (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)), trim_offsets=False, add_prefix_space=False
        )
        return cls(backend, bos, eos, names["pad_token"])

    @classmethod
    def shipped(cls) -> CLIPTextTokenizer:
        """CLIP's tokenizer from the BPE file textmask ships (the vocabulary of every CLIPSeg checkpoint)."""
        from ..vocab import clip_merges, clip_vocab

        return cls.from_vocabulary(clip_vocab(), list(clip_merges()))

    @classmethod
    def from_folder(cls, folder: Path) -> CLIPTextTokenizer | None:
        """The folder's tokenizer: ``tokenizer.json``, else ``vocab.json`` + ``merges.txt``; None when the folder
        has no tokenizer files at all.

        Raises:
            TokenizerFilesError: files are there but incomplete (a config without its vocabulary) or unreadable.
        """
        present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
        if not present:
            return None
        settings = _read_settings(folder)
        special = {key: value for key, value in settings.items() if key.endswith("_token")}
        try:
            if (folder / "tokenizer.json").is_file():
                from tokenizers import Tokenizer

                backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
                names = _special_tokens(special)
                return cls(backend, names["bos_token"], names["eos_token"], names["pad_token"])
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                from tokenizers.models import BPE

                vocab, merges = BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
                return cls.from_vocabulary(vocab, merges, special, settings.get("normalized_specials", frozenset()))
        except TokenizerFilesError:
            raise
        except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
            raise TokenizerFilesError(f"{type(exc).__name__}: {str(exc).strip() or 'unreadable'}") from None
        missing = [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
        raise TokenizerFilesError(
            f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} there but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing"
        )

    # ---------------------------------------------------------------------------------- encoding
    def __len__(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, truncation: bool = False, max_length: int | None = None) -> list[int]:
        """``text`` → ids with the start and end tokens. With ``truncation``, at most ``max_length`` (default 77)
        ids: the text is cut, the end token kept."""
        ids: list[int] = self.backend.encode(text).ids
        limit = max_length or self.model_max_length
        if truncation and len(ids) > limit:
            ids = [*ids[: limit - 1], ids[-1]]
        return ids

    def __call__(
        self,
        text: str | Sequence[str],
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool | str = False,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """transformers' tokenizer call: ``{"input_ids": ..., "attention_mask": ...}``.

        Args:
            text: one text (lists of ids) or a list (lists of lists).
            padding: True/``"longest"``: pad to the longest with the pad token (attention mask 0 there).
            return_tensors: ``"pt"``: int64 tensors ``[N, T]`` (N = 1 for one text).
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not all(isinstance(item, str) for item in texts):
            raise TypeError("text: expected a string or a list of strings")
        rows = [self.encode(item, truncation, max_length) for item in texts]
        masks = [[1] * len(row) for row in rows]
        if padding in (True, "longest", "max_length") and rows:
            width = max_length if padding == "max_length" and max_length else max(len(row) for row in rows)
            masks = [mask + [0] * (width - len(mask)) for mask in masks]
            rows = [row + [self.pad_token_id] * (width - len(row)) for row in rows]
        if return_tensors == "pt":
            import torch

            if len({len(row) for row in rows}) > 1:
                raise ValueError("texts of different lengths need padding=True for return_tensors='pt'")
            return {"input_ids": torch.tensor(rows, dtype=torch.long), "attention_mask": torch.tensor(masks)}
        if return_tensors is not None:
            raise ValueError(f"return_tensors: only 'pt' is supported, got {return_tensors!r}")
        if single:
            return {"input_ids": rows[0], "attention_mask": masks[0]}
        return {"input_ids": rows, "attention_mask": masks}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids → text: words joined by spaces, lowercased as CLIP sees them."""
        text: str = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text.replace(END_OF_WORD, " ").strip()

    def __repr__(self) -> str:
        return f"CLIPTextTokenizer(vocab={len(self)}, bos={self.bos_token_id}, eos={self.eos_token_id})"


def _special_tokens(special: dict[str, str] | None) -> dict[str, str]:
    defaults = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    return {**defaults, **{key: value for key, value in (special or {}).items() if key in defaults and value}}


def _read_settings(folder: Path) -> dict[str, Any]:
    """Special tokens from ``special_tokens_map.json`` / ``tokenizer_config.json`` (the config wins), and which of
    them the files mark ``normalized`` (matched after lowercasing)."""
    settings: dict[str, Any] = {}
    normalized: set[str] = set()
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise TokenizerFilesError(f"{name} is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise TokenizerFilesError(f"{name} is not a JSON object")
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = raw.get(key)
            if isinstance(value, dict):  # {"content": ..., "normalized": ...} (AddedToken)
                if value.get("normalized"):
                    normalized.add(str(value.get("content")))
                value = value.get("content")
            if isinstance(value, str) and value:
                settings[key] = value
        for entry in (raw.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict) and entry.get("normalized") and entry.get("special"):
                normalized.add(str(entry.get("content")))
    settings["normalized_specials"] = frozenset(normalized)
    return settings
