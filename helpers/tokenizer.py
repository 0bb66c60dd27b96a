"""A real `CLIPTokenizer` for the shapes world, built from a shipped word list.

Stable Diffusion's tokenizer is byte-pair encoding (BPE) over 49,408 tokens. Ours uses the
same class and the same file format (`vocab.json` + `merges.txt`) with a vocabulary made
for the toy world:

- every caption word as one token (`"red</w>"`), built by merges from its letters, so a
  caption word is always exactly one token;
- every lowercase letter and digit, alone and word-final (`"q"`, `"q</w>"`), and the
  intermediate merge results, so an unknown word ("orange", "zebra") falls apart into
  known pieces instead of crashing or vanishing;
- the two special tokens of CLIP: `<|startoftext|>` (bos) and `<|endoftext|>` (eos, also
  used as padding, as in Stable Diffusion's tokenizer).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 16      # Stable Diffusion uses 77; our captions have at most ~10 tokens


def build_vocab(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merge list such that each word in `words` is one token.

    Returns (vocab: token -> id, merges: ordered pairs). BPE applies the merge of lowest
    rank first, whatever word introduced it, so each word's merges are built on top of
    how the earlier merges already segment it.
    """
    tokens: list[str] = [BOS, EOS]
    seen = set(tokens)

    def add(tok):
        if tok not in seen:
            seen.add(tok)
            tokens.append(tok)

    chars = string.ascii_lowercase + string.digits + ",.!?'-"
    for c in chars:
        add(c)
        add(c + "</w>")
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words)):
        # Segment the word with the merges so far, exactly as BPE will, then append merges
        # that finish it. Appended merges rank last, so words handled earlier (already one
        # token under the earlier merges) keep their segmentation.
        pieces = bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            add(pair[0] + pair[1])
            pieces = bpe(pieces, ranks)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair of lowest rank."""
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def save_tokenizer_files(folder: str | Path, words) -> Path:
    """Write vocab.json and merges.txt for `words` into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return folder


def make_tokenizer(folder: str | Path, words):
    """A `CLIPTokenizer` over `words`, saved in `folder` with the pipeline's file layout."""
    from transformers import CLIPTokenizer

    folder = save_tokenizer_files(folder, words)
    tok = CLIPTokenizer.from_pretrained(
        folder, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tok.save_pretrained(folder)
    return tok
