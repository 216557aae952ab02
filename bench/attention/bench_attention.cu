// Times the attention kernels on the device: split-KV decode over a paged INT4 cache (GB/s on the
// KV bytes against the HBM bandwidth measured in the same run), the fused RoPE/quantize/cache
// write, and causal prefill (TFLOP/s). Llama-3-8B heads: 32 q / 8 kv, d = 128.
// Usage: bench_attention <out.json>: decode, the fused quantize, and every prefill kernel (also with the
// FP8 output option). The peers run in the same device call (bench/peers/torch_fbgemm_peers.py) and
// merge_results.py joins both files.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/graph_timing.h"
#include "fireq/cuda_check.h"
#include "fireq/kernels/attention.h"

namespace fa = fireq::attention;

namespace {

using fireq::bench::graph_median_us;

constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128;
constexpr int64_t kRotateBytes = 256LL << 20;  // rotate over >= 256 MB of cache: no L2 reuse (50 MB)

// Fills bytes with a hash; `mask` keeps FP8 codes finite or INT4 arbitrary.
__global__ void fill_random_bytes(uint8_t* p, int64_t n, uint32_t seed, uint8_t mask) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    p[i] = uint8_t(x) & mask;
  }
}

// BF16 values in [lo, hi) (scales).
__global__ void fill_random_bf16(uint16_t* p, int64_t n, uint32_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    p[i] = fireq::bf16_from_float(lo + (hi - lo) * (x & 0xFFFFFF) / 16777216.0f);
  }
}

// Reads n 16-byte words (8 in flight per thread); the XOR keeps the loads alive.
__global__ void read_stream(const uint4* p, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += 8 * stride) {
    uint4 x[8];
    #pragma unroll
    for (int u = 0; u < 8; ++u) x[u] = i + u * stride < n ? __ldcs(p + i + u * stride) : make_uint4(0, 0, 0, 0);
    #pragma unroll
    for (int u = 0; u < 8; ++u) acc ^= x[u].x ^ x[u].y ^ x[u].z ^ x[u].w;
  }
  if (acc == 0x12345678u) *sink = acc;
}

template <typename T>
T* device_alloc(int64_t count) {
  T* p = nullptr;
  FIREQ_CUDA_CHECK(cudaMalloc(&p, std::max<int64_t>(count, 1) * sizeof(T)));
  return p;
}

struct HbmBandwidth {
  double copy_gbps;  // device-to-device copy, bytes read plus written
  double read_gbps;  // read-only stream: the ceiling for a kernel that only reads (decode attention)
};

// Over 2 GiB, far beyond L2.
HbmBandwidth measure_hbm(cudaStream_t stream) {
  const int64_t bytes = 2LL << 30;
  uint8_t* a = device_alloc<uint8_t>(bytes);
  uint8_t* b = device_alloc<uint8_t>(bytes);
  fill_random_bytes<<<1024, 256, 0, stream>>>(a, bytes, 7, 0xFF);
  FIREQ_CUDA_CHECK_LAUNCH();
  const double copy_us = graph_median_us(
      [&] { FIREQ_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream)); }, 1, stream);
  int sms = 0;
  FIREQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  uint32_t* sink = device_alloc<uint32_t>(1);
  const double read_us = graph_median_us(
      [&] {
        read_stream<<<sms * 4, 512, 0, stream>>>(reinterpret_cast<const uint4*>(a), bytes / 16, sink);
        FIREQ_CUDA_CHECK_LAUNCH();
      },
      1, stream);
  FIREQ_CUDA_CHECK(cudaFree(a));
  FIREQ_CUDA_CHECK(cudaFree(b));
  FIREQ_CUDA_CHECK(cudaFree(sink));
  return HbmBandwidth{2.0 * bytes / copy_us / 1e3, bytes / read_us / 1e3};
}

struct Row {
  std::string json;
};

