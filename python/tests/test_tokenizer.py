import pytest

import fireq

TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "Unicode: naïve café, Ελληνικά, 日本語のテキスト, emoji 🙂🚀",
    "Numbers 1234567 and code: def f(x): return x**2  # ok",
]


@pytest.fixture(scope="module")
def tokenizer(real_model_path):
    return fireq.load_tokenizer(real_model_path)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids and all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
    assert b"".join(tokenizer.token_to_piece(i) for i in ids).decode("utf-8") == text


def test_known_ids_and_special_tokens(tokenizer):
    assert tokenizer.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert tokenizer.vocab_size == 49152
    im_start = tokenizer.encode("<|im_start|>")
    assert len(im_start) == 1 and tokenizer.decode(im_start) == "<|im_start|>"


def test_model_tokenizer_is_the_same(real_model, tokenizer):
    assert real_model.tokenizer.encode(TEXTS[2]) == tokenizer.encode(TEXTS[2])


def test_bad_input(tokenizer, tmp_path):
    missing = tmp_path / "no-such-tokenizer.json"
    with pytest.raises(fireq.Error, match="no-such-tokenizer.json"):
        fireq.load_tokenizer(missing)
    with pytest.raises(fireq.Error):
        tokenizer.decode([tokenizer.vocab_size + 5])
