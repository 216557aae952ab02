"""Writes tests/io/data/dequant_golden.gguf: for each ggml block type FireQ decodes, random blocks
(finite scales) as tensor `<TYPE>` and their dequantization by the gguf Python package (an
independent implementation, the one llama.cpp ships) as F32 tensor `<TYPE>.expected`.

    pip install gguf==0.19.0 numpy
    python tests/io/make_dequant_golden.py
"""
import pathlib

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# Byte offsets of each block's fp16 scale fields, set to finite values (random bits may be inf/nan).
FP16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
               T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
ROWS = 2

rng = np.random.default_rng(20261125)
out = pathlib.Path(__file__).parent / "data" / "dequant_golden.gguf"
writer = gguf.GGUFWriter(str(out), "fireq-test")
for qtype in FP16_FIELDS:  # Q8_K: the gguf package has no decoder for it
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks_per_row = max(1, 512 // block_elements)
    raw = rng.integers(0, 256, size=(ROWS * blocks_per_row, block_bytes), dtype=np.uint8)
    for offset in FP16_FIELDS.get(qtype, []):
        scale = rng.uniform(0.001, 0.1, size=raw.shape[0]).astype(np.float16)
        raw[:, offset:offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    raw = raw.reshape(ROWS, blocks_per_row * block_bytes)
    writer.add_tensor(qtype.name, raw, raw_dtype=qtype)
    writer.add_tensor(qtype.name + ".expected", dequantize(raw, qtype).astype(np.float32))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print("wrote", out, out.stat().st_size, "bytes")