// One paged cache pool holding `instances` copies of a batch's pages, in shuffled order.
struct PagedBench {
  fa::PagedKvCache cache;
  std::vector<int32_t*> block_tables;
  int32_t* seq_lens = nullptr;
  int32_t* query_start = nullptr;
  uint8_t* q = nullptr;
  uint16_t* q_scale = nullptr;
  uint16_t* out = nullptr;
  void* workspace = nullptr;
  uint8_t* out_fp8 = nullptr;  // the FP8 output option (PagedAttentionArgs::out_fp8), when asked for
  float* out_fp8_scale = nullptr;
  uint32_t* fp8_workspace = nullptr;
  int total_queries = 0;
  int max_pages = 0;

  PagedBench(int batch, int ctx, int q_len, int page_size, int instances, cudaStream_t stream) {
    max_pages = (ctx + page_size - 1) / page_size;
    const int pages = max_pages * batch * instances;
    cache.layout = fa::PagedKvLayout{pages, page_size, kKvHeads, kHeadDim};
    cache.k = device_alloc<uint8_t>(cache.layout.data_bytes());
    cache.v = device_alloc<uint8_t>(cache.layout.data_bytes());
    cache.k_scale = device_alloc<uint16_t>(cache.layout.scale_count());
    cache.v_scale = device_alloc<uint16_t>(cache.layout.scale_count());
    fill_random_bytes<<<1024, 256, 0, stream>>>(cache.k, cache.layout.data_bytes(), 1, 0xFF);
    fill_random_bytes<<<1024, 256, 0, stream>>>(cache.v, cache.layout.data_bytes(), 2, 0xFF);
    fill_random_bf16<<<1024, 256, 0, stream>>>(cache.k_scale, cache.layout.scale_count(), 3, 0.05f, 0.3f);
    fill_random_bf16<<<1024, 256, 0, stream>>>(cache.v_scale, cache.layout.scale_count(), 4, 0.05f, 0.3f);
    FIREQ_CUDA_CHECK_LAUNCH();
    std::vector<int32_t> ids(pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(5));
    for (int i = 0; i < instances; ++i) {
      int32_t* table = device_alloc<int32_t>(int64_t(batch) * max_pages);
      FIREQ_CUDA_CHECK(cudaMemcpy(table, ids.data() + int64_t(i) * batch * max_pages,
                                  sizeof(int32_t) * batch * max_pages, cudaMemcpyHostToDevice));
      block_tables.push_back(table);
    }
    std::vector<int32_t> lens(batch, ctx), starts(batch + 1);
    for (int b = 0; b <= batch; ++b) starts[b] = b * q_len;
    seq_lens = device_alloc<int32_t>(batch);
    query_start = device_alloc<int32_t>(batch + 1);
    FIREQ_CUDA_CHECK(cudaMemcpy(seq_lens, lens.data(), sizeof(int32_t) * batch, cudaMemcpyHostToDevice));
    FIREQ_CUDA_CHECK(cudaMemcpy(query_start, starts.data(), sizeof(int32_t) * (batch + 1), cudaMemcpyHostToDevice));
    const int64_t q_elems = int64_t(batch) * q_len * kQHeads * kHeadDim;
    q = device_alloc<uint8_t>(q_elems);
    fill_random_bytes<<<256, 256, 0, stream>>>(q, q_elems, 6, 0x77);  // finite e4m3 codes
    q_scale = device_alloc<uint16_t>(int64_t(batch) * q_len * kQHeads);
    fill_random_bf16<<<256, 256, 0, stream>>>(q_scale, int64_t(batch) * q_len * kQHeads, 8, 0.01f, 0.02f);
    out = device_alloc<uint16_t>(q_elems);
    total_queries = batch * q_len;
    FIREQ_CUDA_CHECK_LAUNCH();
  }
  void enable_fp8_output() {
    out_fp8 = device_alloc<uint8_t>(int64_t(total_queries) * kQHeads * kHeadDim);
    out_fp8_scale = device_alloc<float>(total_queries);
    fp8_workspace = device_alloc<uint32_t>(2 * int64_t(total_queries));
  }
  ~PagedBench() {
    for (int32_t* t : block_tables) cudaFree(t);
    for (void* p : {static_cast<void*>(cache.k), static_cast<void*>(cache.v), static_cast<void*>(cache.k_scale),
                    static_cast<void*>(cache.v_scale), static_cast<void*>(seq_lens), static_cast<void*>(query_start),
                    static_cast<void*>(q), static_cast<void*>(q_scale), static_cast<void*>(out), workspace,
                    static_cast<void*>(out_fp8), static_cast<void*>(out_fp8_scale), static_cast<void*>(fp8_workspace)})
      cudaFree(p);
  }
  fa::PagedAttentionArgs args(int batch, int ctx, int q_len, int instance) const {
    fa::PagedAttentionArgs a;
    a.q = q;
    a.q_scale = q_scale;
    a.query_start = query_start;
    a.q_heads = kQHeads;
    a.max_query_len = q_len;
    a.max_seq_len = ctx;
    a.cache = cache;
    a.sequences = fa::PagedSequences{batch, block_tables[instance], max_pages, seq_lens};
    a.softmax_scale = 0.08838834764831845f;
    a.out = out;
    if (out_fp8) {
      a.out_fp8 = out_fp8;
      a.out_fp8_scale = out_fp8_scale;
      a.out_fp8_workspace = fp8_workspace;
      a.total_queries = total_queries;
    }
    return a;
  }
};

