"""The shipped CLIP vocabulary rebuilds Hugging Face's CLIPTokenizer exactly."""

from __future__ import annotations

from pathlib import Path

from textmask.vocab import VOCAB_SIZE, clip_vocab, write_clip_tokenizer_files


def test_vocab_has_clip_layout() -> None:
    vocab = clip_vocab()
    assert len(vocab) == VOCAB_SIZE == 49408
    assert vocab["<|startoftext|>"] == 49406
    assert vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256


def test_tokenizer_gives_clip_ids(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("")["input_ids"] == [49406, 49407]
