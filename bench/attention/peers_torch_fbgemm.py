"""Copied from ../shared/peers/torch_fbgemm_peers.py (2026-11-25) for the attention benchmark, so that it travels
to the device with the tree. Changes: decode also at context 1024; prefill over S in {512..16k} x batch {1, 16}.

The strongest W4A8 / INT4-KV peers that run on the lent GPU: FBGEMM GenAI's kernels, beside cuBLAS.

FBGEMM GenAI (Meta's inference kernels, used to serve Llama 4) ships the same kernel classes as FireQ:
  - f8i4bf16_shuffled: INT4 weights (group 128, FP8 group scales + per-row scale, preshuffled) x FP8
    per-token activations, CUTLASS mixed-input wgmma -> BF16. FireQ's GEMM class.
  - f8f8bf16_rowwise: FP8 x FP8 with row/column scales (CUTLASS).
  - bf16i4bf16_shuffled: INT4 weights x BF16 activations (W4A16).
  - gqa_attn_splitk: decode attention over a BF16, FP8 or INT4 KV cache (INT4: per-row fp16 scale and
    shift, then packed nibbles; one KV head per call, so Llama GQA runs as B*n_kv MQA problems).
Everything is timed in one process through CUDA graphs, weights rotated so that they come from HBM.

Set-up on the device (no network there): carry the wheels `fbgemm-gpu-genai==1.6.0` (pairs with torch
2.11; a wheel built for another torch fails to load) and, for the FP8 prefill peer, `nvidia-cudnn-frontend`;
install with `pip install --no-deps --target /tmp/site` and put /tmp/site on PYTHONPATH.
Writes $OUT/fbgemm_peers.json; prints one line per case.
"""
import json, math, os, sys, time
import torch
import torch.nn.functional as F

OUT = os.environ.get("OUT", "/tmp")
PARTS = os.environ.get("PARTS", "gemm,decode,prefill").split(",")
dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "gemm": [], "decode": [],
       "prefill": [], "errors": []}