// `rotate`: cycle over >= 256 MB of caches so that every call reads HBM; otherwise one cache, re-read
// from L2 where it fits (what the peers' decode timing does).
// `fp8_output`: also write the FP8 copy of the output (its cost is in the time).
std::string decode_row(int batch, int ctx, int page_size, double hbm_gbps, cudaStream_t stream, bool rotate = true,
                       bool fp8_output = false) {
  const int64_t kv_bytes = int64_t(batch) * ctx * kKvHeads * (kHeadDim + 4);  // K, V nibbles + 2 BF16 scales
  const int instances =
      rotate ? static_cast<int>(std::clamp<int64_t>((kRotateBytes + kv_bytes - 1) / kv_bytes, 1, 256)) : 1;
  PagedBench bench(batch, ctx, 1, page_size, instances, stream);
  if (fp8_output) bench.enable_fp8_output();
  const size_t ws = fa::paged_attention_workspace_bytes(bench.args(batch, ctx, 1, 0));
  bench.workspace = ws ? device_alloc<uint8_t>(ws) : nullptr;
  const int calls = std::max(instances, 20);
  const double us = graph_median_us(
      [&] {
        for (int i = 0; i < calls; ++i)
          fa::paged_attention_splitkv(bench.args(batch, ctx, 1, i % instances), bench.workspace, stream);
      },
      calls, stream);
  const double gbps = kv_bytes / us / 1e3;
  const std::string variant = std::string(rotate ? "ours:splitkv_int4" : "ours:splitkv_int4:l2_warm") +
                              (fp8_output ? ":fp8_out" : "");
  std::printf("decode B=%2d ctx=%6d page=%3d %-32s: %8.1f us  %6.0f GB/s on KV bytes (%.0f%% of HBM read %.0f)\n",
              batch, ctx, page_size, variant.c_str(), us, gbps, 100 * gbps / hbm_gbps, hbm_gbps);
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"case\": \"decode\", \"B\": %d, \"ctx\": %d, \"page_size\": %d, \"variant\": \"%s\", "
                "\"us\": %.3f, \"kv_bytes\": %lld, \"gbps\": %.1f, \"hbm_fraction\": %.3f, \"rotated_instances\": %d}",
                batch, ctx, page_size, variant.c_str(), us,
                static_cast<long long>(kv_bytes), gbps, gbps / hbm_gbps, instances);
  return buf;
}

