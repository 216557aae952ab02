"""FireQ from Python: INT4/FP8 numerics on numpy arrays, the CPU reference engine over GGUF,
Hugging Face and FireQ checkpoints, the FireQ quantizer, and checkpoint inspection.

Everything runs in the C++ core (the ``_fireq`` extension); this package only adapts arguments
and results to Python types. Failures raise ``fireq.Error`` (a ``ValueError``) whose message names
the file, tensor or field at fault.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from . import _fireq
from ._fireq import Error, Tokenizer, TextStream, __version__, load_tokenizer, recipe_names

__all__ = [
    "Error", "Tokenizer", "TextStream", "Model", "load_tokenizer", "quantize", "inspect",
    "recipe_names", "recipe_yaml", "save_safetensors", "fp8_e4m3", "fp8_e4m3_to_float",
    "quantize_int4", "dequantize_int4",
]


def _path(path: "os.PathLike[str] | str") -> str:
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------
# Numerics (include/fireq/numerics.h)

def fp8_e4m3(x) -> np.ndarray:
    """FP8 e4m3 codes (uint8, same shape) of ``x``, rounded as CUDA's saturating conversion."""
    return _fireq.fp8_e4m3(np.ascontiguousarray(x, dtype=np.float32))


def fp8_e4m3_to_float(codes) -> np.ndarray:
    """The float32 values of FP8 e4m3 ``codes`` (uint8)."""
    return _fireq.fp8_e4m3_to_float(np.ascontiguousarray(codes, dtype=np.uint8))


def quantize_int4(w, group: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT4 with FP8 e4m3 group scales along K of ``w`` [N, K] (K a multiple of
    ``group``): ``(packed uint8 [N, K/2], scales uint8 [N, K/group])``. Byte j of a row holds
    element 2j in its low nibble and 2j+1 in its high nibble (two's complement)."""
    return _fireq.quantize_int4(np.ascontiguousarray(w, dtype=np.float32), group)


def dequantize_int4(packed, scales, group: int = 128) -> np.ndarray:
    """The inverse of :func:`quantize_int4`: float32 [N, K] = q * scale."""
    return _fireq.dequantize_int4(np.ascontiguousarray(packed, dtype=np.uint8),
                                  np.ascontiguousarray(scales, dtype=np.uint8), group)


# ---------------------------------------------------------------------------------------------
# Models

class Model:
    """A model: a GGUF file, a Hugging Face checkpoint directory, or a FireQ checkpoint.

    ``device="cpu"`` runs the CPU reference engine (a FireQ checkpoint with the GPU kernels'
    quantized numerics simulated, as ``fireq ppl``); ``device="cuda"`` runs the CUDA engine (a
    FireQ checkpoint on the FireQ kernels: INT4 weights and KV cache, FP8 activations; anything
    else on its BF16 path), as ``--device cuda``.

    One sequence at a time: ``logits`` and ``perplexity`` start from an empty KV cache, and a
    generation in progress is invalidated by any other call on the same model.
    """

    def __init__(self, path: "os.PathLike[str] | str", max_context: int = 0, device: str = "cpu"):
        """``max_context``: the longest sequence (tokens); 0 uses the model's
        max_position_embeddings (the KV cache is allocated for it). ``device``: "cpu" or "cuda"."""
        self.path = _path(path)
        self._model = _fireq.Model(self.path, max_context, device)

    @property
    def device(self) -> str:
        """"cpu" or "cuda": the engine this model runs on."""
        return self._model.device

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (loaded on first use)."""
        return self._model.tokenizer

    @property
    def config(self) -> dict:
        """The model's configuration as Hugging Face config.json fields."""
        return json.loads(self._model.config_json)

    @property
    def source_description(self) -> str:
        return self._model.source_description

    @property
    def max_context(self) -> int:
        return self._model.max_context

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [len(ids), vocab]: the logits after every token of ``ids`` (from position 0)."""
        return self._model.logits([int(i) for i in ids])

    def stream(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0, add_bos: bool = False) -> TextStream:
        """Generation as an iterator of text pieces (whole UTF-8 characters), ending at EOS or
        after ``max_new_tokens``. ``temperature`` 0 is greedy; the stream's ``tokens`` are the ids."""
        return self._model.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed, add_bos)

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, add_bos: bool = False) -> str:
        """The continuation of ``prompt`` (without the prompt), as ``fireq generate`` samples it."""
        return "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed, add_bos))

    def perplexity(self, text: str, seq_len: int = 2048, max_windows: int = 0, chunk: int = 512,
                   verbose: bool = False) -> float:
        """WikiText-style perplexity of ``text`` (docs/EVALUATION.md): non-overlapping windows of
        ``seq_len`` tokens, each from an empty cache, the first ``max_windows`` (0: all)."""
        return self._model.perplexity(text, seq_len, max_windows, chunk, verbose)


