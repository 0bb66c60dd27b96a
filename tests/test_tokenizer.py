"""The shapes-world CLIPTokenizer: every caption word is one token, unknown words fall into
letters, and the files load with the real CLIPTokenizer."""

from transformers import CLIPTokenizer

from helpers import shapes
from helpers.tokenizer import MODEL_MAX_LENGTH, bpe, build_vocab, make_tokenizer


def test_every_word_is_one_token(tmp_path):
    tok = make_tokenizer(tmp_path, shapes.VOCABULARY)
    tok = CLIPTokenizer.from_pretrained(tmp_path)                       # the real loading path
    for word in shapes.VOCABULARY:
        assert tok.tokenize(word) == [word + "</w>"], word
    assert tok.tokenize("a large blue square, center") == \
        ["a</w>", "large</w>", "blue</w>", "square</w>", ",</w>", "center</w>"]
    assert tok.model_max_length == MODEL_MAX_LENGTH


def test_longest_caption_fits_without_truncation(tmp_path):
    tok = make_tokenizer(tmp_path, shapes.VOCABULARY)
    longest = max((shapes.caption(a, t) for a in shapes.all_attributes() for t in range(len(shapes.TEMPLATES))),
                  key=lambda c: len(tok(c).input_ids))
    assert len(tok(longest).input_ids) <= MODEL_MAX_LENGTH, longest


def test_unknown_words_split_into_known_pieces(tmp_path):
    tok = make_tokenizer(tmp_path, shapes.VOCABULARY)
    ids = tok("a zebra qux!").input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert "".join(tok.convert_ids_to_tokens(ids[1:-1])).replace("</w>", " ").split() == ["a", "zebra", "qux", "!"]


def test_bpe_simulation_matches_the_order_trap():
    # "right" is merged before "triangle": a naive left-to-right chain for "triangle"
    # would be blocked by the earlier ("r", "i") merge. build_vocab must still make it whole.
    vocab, merges = build_vocab(["right", "triangle"])
    ranks = {m: i for i, m in enumerate(merges)}
    assert bpe(list("triangl") + ["e</w>"], ranks) == ["triangle</w>"]
    assert bpe(list("righ") + ["t</w>"], ranks) == ["right</w>"]
    assert all(a + b in vocab for a, b in merges)