enum class PrefillKernel { fa2_mma_f16, fp8_wgmma_serial, fp8_wgmma_three_stage };

const char* prefill_variant(PrefillKernel k) {
  switch (k) {
    case PrefillKernel::fa2_mma_f16: return "ours:prefill_fa2_mma_f16_int4";
    case PrefillKernel::fp8_wgmma_serial: return "ours:prefill_fa3_wgmma_fp8_int4_serial";
    case PrefillKernel::fp8_wgmma_three_stage: return "ours:prefill_fa3_wgmma_fp8_int4_three_stage";
  }
  return "";
}

void run_prefill(PrefillKernel k, const fa::PagedAttentionArgs& a, cudaStream_t stream) {
  if (k == PrefillKernel::fa2_mma_f16) {
    fa::paged_attention_prefill(a, stream);
  } else {
    fa::paged_attention_prefill_fp8(a, stream,
                                    k == PrefillKernel::fp8_wgmma_serial ? fa::PrefillPipeline::serial
                                                                         : fa::PrefillPipeline::three_stage);
  }
}

// Causal prefill of S new tokens per sequence (no prefix), page 64; `fp8_output` as in decode_row.
std::string prefill_row(int batch, int seq, PrefillKernel kernel, cudaStream_t stream, bool fp8_output = false) {
  PagedBench bench(batch, seq, seq, 64, 1, stream);
  if (fp8_output) bench.enable_fp8_output();
  const std::string variant = std::string(prefill_variant(kernel)) + (fp8_output ? ":fp8_out" : "");
  const int calls = seq <= 2048 ? 10 : 1;  // short ones would otherwise time the graph launch
  const double us = graph_median_us(
      [&] {
        for (int i = 0; i < calls; ++i) run_prefill(kernel, bench.args(batch, seq, seq, 0), stream);
      },
      calls, stream);
  const double flops = 2.0 * 2.0 * batch * kQHeads * double(seq) * seq * kHeadDim / 2;  // causal
  std::printf("prefill B=%2d S=%6d %-54s: %10.1f us  %6.1f TFLOP/s\n", batch, seq, variant.c_str(), us,
              flops / us / 1e6);
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"case\": \"prefill\", \"B\": %d, \"S\": %d, \"variant\": \"%s\", \"us\": %.3f, \"tflops\": %.2f}",
                batch, seq, variant.c_str(), us, flops / us / 1e6);
  return buf;
}

