import json

import numpy as np
import pytest

import fireq

rng = np.random.default_rng()

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
    "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 96, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
}


def tiny_tensors():
    c = TINY_CONFIG
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
    return {name: (1.0 + 0.1 * rng.standard_normal(shape) if len(shape) == 1
                   else 0.08 * rng.standard_normal(shape)).astype(np.float32)
            for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random two-layer Llama written as a Hugging Face checkpoint with fireq's writer."""
    path = tmp_path_factory.mktemp("tiny")
    (path / "config.json").write_text(json.dumps(TINY_CONFIG))
    tensors = tiny_tensors()
    fireq.save_safetensors(path / "model.safetensors", tensors, metadata={"format": "pt"})
    return path, tensors


def test_inspect_hf_checkpoint(tiny_model):
    path, tensors = tiny_model
    info = fireq.inspect(path, metadata=True)
    assert info["format"] == "safetensors" and info["shards"] == 1
    assert info["config"]["hidden_size"] == 128 and info["config"]["num_key_value_heads"] == 2
    assert info["quantization_config"] is None
    assert info["metadata"] == {"format": "pt"}
    listed = {t["name"]: t for t in info["tensors"]}
    assert set(listed) == set(tensors)
    q = listed["model.layers.1.self_attn.k_proj.weight"]
    assert (q["dtype"], q["shape"], q["bytes"]) == ("F32", [64, 128], 64 * 128 * 4)
    assert info["file_bytes"] > sum(t["bytes"] for t in info["tensors"])


def test_inspect_gguf(real_model_path):
    info = fireq.inspect(real_model_path)
    assert info["format"] == "gguf" and info["tokenizer"] == "gpt2"
    assert info["config"]["num_hidden_layers"] == 30 and info["config"]["vocab_size"] == 49152
    assert {t["dtype"] for t in info["tensors"]} >= {"Q4_1", "F32"}
    assert "metadata" not in info


def test_safetensors_written_values_are_read_back(tiny_model, tmp_path):
    bits = rng.integers(0, 256, (3, 5), dtype=np.uint8)
    fireq.save_safetensors(tmp_path / "x.safetensors", {"codes": bits}, dtypes={"codes": "F8_E4M3"})
    info = fireq.inspect(tmp_path / "x.safetensors")
    assert info["tensors"] == [{"name": "codes", "dtype": "F8_E4M3", "shape": [3, 5], "bytes": 15}]


def test_quantize_tiny_model(tiny_model, tmp_path):
    path, _ = tiny_model
    out = tmp_path / "tiny-w4a8"
    summary = fireq.quantize(path, out, recipe="w4a8", verbose=False)
    assert summary["path"] == str(out) and summary["recipe"] == "w4a8" and summary["bytes"] > 0
    info = fireq.inspect(out)
    assert info["quantization_config"]["quant_method"] == "fireq"
    assert {"U8", "F8_E4M3"} <= {t["dtype"] for t in info["tensors"]}

    ids = rng.integers(0, TINY_CONFIG["vocab_size"], 24).tolist()
    reference = fireq.Model(path).logits(ids)
    quantized = fireq.Model(out).logits(ids)
    assert quantized.shape == reference.shape == (24, 96)
    assert not np.array_equal(quantized, reference)
    assert np.corrcoef(quantized.ravel(), reference.ravel())[0, 1] > 0.8


def test_quantize_bad_input(tiny_model, tmp_path):
    path, _ = tiny_model
    with pytest.raises(fireq.Error, match="already exists"):
        fireq.quantize(path, tmp_path, recipe="w4a8", verbose=False)
    with pytest.raises(fireq.Error, match="no-such-recipe"):
        fireq.quantize(path, tmp_path / "out", recipe="no-such-recipe", verbose=False)
    with pytest.raises(fireq.Error, match="missing-model"):
        fireq.quantize(tmp_path / "missing-model", tmp_path / "out", recipe="w4a8", verbose=False)
    with pytest.raises(fireq.Error, match="missing.txt"):
        fireq.quantize(path, tmp_path / "out", recipe="fireq-default", calib_text=tmp_path / "missing.txt",
                       verbose=False)
    assert not (tmp_path / "out").exists()


def test_inspect_bad_input(tmp_path):
    with pytest.raises(fireq.Error, match="nowhere.gguf"):
        fireq.inspect(tmp_path / "nowhere.gguf")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    with pytest.raises(fireq.Error, match="garbage.safetensors"):
        fireq.inspect(garbage)


def test_version():
    assert fireq.__version__.count(".") == 2


def test_recipes():
    assert {"fireq-default", "w4a8", "kv4", "none"} <= set(fireq.recipe_names())
    assert "group_size: 128" in fireq.recipe_yaml("fireq-default")


def test_quantize_real_model_with_calibration(real_model_path, eval_text, tmp_path):
    """The calibrated path (RoPE-aware key scaling) on the real model, with a tiny calibration set;
    the checkpoint then runs with its numerics simulated and its own tokenizer."""
    calib = tmp_path / "calib.txt"
    calib.write_text(eval_text[-4000:], encoding="utf-8")
    out = tmp_path / "smollm2-fireq"
    fireq.quantize(real_model_path, out, recipe="fireq-smollm2", calib_text=calib, calib_samples=1,
                   calib_seq_len=64, verbose=False)
    assert fireq.inspect(out)["quantization_config"]["recipe"]["name"] == "fireq-smollm2"
    model = fireq.Model(out, max_context=256)
    assert "simulated" in model.source_description
    ids = model.tokenizer.encode("The capital of France is")
    assert model.tokenizer.decode([int(model.logits(ids)[-1].argmax())]) == " Paris"
