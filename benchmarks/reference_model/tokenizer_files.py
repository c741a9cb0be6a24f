"""Write a CLIP byte-level BPE vocabulary (``vocab.json`` + ``merges.txt``) for a closed word list.

The reference model cannot download OpenAI's CLIP vocabulary, so it gets its own: the 512
byte-level base symbols every CLIP vocabulary starts with (so any text still tokenizes, character
by character), then one merge chain per caption word, so every word the captions use is a single
token. The files have the layout of ``openai/clip-vit-large-patch14``'s, so both the slow and the
fast ``CLIPTokenizer`` of any transformers version load them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def caption_words(captions: list[str]) -> list[str]:
    """The words CLIP's pre-tokenizer would cut the captions into (lower-case letters only)."""
    words: list[str] = []
    seen: set[str] = set()
    for caption in captions:
        for word in re.findall(r"[a-z]+", caption.lower()):
            if word not in seen:
                seen.add(word)
                words.append(word)
    return words


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-ordered vocabulary and merge list in which every word of ``words`` is one token."""
    base = list(bytes_to_unicode().values())
    tokens = base + [symbol + "</w>" for symbol in base]
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            pair = (current, symbol)
            current = current + symbol
            if current not in known:
                merges.append(pair)
                tokens.append(current)
                known.add(current)
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer_files(words: list[str], folder: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    vocab_path = folder / "vocab.json"
    merges_path = folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path


T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2


def build_t5_tokenizer(words: list[str], max_length: int = 512):
    """A T5-style tokenizer (``T5TokenizerFast``): a SentencePiece-like Unigram model whose pieces are
    ``<pad>``, ``</s>``, ``<unk>``, every lower-case letter and digit (so any such text tokenizes), and one
    piece per word of ``words`` (so every caption word is one token); ``</s>`` is appended as T5 does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [(token, 0.0) for token in T5_SPECIAL] + [("▁", -2.0)]
    pieces += [(character, -10.0) for character in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += [("▁" + word, -1.0) for word in dict.fromkeys(words)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)