// Fused RoPE/quantize/cache write for `tokens` tokens of one sequence (prefill) or one token each
// of `tokens` sequences (decode).
std::string quantize_row(int tokens, bool decode, double hbm_gbps, cudaStream_t stream) {
  const int batch = decode ? tokens : 1, ctx = decode ? 4096 : tokens, page_size = 64;
  PagedBench bench(batch, ctx, 1, page_size, 1, stream);
  const int64_t width = int64_t(kQHeads + 2 * kKvHeads) * kHeadDim;
  uint16_t* qkv = device_alloc<uint16_t>(tokens * width);
  fill_random_bf16<<<1024, 256, 0, stream>>>(qkv, tokens * width, 9, -2.0f, 2.0f);
  std::vector<int32_t> positions(tokens), seq_index(tokens);
  for (int t = 0; t < tokens; ++t) {
    positions[t] = decode ? ctx - 1 : t;
    seq_index[t] = decode ? t : 0;
  }
  int32_t* d_positions = device_alloc<int32_t>(tokens);
  int32_t* d_seq_index = device_alloc<int32_t>(tokens);
  FIREQ_CUDA_CHECK(cudaMemcpy(d_positions, positions.data(), sizeof(int32_t) * tokens, cudaMemcpyHostToDevice));
  FIREQ_CUDA_CHECK(cudaMemcpy(d_seq_index, seq_index.data(), sizeof(int32_t) * tokens, cudaMemcpyHostToDevice));
  const std::vector<float> table = fa::rope_cos_sin_table(kHeadDim, 500000.0, {true, 8.0, 1.0, 4.0, 8192}, ctx);
  float* d_table = device_alloc<float>(table.size());
  FIREQ_CUDA_CHECK(cudaMemcpy(d_table, table.data(), sizeof(float) * table.size(), cudaMemcpyHostToDevice));
  uint8_t* q8 = device_alloc<uint8_t>(int64_t(tokens) * kQHeads * kHeadDim);
  uint16_t* q_scale = device_alloc<uint16_t>(int64_t(tokens) * kQHeads);
  fa::QkvQuantizeArgs a;
  a.qkv = qkv;
  a.tokens = tokens;
  a.q_heads = kQHeads;
  a.positions = d_positions;
  a.seq_index = d_seq_index;
  a.rope_cos_sin = d_table;
  a.max_position = ctx;
  a.q_fp8 = q8;
  a.q_scale = q_scale;
  a.cache = bench.cache;
  a.sequences = fa::PagedSequences{batch, bench.block_tables[0], bench.max_pages, bench.seq_lens};
  constexpr int kCalls = 20;  // one graph launch costs microseconds: amortise it
  const double us = graph_median_us(
      [&] {
        for (int i = 0; i < kCalls; ++i) fa::quantize_qkv(a, stream);
      },
      kCalls, stream);
  const int64_t bytes = tokens * (width * 2 + kQHeads * (kHeadDim + 2) + 2 * kKvHeads * (kHeadDim / 2 + 2));
  std::printf("quantize_qkv %s tokens=%5d: %8.1f us  %6.0f GB/s\n", decode ? "decode " : "prefill", tokens, us,
              bytes / us / 1e3);
  for (void* p : {static_cast<void*>(qkv), static_cast<void*>(d_positions), static_cast<void*>(d_seq_index),
                  static_cast<void*>(d_table), static_cast<void*>(q8), static_cast<void*>(q_scale)})
    cudaFree(p);
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"case\": \"quantize_qkv_%s\", \"tokens\": %d, \"variant\": \"ours:rope_quant_cache_write\", "
                "\"us\": %.3f, \"gbps\": %.1f, \"hbm_fraction\": %.3f}",
                decode ? "decode" : "prefill", tokens, us, bytes / us / 1e3, bytes / us / 1e3 / hbm_gbps);
  return buf;
}

// All prefill shapes (S 512..16k, batch 1 and 16) for every prefill kernel, into a JSON of rows.
void prefill_suite(const char* path, cudaStream_t stream) {
  cudaDeviceProp prop;
  FIREQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::vector<std::string> rows;
  for (const int batch : {1, 16})
    for (const int seq : {512, 1024, 2048, 4096, 8192, 16384})
      for (const PrefillKernel k :
           {PrefillKernel::fp8_wgmma_three_stage, PrefillKernel::fp8_wgmma_serial, PrefillKernel::fa2_mma_f16})
        rows.push_back(prefill_row(batch, seq, k, stream));
  std::ofstream out(path);
  out << "{\"device\": \"" << prop.name << "\", \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) out << "  " << rows[i] << (i + 1 < rows.size() ? ",\n" : "\n");
  out << "]}\n";
  if (!out) fireq::fail("bench_attention: could not write ", path);
}

