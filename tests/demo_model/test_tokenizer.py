"""The demo tokenizer: CLIP's file format and token layout, each known word one token."""

from webui.demo_model.scenes import VOCABULARY
from webui.demo_model.tokenizer import build_vocab, write_tokenizer
from webui.engine.models.text_encoders import load_clip_tokenizer


def test_every_word_is_one_token_and_other_text_still_tokenizes(tmp_path):
    size = write_tokenizer(tmp_path, VOCABULARY)
    tokenizer = load_clip_tokenizer(tmp_path)
    assert len(tokenizer) == size
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (size - 2, size - 1)  # CLIP's order: specials last
    for word in VOCABULARY:
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    assert tokenizer.encode("A Red, circle", add_special_tokens=False) == [
        tokenizer.get_vocab()[t] for t in ("a</w>", "red</w>", ",</w>", "circle</w>")]
    unknown = tokenizer.encode("zebra", add_special_tokens=False)
    assert len(unknown) > 1 and tokenizer.decode(unknown).strip() == "zebra"


def test_vocabulary_layout_is_clip_s():
    vocab, merges = build_vocab(["red", "green"])
    assert list(vocab)[:2] == ["!", '"'] and vocab["!</w>"] == 256
    assert list(vocab)[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert "".join(merges[-1]) in ("red</w>", "green</w>")
