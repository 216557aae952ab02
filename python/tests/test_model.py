import os
import subprocess

import numpy as np
import pytest

import fireq

PROMPT = "The capital of France is"


def test_logits_greedy_continuation(real_model):
    ids = real_model.tokenizer.encode(PROMPT)
    logits = real_model.logits(ids)
    assert logits.shape == (len(ids), 49152) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert real_model.tokenizer.decode([int(logits[-1].argmax())]) == " Paris"


def test_generation_agrees_with_full_logits(real_model):
    """The stream decodes token by token through the KV cache; logits() recomputes the whole
    sequence at once: the greedy choices must be the same."""
    stream = real_model.stream(PROMPT, max_new_tokens=6)
    text = "".join(stream)
    generated = stream.tokens
    assert len(generated) == 6 and text.startswith(" Paris")
    ids = real_model.tokenizer.encode(PROMPT) + generated
    logits = real_model.logits(ids)
    prompt_len = len(ids) - len(generated)
    assert logits[prompt_len - 1:-1].argmax(axis=-1).tolist() == generated
    assert real_model.generate(PROMPT, max_new_tokens=6) == text


def test_generation_matches_the_cli(real_model, real_model_path):
    cli = os.environ.get("FIREQ_CLI")
    if not cli or not os.path.exists(cli):
        pytest.skip("FIREQ_CLI (the fireq executable) not built")
    out = subprocess.run([cli, "generate", "--model", str(real_model_path), "--prompt", PROMPT,
                          "--max-new-tokens", "8"],
                         capture_output=True, text=True, check=True).stdout
    assert out == real_model.generate(PROMPT, max_new_tokens=8) + "\n"


def test_sampling_is_seeded(real_model):
    kwargs = dict(max_new_tokens=5, temperature=0.8, top_k=40, top_p=0.95)
    a = real_model.generate(PROMPT, seed=7, **kwargs)
    assert a == real_model.generate(PROMPT, seed=7, **kwargs)
    others = {real_model.generate(PROMPT, seed=s, **kwargs) for s in range(8, 11)}
    assert others - {a}


def test_perplexity_matches_logits(real_model, eval_text):
    seq_len = 64
    ids = real_model.tokenizer.encode(eval_text)[:seq_len]
    logits = real_model.logits(ids).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -log_probs[np.arange(seq_len - 1), ids[1:]].mean()
    ppl = real_model.perplexity(eval_text, seq_len=seq_len, max_windows=1)
    assert ppl == pytest.approx(np.exp(nll), rel=1e-4)
    assert 1 < ppl < 1000


def test_interleaved_use_is_refused(real_model):
    stream = real_model.stream(PROMPT, max_new_tokens=4)
    next(stream)
    real_model.logits([1, 2, 3])
    with pytest.raises(fireq.Error, match="used by another call"):
        list(stream)


def test_bad_input(real_model, tmp_path):
    with pytest.raises(fireq.Error, match="exceed the model's context of 512"):
        real_model.generate(PROMPT, max_new_tokens=600)
    with pytest.raises(fireq.Error, match="max_new_tokens"):
        real_model.generate(PROMPT, max_new_tokens=0)
    with pytest.raises(fireq.Error, match="fewer than one window"):
        real_model.perplexity("short text", seq_len=64)
    with pytest.raises(fireq.Error, match="empty"):
        real_model.logits([])
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(np.random.default_rng().integers(0, 256, 60, dtype=np.uint8)))
    with pytest.raises(fireq.Error, match="broken.gguf"):
        fireq.Model(broken)


def test_device_choice(real_model_path):
    """device="cuda" opens the CUDA engine where a GPU is present and refuses clearly where not."""
    assert fireq.Model(real_model_path, max_context=64).device == "cpu"
    with pytest.raises(fireq.Error, match="'tpu' is not a device"):
        fireq.Model(real_model_path, max_context=64, device="tpu")
    try:
        gpu = fireq.Model(real_model_path, max_context=512, device="cuda")
    except fireq.Error as e:
        assert "none is present" in str(e) or "has no CUDA" in str(e), str(e)
        pytest.skip(f"no CUDA engine here: {e}")
    assert gpu.device == "cuda"
    ids = gpu.tokenizer.encode(PROMPT)
    assert gpu.tokenizer.decode([int(gpu.logits(ids)[-1].argmax())]) == " Paris"
    assert gpu.generate(PROMPT, max_new_tokens=3).startswith(" Paris")