def graph_us(fn, rep, nb):
    """Median µs per call of fn(i), i rotating over nb buffers, from a CUDA graph of rep calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            fn(i % nb)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for r in range(rep):
            fn(r % nb)
    g.replay(); torch.cuda.synchronize()
    ts = []
    for _ in range(11):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / rep)
    ts.sort()
    del g
    return ts[len(ts) // 2]


def attempt(tag, fn):
    try:
        return fn()
    except Exception as e:  # a peer that fails is recorded, not fatal
        msg = f"{tag}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print("ERROR", msg, flush=True)
        res["errors"].append(msg)
        return None


t0 = time.time()
import fbgemm_gpu.experimental.gen_ai  # noqa: F401  (registers torch.ops.fbgemm.*)
from fbgemm_gpu.experimental.gen_ai.quantize import quantize_int4_preshuffle

# ---------------------------------------------------------------- GEMM
if "gemm" in PARTS:
    one = torch.ones((), device=dev)
    shapes = {"l3_qkv": (6144, 4096), "l3_o": (4096, 4096), "l3_gate_up": (28672, 4096), "l3_down": (4096, 14336)}
    Ms = [int(m) for m in os.environ.get("GEMM_M", "1,4,16,32,64,128,256,1024,4096,16384").split(",")]
    for name, (N, K) in shapes.items():
        nb = min(16, max(3, math.ceil(512e6 / (N * K * 2))))  # >= 512 MB of BF16, >= 128 MB of INT4
        W = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(nb)]
        W8 = [w.to(torch.float8_e4m3fn) for w in W]
        Wr = [torch.ops.fbgemm.quantize_fp8_per_row(w) for w in W]           # (wq, w_scale)
        Wi4 = [quantize_int4_preshuffle(w) for w in W]                        # (wq, (group_scale, row_scale))
        Wb4 = [quantize_int4_preshuffle(w, dtype="bf16") for w in W]          # (wq, (group_scale, group_zero))
        for M in Ms:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            x8 = x.to(torch.float8_e4m3fn)
            xq, xs = torch.ops.fbgemm.quantize_fp8_per_row(x)
            rep = 50 if M <= 256 else (20 if M <= 1024 else 5)
            peers = {
                "cublas_bf16": lambda i: x @ W[i].t(),
                "cublaslt_fp8": lambda i: torch._scaled_mm(x8, W8[i].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                "fbgemm_f8f8_rowwise": lambda i: torch.ops.fbgemm.f8f8bf16_rowwise(xq, Wr[i][0], xs, Wr[i][1]),
                "fbgemm_f8i4_g128": lambda i: torch.ops.fbgemm.f8i4bf16_shuffled(xq, Wi4[i][0], xs, Wi4[i][1][1], Wi4[i][1][0]),
                "fbgemm_bf16i4_g128": lambda i: torch.ops.fbgemm.bf16i4bf16_shuffled(x, Wb4[i][0], Wb4[i][1][0], Wb4[i][1][1]),
            }
            row = {"case": name, "M": M, "N": N, "K": K, "us": {}}
            for p, fn in peers.items():
                us = attempt(f"gemm {name} M={M} {p}", lambda: graph_us(fn, rep, nb))
                row["us"][p] = us
            if M == 64:  # sanity: the INT4 peer computes the product (relative error vs BF16)
                ref = (x.float() @ W[0].float().t())
                y = attempt("f8i4 check", lambda: torch.ops.fbgemm.f8i4bf16_shuffled(xq, Wi4[0][0], xs, Wi4[0][1][1], Wi4[0][1][0]).float())
                if y is not None:
                    row["f8i4_rel_err"] = ((y - ref).norm() / ref.norm()).item()
            u = row["us"]
            fp8 = u.get("cublaslt_fp8")
            txt = " ".join(f"{p}={v:.1f}" if v else f"{p}=fail" for p, v in u.items())
            ratio = f" f8i4/fp8={fp8 / u['fbgemm_f8i4_g128']:.2f}x" if fp8 and u.get("fbgemm_f8i4_g128") else ""
            i4 = u.get("fbgemm_f8i4_g128")
            bw = f" f8i4_GBps(int4 bytes)={N * K / 2 / i4 / 1e3:.0f}" if i4 else ""
            print(f"{name:10s} M={M:5d} {txt}{ratio}{bw}", flush=True)
            res["gemm"].append(row)
        del W, W8, Wr, Wi4, Wb4
        torch.cuda.empty_cache()
    print(f"gemm done {time.time() - t0:.0f}s", flush=True)

# ---------------------------------------------------------------- decode attention
if "decode" in PARTS:
    from torch.nn.attention import sdpa_kernel, SDPBackend
    hq, hkv, d = 32, 8, 128
    g = hq // hkv
    for B in (1, 16, 64):
        for ctx in (1024, 4096, 16384, 32768):
            if B * ctx > 64 * 16384:
                continue
            row = {"B": B, "ctx": ctx, "us": {}, "kv_bytes": {}}
            seqpos = torch.full((B * hkv,), ctx - 1, dtype=torch.int32, device=dev)
            q4 = torch.randn(B * hkv, 1, g, d, device=dev, dtype=torch.bfloat16)
            for dtype_name, logical, row_bytes in (("bf16", 0, None), ("fp8", 1, d + 4), ("int4", 2, d // 2 + 4)):
                if logical == 0:
                    ck = torch.randn(B * hkv, ctx, 1, d, device=dev, dtype=torch.bfloat16)
                    nbytes = ck.numel() * 2 * 2
                else:
                    ck = torch.randint(0, 256, (B * hkv, ctx, 1, row_bytes), device=dev, dtype=torch.uint8)
                    h = ck.view(torch.float16)
                    h[..., 0] = 0.01   # per-row scale
                    h[..., 1] = -0.08  # per-row shift
                    nbytes = ck.numel() * 2
                cv = ck.clone()
                best = None
                for splits in (8, 16, 32):
                    us = attempt(f"decode B={B} ctx={ctx} fbgemm_{dtype_name} split={splits}",
                                 lambda: graph_us(lambda i: torch.ops.fbgemm.gqa_attn_splitk(
                                     q4, ck, cv, seqpos, 1.0 / math.sqrt(d), splits, 1, True, logical), 20, 1))
                    if us and (best is None or us < best):
                        best = us
                row["us"][f"fbgemm_{dtype_name}"] = best
                row["kv_bytes"][dtype_name] = nbytes
                del ck, cv
            q = torch.randn(B, hq, 1, d, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, hkv, ctx, d, device=dev, dtype=torch.bfloat16)
            v = torch.randn_like(k)
            for name, be in (("sdpa_cudnn_bf16", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash_bf16", SDPBackend.FLASH_ATTENTION)):
                def run(i, be=be):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                row["us"][name] = attempt(f"decode B={B} ctx={ctx} {name}", lambda: graph_us(run, 20, 1))
            del q, k, v
            torch.cuda.empty_cache()
            u = row["us"]
            txt = " ".join(f"{p}={x:.1f}us" if x else f"{p}=fail" for p, x in u.items())
            gb = " ".join(f"{t}={row['kv_bytes'][t] / u['fbgemm_' + t] / 1e3:.0f}GB/s" for t in row["kv_bytes"] if u.get("fbgemm_" + t))
            print(f"decode B={B:2d} ctx={ctx:5d} {txt} | {gb}", flush=True)
            res["decode"].append(row)
    print(f"decode done {time.time() - t0:.0f}s", flush=True)

# ---------------------------------------------------------------- prefill attention, FP8 (cuDNN) vs BF16
if "prefill" in PARTS:
    from torch.nn.attention import sdpa_kernel, SDPBackend
    hq, hkv, d = 32, 8, 128

    def cudnn_fp8_sdpa(B, S):
        import cudnn
        handle = cudnn.create_handle()
        dt = cudnn.data_type
        qf = (torch.randn(B, S, hq, d, device=dev) * 0.5).to(torch.float8_e4m3fn).permute(0, 2, 1, 3)  # B,H,S,D view of BSHD
        kf = (torch.randn(B, S, hkv, d, device=dev) * 0.5).to(torch.float8_e4m3fn).permute(0, 2, 1, 3)
        vf = (torch.randn(B, S, hkv, d, device=dev) * 0.5).to(torch.float8_e4m3fn).permute(0, 2, 1, 3)
        of = torch.empty(B, S, hq, d, device=dev, dtype=torch.float8_e4m3fn).permute(0, 2, 1, 3)
        sc = {n: torch.ones(1, 1, 1, 1, device=dev, dtype=torch.float32) for n in
              ("dq", "dk", "dv", "ds", "ss", "so")}
        amax_s = torch.zeros(1, 1, 1, 1, device=dev, dtype=torch.float32)
        amax_o = torch.zeros_like(amax_s)
        graph = cudnn.pygraph(io_data_type=dt.FP8_E4M3, intermediate_data_type=dt.FLOAT,
                              compute_data_type=dt.FLOAT, handle=handle)
        gq = graph.tensor_like(qf.view(torch.uint8)).set_data_type(dt.FP8_E4M3)
        gk = graph.tensor_like(kf.view(torch.uint8)).set_data_type(dt.FP8_E4M3)
        gv = graph.tensor_like(vf.view(torch.uint8)).set_data_type(dt.FP8_E4M3)
        gs = {n: graph.tensor_like(t) for n, t in sc.items()}
        o, stats, a_s, a_o = graph.sdpa_fp8(q=gq, k=gk, v=gv, descale_q=gs["dq"], descale_k=gs["dk"],
                                            descale_v=gs["dv"], descale_s=gs["ds"], scale_s=gs["ss"],
                                            scale_o=gs["so"], generate_stats=False,
                                            attn_scale=1.0 / math.sqrt(d), use_causal_mask=True)
        o.set_output(True).set_dim(list(of.shape)).set_stride(list(of.stride())).set_data_type(dt.FP8_E4M3)
        a_s.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(dt.FLOAT)
        a_o.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(dt.FLOAT)
        graph.validate(); graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support(); graph.build_plans()
        ws = torch.empty(graph.get_workspace_size(), device=dev, dtype=torch.uint8)
        pack = {gq: qf.view(torch.uint8), gk: kf.view(torch.uint8), gv: vf.view(torch.uint8),
                o: of.view(torch.uint8), a_s: amax_s, a_o: amax_o}
        pack.update({gs[n]: sc[n] for n in sc})
        stream = torch.cuda.current_stream().cuda_stream
        cudnn.set_stream(handle=handle, stream=stream)
        for _ in range(3):
            graph.execute(pack, ws, handle=handle)
        torch.cuda.synchronize()
        ts = []
        for _ in range(10):
            a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
            a.record(); graph.execute(pack, ws, handle=handle); b.record(); torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) * 1e3)
        ts.sort()
        return ts[len(ts) // 2]

    for B, S in [(b, s) for b in (1, 16) for s in (512, 1024, 2048, 4096, 8192, 16384)]:
        flops = 2 * 2 * B * hq * S * S * d / 2  # causal: QK^T and PV over half the square
        row = {"B": B, "S": S, "us": {}}
        q = torch.randn(B, hq, S, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, hkv, S, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        for name, be in (("sdpa_cudnn_bf16", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash_bf16", SDPBackend.FLASH_ATTENTION)):
            def run(i, be=be):
                with sdpa_kernel(be):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            row["us"][name] = attempt(f"prefill B={B} S={S} {name}", lambda: graph_us(run, 5, 1))
        del q, k, v
        row["us"]["cudnn_fp8"] = attempt(f"prefill B={B} S={S} cudnn_fp8", lambda: cudnn_fp8_sdpa(B, S))
        torch.cuda.empty_cache()
        u = row["us"]
        txt = " ".join(f"{p}={flops / x / 1e6:.0f}TFLOPs" if x else f"{p}=fail" for p, x in u.items())
        print(f"prefill B={B:2d} S={S:5d} {txt}", flush=True)
        res["prefill"].append(row)

json.dump(res, open(os.path.join(OUT, "fbgemm_peers.json"), "w"), indent=1)
print(f"done {time.time() - t0:.0f}s; errors: {len(res['errors'])}", flush=True)
