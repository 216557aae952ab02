# Copied from ../shared/peers/torch_e2e_peers.py (the project's shared peer script) so that it travels
# to the device with the tree. Changes: the JSON is rewritten after every measurement (a run cut
# short by the device's time limit keeps what it measured), and the decode length is E2E_DECODE_TOKENS
# (default 128, as the original).
"""End-to-end peers on the lent GPU: Hugging Face transformers Llama-3-8B (random BF16 weights).

Two ways a PyTorch user runs it:
  - eager: dynamic cache, SDPA attention (what `model.generate` does by default);
  - compiled: static KV cache + torch.compile of the decode step (transformers compiles it itself when
    the cache is static) -- the fastest plain-PyTorch path, gpt-fast style.
Measures, after warm-up: TTFT (prefill, batch 1, prompt 1k and 4k), prefill tokens/s at batch 16 x 1k,
and decode tokens/s at batch 1 and 16 (decode time = generate(1+N) - generate(1)).
Writes $OUT/e2e_peers.json.
"""
import json, os, time
import torch

OUT = os.environ.get("OUT", "/tmp")
dev = "cuda"
res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": {}, "errors": []}


def timed(fn, iters=5, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


import transformers
from transformers import LlamaConfig, LlamaForCausalLM
res["transformers"] = transformers.__version__
cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                  attn_implementation="sdpa")
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device(dev):
    model = LlamaForCausalLM(cfg)
torch.set_default_dtype(torch.float32)
model.eval()
model.generation_config.pad_token_id = 0
R = res["rows"]


def save():
    json.dump(res, open(os.path.join(OUT, "e2e_peers.json"), "w"), indent=1)


with torch.no_grad():
    for S in (1024, 4096):
        ids = torch.randint(0, 128000, (1, S), device=dev)
        R[f"ttft_ms_bs1_S{S}"] = timed(lambda: model(ids, use_cache=False, logits_to_keep=1)) * 1e3
        print(f"TTFT bs1 S={S}: {R[f'ttft_ms_bs1_S{S}']:.1f} ms", flush=True)
        save()
    ids = torch.randint(0, 128000, (16, 1024), device=dev)
    t = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), iters=3, warm=1)
    R["prefill_tok_s_bs16_S1024"] = 16 * 1024 / t
    print(f"prefill bs16 x 1k: {R['prefill_tok_s_bs16_S1024']:.0f} tok/s", flush=True)
    save()
    del ids
    torch.cuda.empty_cache()

    N = int(os.environ.get("E2E_DECODE_TOKENS", "128"))
    for mode in ("eager", "compiled"):
        for bs in (1, 16):
            try:
                ids = torch.randint(0, 128000, (bs, 512), device=dev)
                kw = dict(do_sample=False)
                if mode == "compiled":
                    kw["cache_implementation"] = "static"
                gen = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
                gen(N + 1); gen(1)  # warm-up (compiles in 'compiled' mode)
                t1 = timed(lambda: gen(1), iters=3, warm=0)
                tN = timed(lambda: gen(N + 1), iters=3, warm=0)
                R[f"decode_tok_s_{mode}_bs{bs}"] = bs * N / (tN - t1)
                print(f"decode {mode} bs{bs}: {R[f'decode_tok_s_{mode}_bs{bs}']:.1f} tok/s "
                      f"({(tN - t1) / N * 1e3:.2f} ms/step)", flush=True)
                save()
            except Exception as e:
                msg = f"{mode} bs{bs}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                print("ERROR", msg, flush=True)
                res["errors"].append(msg)
                save()
save()
print("done", flush=True)