PrefillKernel prefill_kernel_named(const std::string& name) {
  if (name == "fa2") return PrefillKernel::fa2_mma_f16;
  if (name == "serial") return PrefillKernel::fp8_wgmma_serial;
  if (name == "three_stage") return PrefillKernel::fp8_wgmma_three_stage;
  fireq::fail("bench_attention: prefill kernel '", name, "' is not fa2, serial or three_stage");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc >= 3 ? argv[1] : "";
  // One case (for a profiler or a quick comparison); a trailing "fp8_out" adds the FP8 output option.
  const bool fp8_out = argc >= 5 && std::string(argv[argc - 1]) == "fp8_out";
  const int case_args = argc - (fp8_out ? 1 : 0);
  const bool one_case =
      (mode == "--decode" && case_args == 4) || (mode == "--prefill" && (case_args == 4 || case_args == 5));
  if (argc != 2 && !one_case && !(mode == "--prefill-suite" && argc == 3)) {
    std::fprintf(stderr,
                 "usage: %s <out.json> | --prefill-suite <out.json> | --decode <batch> <context> [fp8_out] | "
                 "--prefill <batch> <seq> [fa2|serial|three_stage] [fp8_out]  (one case)\n",
                 argv[0]);
    return 2;
  }
  try {
    cudaStream_t stream;
    FIREQ_CUDA_CHECK(cudaStreamCreate(&stream));
    if (mode == "--prefill-suite") {
      prefill_suite(argv[2], stream);
      return 0;
    }
    if (one_case) {
      if (mode == "--decode") {
        decode_row(std::stoi(argv[2]), std::stoi(argv[3]), 64, 1.0, stream, true, fp8_out);
      } else {
        prefill_row(std::stoi(argv[2]), std::stoi(argv[3]),
                    prefill_kernel_named(case_args == 5 ? argv[4] : "fa2"), stream, fp8_out);
      }
      return 0;
    }
    cudaDeviceProp prop;
    FIREQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const HbmBandwidth bw = measure_hbm(stream);
    const double hbm = bw.read_gbps;
    std::printf("%s: HBM read stream %.0f GB/s, device-to-device copy %.0f GB/s (read + write)\n", prop.name,
                bw.read_gbps, bw.copy_gbps);
    std::vector<std::string> rows;
    for (const int batch : {1, 4, 16, 64})
      for (const int ctx : {1024, 4096, 16384, 32768, 65536, 131072})
        if (int64_t(batch) * ctx <= 64LL * 32768) rows.push_back(decode_row(batch, ctx, 64, hbm, stream));
    for (const int batch : {1, 16})
      for (const int ctx : {1024, 4096, 16384}) rows.push_back(decode_row(batch, ctx, 64, hbm, stream, false));
    rows.push_back(decode_row(16, 16384, 16, hbm, stream));
    rows.push_back(decode_row(16, 16384, 256, hbm, stream));
    for (const int tokens : {1, 16, 64}) rows.push_back(quantize_row(tokens, true, hbm, stream));
    for (const int tokens : {4096, 16384}) rows.push_back(quantize_row(tokens, false, hbm, stream));
    rows.push_back(decode_row(1, 4096, 64, hbm, stream, true, true));
    rows.push_back(decode_row(16, 16384, 64, hbm, stream, true, true));
    for (const PrefillKernel kernel :
         {PrefillKernel::fp8_wgmma_three_stage, PrefillKernel::fp8_wgmma_serial, PrefillKernel::fa2_mma_f16})
      for (const int batch : {1, 16})
        for (const int seq : {512, 1024, 2048, 4096, 8192, 16384}) rows.push_back(prefill_row(batch, seq, kernel, stream));
    for (const int batch : {1, 16})
      rows.push_back(prefill_row(batch, 4096, PrefillKernel::fp8_wgmma_three_stage, stream, true));
    FIREQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::ofstream out(argv[1]);
    out << "{\"device\": \"" << prop.name << "\", \"hbm_read_gbps\": " << bw.read_gbps
        << ", \"hbm_copy_gbps\": " << bw.copy_gbps << ", \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) out << "  " << rows[i] << (i + 1 < rows.size() ? ",\n" : "\n");
    out << "]}\n";
    if (!out) fireq::fail("bench_attention: could not write ", argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }
  return 0;
}