# ---------------------------------------------------------------------------------------------
# Checkpoints

def quantize(model_path, out_dir, recipe: str = "fireq-default", calib_text=None,
             calib_samples: Optional[int] = None, calib_seq_len: Optional[int] = None,
             max_shard_mb: int = 2048, verbose: bool = True) -> dict:
    """FireQ post-training quantization of ``model_path`` (HF directory or GGUF file) into the
    FireQ checkpoint ``out_dir`` (must not exist; written atomically), as ``fireq quantize``.

    ``recipe`` is a preset name (:func:`recipe_names`) or a recipe YAML file. ``calib_text`` (a
    text file), ``calib_samples`` and ``calib_seq_len`` override the recipe's calibration; a
    relative ``calib_text`` in the recipe is taken from the current directory. Returns
    ``{"path", "bytes", "recipe", "seconds"}``; progress goes to stderr when ``verbose``."""
    summary = _fireq.quantize(_path(model_path), _path(out_dir), _path(recipe),
                              None if calib_text is None else _path(calib_text),
                              calib_samples, calib_seq_len, max_shard_mb << 20, verbose)
    return json.loads(summary)


def inspect(path, metadata: bool = False) -> dict:
    """What a checkpoint (.gguf file, .safetensors file or HF / FireQ directory) holds:
    ``format``, ``config`` (HF config.json fields), ``tensors`` (name, dtype, shape, bytes),
    ``file_bytes``, ``tokenizer``; for safetensors also ``shards`` and ``quantization_config``
    (FireQ checkpoints: the recipe). ``metadata=True`` adds the GGUF metadata or safetensors
    ``__metadata__``."""
    return json.loads(_fireq.inspect_json(_path(path), metadata))


def recipe_yaml(name_or_path: str) -> str:
    """A preset or recipe file with every field resolved, as YAML."""
    return _fireq.recipe_yaml(_path(name_or_path))


_SAFETENSORS_DTYPES = {
    np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64",
}


def save_safetensors(path, tensors: Mapping[str, np.ndarray],
                     metadata: Optional[Mapping[str, str]] = None,
                     dtypes: Optional[Mapping[str, str]] = None) -> None:
    """Writes ``tensors`` to one safetensors file atomically with fireq's writer. The dtype comes
    from the array (float32, float16, int8, uint8, int32, int64) unless ``dtypes`` names a
    safetensors dtype for the tensor, e.g. ``"BF16"`` or ``"F8_E4M3"`` over uint16 / uint8 bits."""
    names, dtype_names, shapes, data = [], [], [], []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = (dtypes or {}).get(name) or _SAFETENSORS_DTYPES.get(array.dtype)
        if dtype is None:
            raise Error(f"save_safetensors {_path(path)}: tensor {name}: unsupported dtype {array.dtype}")
        names.append(name)
        dtype_names.append(dtype)
        shapes.append(list(array.shape))
        data.append(array.reshape(-1).view(np.uint8))
    _fireq.save_safetensors(_path(path), names, dtype_names, shapes, data, dict(metadata or {}))
