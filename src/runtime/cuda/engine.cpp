// The CUDA engine's host side: weights and buffers (from the memory plan), the KV page pool and
// the sequences that own pages, and one step = one pass over the layers for every token of every
// chunk (the order of ops is the CPU reference engine's, src/runtime/cpu/engine.cpp). The FireQ
// path's layers live in fireq_path.cpp; pure decode steps on it replay CUDA graphs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <utility>

#include "fireq/cuda_check.h"
#include "fireq/cuda_engine.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "device_arena.h"
#include "fireq_path.h"
#include "gemm_bf16.h"
#include "kernels.h"
#include "plan_sizes.h"

namespace fireq {

using namespace cuda_runtime;

namespace {

struct LayerWeights {
  float* attn_norm;
  float* ffn_norm;
  float* qkv_bias;      // null unless attention_bias
  uint16_t* wqkv;       // [q + 2 kv][hidden]
  uint16_t* wo;         // [hidden][q]
  uint16_t* w_gate_up;  // [2 inter][hidden]: gate rows, then up rows
  uint16_t* w_down;     // [hidden][inter]
};

struct Sequence {
  bool alive = false;
  int length = 0;
  std::vector<int32_t> pages;
  SamplingOptions sampling;
};

std::vector<uint16_t> to_bf16(const float* data, size_t count) {
  std::vector<uint16_t> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = bf16_from_float(data[i]);
  return out;
}

void check_tensor(const FloatTensor& t, int64_t rows, int64_t cols, const std::string& name) {
  if (t.numel() != rows * cols || static_cast<int64_t>(t.data.size()) != rows * cols)
    fail("CUDA engine: model weight ", name, " has ", t.data.size(), " values, expected [", rows, ", ", cols, "]");
}

void put_bf16(uint16_t* dst, const FloatTensor& t, int64_t rows, int64_t cols, const std::string& name) {
  check_tensor(t, rows, cols, name);
  const std::vector<uint16_t> b = to_bf16(t.data.data(), t.data.size());
  FIREQ_CUDA_CHECK(cudaMemcpy(dst, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
}

void put_f32(float* dst, const FloatTensor& t, int64_t size, const std::string& name) {
  check_tensor(t, size, 1, name);
  FIREQ_CUDA_CHECK(cudaMemcpy(dst, t.data.data(), size * 4, cudaMemcpyHostToDevice));
}

int next_power_of_two(int n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

int device_sm_count() {
  int device = 0, sms = 0;
  FIREQ_CUDA_CHECK(cudaGetDevice(&device));
  FIREQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

CudaDeviceInfo cuda_device_info() {
  int device = 0;
  FIREQ_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp properties{};
  FIREQ_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  size_t free_bytes = 0, total_bytes = 0;
  FIREQ_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return {.name = properties.name, .sm_count = properties.multiProcessorCount,
          .free_bytes = static_cast<int64_t>(free_bytes), .total_bytes = static_cast<int64_t>(total_bytes)};
}

struct CudaEngine::Impl {
  LlamaConfig config;
  CudaEngineOptions options;
  CudaModelFormat format;
  int max_context = 0;
  CudaMemoryPlan plan;
  int sm_count = 0;
  cudaStream_t stream = nullptr;
  cudaEvent_t metadata_copied = nullptr;

  std::unique_ptr<DeviceArena> weight_arena, activation_arena, kv_arena;
  uint16_t* embeddings = nullptr;  // [vocab][hidden]
  uint16_t* lm_head = nullptr;     // == embeddings when tied
  float* final_norm = nullptr;
  std::vector<LayerWeights> layers;             // BF16 path
  std::unique_ptr<FireqLayers> fireq_layers;    // FireQ path
  uint16_t* residual_bf16 = nullptr;            // FireQ path: the BF16 residual stream
  int scratch_page = -1;                        // FireQ path: written by the padded rows of graphs

  float *residual = nullptr, *qkv = nullptr, *q = nullptr, *gate_up = nullptr, *logits = nullptr;
  float *rope_table = nullptr, *attention_workspace = nullptr;
  uint16_t *normed = nullptr, *attended = nullptr, *activated = nullptr, *logit_inputs = nullptr;
  int32_t* metadata = nullptr;   // device copy of the step's metadata
  int32_t* host_metadata = nullptr;  // pinned
  int64_t metadata_capacity = 0;
  std::unique_ptr<Bf16Gemm> gemm;
  KvPool pool;

  // Sampling: one RNG state per sequence slot, per-row options, tokens, NaN counter, sort space.
  uint64_t* rng_states = nullptr;
  RowSampling* row_options = nullptr;
  int32_t* sampled = nullptr;
  int* nan_rows = nullptr;
  void* sort_workspace = nullptr;
  size_t sort_workspace_bytes = 0;
  RowSampling* host_row_options = nullptr;  // pinned
  int32_t* host_sampled = nullptr;          // pinned

  std::vector<Sequence> sequences;
  std::vector<int32_t> free_pages;
  std::vector<int> last_step_sequences;  // the chunks' sequences of the last step
  int last_logit_rows = 0;
  int default_sequence = -1;

  // Profiling: an event after each op of a step, named by the op.
  bool profiling = false;
  std::vector<std::pair<const char*, cudaEvent_t>> marks;  // this step's, in order
  std::vector<cudaEvent_t> spare_events;
  std::vector<std::pair<std::string, double>> profile;

  // Decode graphs by (batch bucket, context bucket): a key's first step runs eagerly (cuBLASLt
  // tunes, kernels set their attributes), its second is captured, later ones replay.
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs;
  std::set<std::pair<int, int>> warmed_up;
  int64_t graph_replays = 0;

  void mark(const char* op);
  void collect_profile();

  Impl(const LlamaConfig& c, const CudaEngineOptions& o, const CudaModelFormat& f);
  ~Impl();
  void allocate_weights();
  void upload(const LlamaWeights& w);
  void upload(const QuantizedModel& model);
  void randomize(uint64_t seed);
  void run(std::span<const Chunk> chunks, bool all_logits);

  // What one step's launches need beyond the metadata's device copy.
  struct Launch {
    StepMetadata step;           // BF16 path
    AttentionArgs attention;     // BF16 path
    FireqStep fireq;             // FireQ path
    const int32_t* logit_rows = nullptr;
    int rows = 0;
  };
  void launch_forward(const Launch& launch);
  void replay_or_capture(std::pair<int, int> key, const Launch& launch);
  // The decode graph bucket for `chunks` one-token chunks: the next power of two, at most the
  // engine's limits; 0 when graphs are off.
  int graph_bucket(int chunks) const;
  int pages_needed(const Sequence& s, int more) const {
    return pages_per_sequence(s.length + more, options.page_size) - static_cast<int>(s.pages.size());
  }
  Sequence& sequence(int id) {
    if (id < 0 || id >= static_cast<int>(sequences.size()) || !sequences[id].alive)
      fail("CUDA engine: sequence ", id, " does not exist");
    return sequences[id];
  }
};

CudaEngine::Impl::Impl(const LlamaConfig& c, const CudaEngineOptions& o, const CudaModelFormat& f)
    : config(c), options(o), format(f) {
  if (cuda_device_count() == 0) fail("CUDA engine: no CUDA device is present");
  if (c.head_dim != 64 && c.head_dim != 128)
    fail("CUDA engine: head_dim ", c.head_dim, " is not supported by the BF16 attention (64 or 128)");
  if (c.num_attention_heads % c.num_key_value_heads != 0 || c.gqa_group() > kAttentionRows)
    fail("CUDA engine: GQA group ", c.num_attention_heads, "/", c.num_key_value_heads, " is not supported");
  max_context = o.max_context > 0 ? o.max_context : c.max_position_embeddings;
  size_t free_bytes = 0, total_bytes = 0;
  FIREQ_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  plan = plan_cuda_memory(c, o, static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes), format);
  if (o.print_plan) std::fprintf(stderr, "[cuda] %s\n", plan.describe().c_str());
  sm_count = device_sm_count();
  FIREQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  FIREQ_CUDA_CHECK(cudaEventCreateWithFlags(&metadata_copied, cudaEventDisableTiming));

  allocate_weights();
  const int64_t t = o.max_step_tokens, h = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t inter = c.intermediate_size;
  activation_arena = std::make_unique<DeviceArena>(activation_arena_bytes(c, o, max_context, format));
  DeviceArena& a = *activation_arena;
  if (format.fireq) {
    residual_bf16 = a.take<uint16_t>(t * h, "BF16 residual");
  } else {
    residual = a.take<float>(t * h, "residual");
    normed = a.take<uint16_t>(t * h, "normed");
    qkv = a.take<float>(t * (qd + 2 * kvd), "qkv");
    q = a.take<float>(t * qd, "q");
    attended = a.take<uint16_t>(t * qd, "attended");
    gate_up = a.take<float>(t * 2 * inter, "gate_up");
    activated = a.take<uint16_t>(t * inter, "activated");
    attention_workspace = a.take<float>(attention_workspace_floats(kMaxSplitBlocks, c.head_dim), "attention");
  }
  logits = a.take<float>(int64_t{o.max_logit_rows} * c.vocab_size, "logits");
  logit_inputs = a.take<uint16_t>(int64_t{o.max_logit_rows} * h, "logit inputs");
  rope_table = a.take<float>(int64_t{max_context} * c.head_dim, "rope table");
  metadata_capacity = metadata_ints(o, max_context);
  metadata = a.take<int32_t>(metadata_capacity, "metadata");
  gemm = std::make_unique<Bf16Gemm>(kGemmWorkspaceBytes, std::max({c.vocab_size, 2 * c.intermediate_size,
                                                                    c.q_dim() + 2 * c.kv_dim(), c.hidden_size}));

  rng_states = a.take<uint64_t>(o.max_sequences, "rng");
  row_options = a.take<RowSampling>(o.max_sequences, "row options");
  sampled = a.take<int32_t>(o.max_sequences, "sampled");
  nan_rows = a.take<int>(1, "nan rows");
  sort_workspace_bytes = sampling_workspace_bytes(o.max_sequences, c.vocab_size);
  FIREQ_CUDA_CHECK(cudaMalloc(&sort_workspace, sort_workspace_bytes));
  FIREQ_CUDA_CHECK(cudaMallocHost(&host_metadata, metadata_capacity * sizeof(int32_t)));
  FIREQ_CUDA_CHECK(cudaMallocHost(&host_row_options, o.max_sequences * sizeof(RowSampling)));
  FIREQ_CUDA_CHECK(cudaMallocHost(&host_sampled, (o.max_sequences + 1) * sizeof(int32_t)));

  const std::vector<float> table = rope_cos_sin(c, max_context);
  FIREQ_CUDA_CHECK(cudaMemcpy(rope_table, table.data(), table.size() * sizeof(float), cudaMemcpyHostToDevice));

  kv_arena = std::make_unique<DeviceArena>(kv_arena_bytes(c, plan, format));
  if (format.fireq) {
    scratch_page = static_cast<int>(plan.kv_pages);
    fireq_layers = std::make_unique<FireqLayers>(c, o, max_context, format.group_size, plan.kv_pages + 1, *weight_arena,
                                                 *activation_arena, *kv_arena);
  } else {
    pool = {.layers = c.num_hidden_layers, .num_pages = static_cast<int>(plan.kv_pages), .page_size = o.page_size,
            .kv_heads = c.num_key_value_heads, .head_dim = c.head_dim};
    pool.base = kv_arena->take<uint16_t>(plan.kv_pages * plan.kv_bytes_per_page / 2, "KV pool");
  }
  for (int p = static_cast<int>(plan.kv_pages) - 1; p >= 0; --p) free_pages.push_back(p);
  sequences.resize(o.max_sequences);
}

CudaEngine::Impl::~Impl() {
  if (stream) cudaStreamSynchronize(stream);
  for (const auto& [key, exec] : graphs) cudaGraphExecDestroy(exec);
  for (const auto& [op, event] : marks) cudaEventDestroy(event);
  for (cudaEvent_t event : spare_events) cudaEventDestroy(event);
  cudaFree(sort_workspace);
  cudaFreeHost(host_metadata);
  cudaFreeHost(host_row_options);
  cudaFreeHost(host_sampled);
  if (metadata_copied) cudaEventDestroy(metadata_copied);
  gemm.reset();
  if (stream) cudaStreamDestroy(stream);
}

void CudaEngine::Impl::mark(const char* op) {
  if (!profiling) return;
  cudaEvent_t event;
  if (spare_events.empty()) {
    FIREQ_CUDA_CHECK(cudaEventCreate(&event));
  } else {
    event = spare_events.back();
    spare_events.pop_back();
  }
  FIREQ_CUDA_CHECK(cudaEventRecord(event, stream));
  marks.emplace_back(op, event);
}

// Adds the time between consecutive marks to the op named by the later one.
void CudaEngine::Impl::collect_profile() {
  if (marks.empty()) return;
  FIREQ_CUDA_CHECK(cudaEventSynchronize(marks.back().second));
  for (size_t i = 1; i < marks.size(); ++i) {
    float ms = 0;
    FIREQ_CUDA_CHECK(cudaEventElapsedTime(&ms, marks[i - 1].second, marks[i].second));
    auto it = std::find_if(profile.begin(), profile.end(), [&](const auto& p) { return p.first == marks[i].first; });
    if (it == profile.end()) it = profile.insert(profile.end(), {marks[i].first, 0.0});
    it->second += ms;
  }
  for (const auto& [op, event] : marks) spare_events.push_back(event);
  marks.clear();
}

void CudaEngine::Impl::allocate_weights() {
  const LlamaConfig& c = config;
  const int64_t h = c.hidden_size, qkv_rows = c.q_dim() + 2 * int64_t{c.kv_dim()}, inter = c.intermediate_size;
  weight_arena = std::make_unique<DeviceArena>(plan.weight_bytes);
  DeviceArena& a = *weight_arena;
  embeddings = a.take<uint16_t>(int64_t{c.vocab_size} * h, "embeddings");
  lm_head = c.tie_word_embeddings ? embeddings : a.take<uint16_t>(int64_t{c.vocab_size} * h, "lm_head");
  final_norm = a.take<float>(h, "final norm");
  if (format.fireq) return;  // FireqLayers carves the layers
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights w{};
    w.attn_norm = a.take<float>(h, "attn_norm");
    w.ffn_norm = a.take<float>(h, "ffn_norm");
    w.qkv_bias = c.attention_bias ? a.take<float>(qkv_rows, "qkv bias") : nullptr;
    w.wqkv = a.take<uint16_t>(qkv_rows * h, "wqkv");
    w.wo = a.take<uint16_t>(h * c.q_dim(), "wo");
    w.w_gate_up = a.take<uint16_t>(2 * inter * h, "w_gate_up");
    w.w_down = a.take<uint16_t>(h * inter, "w_down");
    layers.push_back(w);
  }
}

void CudaEngine::Impl::upload(const QuantizedModel& model) {
  const LlamaConfig& c = config;
  put_bf16(embeddings, model.tok_embeddings, c.vocab_size, c.hidden_size, "model.embed_tokens.weight");
  if (!c.tie_word_embeddings) put_bf16(lm_head, model.lm_head, c.vocab_size, c.hidden_size, "lm_head.weight");
  put_f32(final_norm, model.final_norm, c.hidden_size, "model.norm.weight");
  fireq_layers->load(model, stream);
}

void CudaEngine::Impl::upload(const LlamaWeights& w) {
  const LlamaConfig& c = config;
  const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), inter = c.intermediate_size;
  if (static_cast<int>(w.layers.size()) != c.num_hidden_layers)
    fail("CUDA engine: the model has ", w.layers.size(), " layers, its config says ", c.num_hidden_layers);
  put_bf16(embeddings, w.tok_embeddings, c.vocab_size, h, "token embeddings");
  if (!c.tie_word_embeddings) put_bf16(lm_head, w.lm_head, c.vocab_size, h, "lm_head");
  put_f32(final_norm, w.final_norm, h, "final norm");
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LlamaLayerWeights& src = w.layers[l];
    const LayerWeights& dst = layers[l];
    const std::string p = "layer " + std::to_string(l) + " ";
    put_f32(dst.attn_norm, src.attn_norm, h, p + "attn_norm");
    put_f32(dst.ffn_norm, src.ffn_norm, h, p + "ffn_norm");
    put_bf16(dst.wqkv, src.wq, q, h, p + "q_proj");
    put_bf16(dst.wqkv + q * h, src.wk, kv, h, p + "k_proj");
    put_bf16(dst.wqkv + (q + kv) * h, src.wv, kv, h, p + "v_proj");
    if (c.attention_bias) {
      put_f32(dst.qkv_bias, src.bq, q, p + "q_proj bias");
      put_f32(dst.qkv_bias + q, src.bk, kv, p + "k_proj bias");
      put_f32(dst.qkv_bias + q + kv, src.bv, kv, p + "v_proj bias");
    }
    put_bf16(dst.wo, src.wo, h, q, p + "o_proj");
    put_bf16(dst.w_gate_up, src.w_gate, inter, h, p + "gate_proj");
    put_bf16(dst.w_gate_up + inter * h, src.w_up, inter, h, p + "up_proj");
    put_bf16(dst.w_down, src.w_down, h, inter, p + "down_proj");
  }
}

void CudaEngine::Impl::randomize(uint64_t seed) {
  const LlamaConfig& c = config;
  const int64_t h = c.hidden_size, qkv_rows = c.q_dim() + 2 * int64_t{c.kv_dim()}, inter = c.intermediate_size;
  const float amplitude = 0.02f * 1.7320508f;  // uniform with std 0.02
  uint64_t stream_id = seed * 1000003;
  auto linear = [&](uint16_t* p, int64_t count) { fill_random_bf16(p, count, ++stream_id, 0.0f, amplitude, stream); };
  auto norm = [&](float* p, int64_t count) { fill_random_f32(p, count, ++stream_id, 1.0f, 0.1f, stream); };
  linear(embeddings, int64_t{c.vocab_size} * h);
  if (!c.tie_word_embeddings) linear(lm_head, int64_t{c.vocab_size} * h);
  norm(final_norm, h);
  if (fireq_layers) fireq_layers->randomize(seed, stream);
  for (const LayerWeights& w : layers) {
    norm(w.attn_norm, h);
    norm(w.ffn_norm, h);
    if (w.qkv_bias) fill_random_f32(w.qkv_bias, qkv_rows, ++stream_id, 0.0f, amplitude, stream);
    linear(w.wqkv, qkv_rows * h);
    linear(w.wo, h * c.q_dim());
    linear(w.w_gate_up, 2 * inter * h);
    linear(w.w_down, h * inter);
  }
  FIREQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

int CudaEngine::Impl::graph_bucket(int chunks) const {
  if (!format.fireq || !options.cuda_graphs) return 0;
  const int cap = std::min({options.max_sequences, options.max_step_tokens, options.max_logit_rows});
  return std::min(next_power_of_two(chunks), cap);
}

// Metadata layout in one int32 buffer (host pinned, copied once per step):
//   token ids, positions, token chunk [n each]; item first token, item queries [items each];
//   logit rows [rows]; block table [chunks][stride]; query start [chunks + 1]; sequence lengths
//   [chunks]. A graph step pads its chunks to the bucket (rows of one token at position 0 in the
//   scratch page) and uses the longest block table stride, so every offset is fixed per bucket.
void CudaEngine::Impl::run(std::span<const Chunk> chunks, bool all_logits) {
  const LlamaConfig& c = config;
  if (chunks.empty()) fail("CUDA engine: a step needs at least one chunk");
  if (static_cast<int>(chunks.size()) > options.max_sequences)
    fail("CUDA engine: ", chunks.size(), " chunks in one step, at most max_sequences = ", options.max_sequences);
  int64_t tokens = 0, pages_wanted = 0;
  int max_keys = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Sequence& s = sequence(chunks[i].sequence);
    for (size_t j = 0; j < i; ++j)
      if (chunks[j].sequence == chunks[i].sequence)
        fail("CUDA engine: sequence ", chunks[i].sequence, " appears twice in one step");
    const int n = static_cast<int>(chunks[i].tokens.size());
    if (n == 0) fail("CUDA engine: the chunk of sequence ", chunks[i].sequence, " has no tokens");
    if (s.length + n > max_context)
      fail("CUDA engine: sequence ", chunks[i].sequence, ": ", s.length, " cached + ", n,
           " new tokens exceed the context of ", max_context, " tokens");
    for (const int32_t id : chunks[i].tokens)
      if (id < 0 || id >= c.vocab_size)
        fail("CUDA engine: token id ", id, " of sequence ", chunks[i].sequence, " is outside the vocabulary [0, ",
             c.vocab_size, ")");
    tokens += n;
    pages_wanted += pages_needed(s, n);
    max_keys = std::max(max_keys, s.length + n);
  }
  if (tokens > options.max_step_tokens)
    fail("CUDA engine: ", tokens, " tokens in one step exceed max_step_tokens = ", options.max_step_tokens);
  const int real_rows = all_logits ? static_cast<int>(tokens) : static_cast<int>(chunks.size());
  if (real_rows > options.max_logit_rows)
    fail("CUDA engine: ", real_rows, " logit rows in one step exceed max_logit_rows = ", options.max_logit_rows);
  if (pages_wanted > static_cast<int64_t>(free_pages.size()))
    fail("CUDA engine: the KV pool is full: this step needs ", pages_wanted * options.page_size, " more tokens, ",
         free_pages.size() * options.page_size, " are free");

  for (const Chunk& chunk : chunks) {
    Sequence& s = sequences[chunk.sequence];
    for (int k = pages_needed(s, static_cast<int>(chunk.tokens.size())); k > 0; --k) {
      s.pages.push_back(free_pages.back());
      free_pages.pop_back();
    }
  }

  // The previous step's copy must be done before its pinned source is overwritten.
  FIREQ_CUDA_CHECK(cudaEventSynchronize(metadata_copied));
  const int real_chunks = static_cast<int>(chunks.size());
  int longest_chunk = 0;
  for (const Chunk& chunk : chunks) longest_chunk = std::max(longest_chunk, static_cast<int>(chunk.tokens.size()));
  const int bucket = longest_chunk == 1 && !all_logits && !profiling ? graph_bucket(real_chunks) : 0;
  const int chunk_count = std::max(bucket, real_chunks);
  const int n = static_cast<int>(tokens) + (chunk_count - real_chunks);
  const int rows = all_logits ? n : chunk_count;
  const int rows_per_block = attention_rows_per_block(longest_chunk, c.gqa_group());
  const int queries_per_item = std::max(1, rows_per_block / c.gqa_group());
  // The FireQ path's split-KV attention is planned for a power-of-two bound on the context, which
  // the block table's stride must cover; a graph step takes the longest stride.
  const int context_bound = std::min(max_context, std::max(16, next_power_of_two(max_keys)));
  int stride = bucket > 0 ? pages_per_sequence(max_context, options.page_size)
                          : format.fireq ? pages_per_sequence(context_bound, options.page_size) : 1;
  for (const Chunk& chunk : chunks) stride = std::max(stride, static_cast<int>(sequences[chunk.sequence].pages.size()));
  int32_t* h = host_metadata;
  int32_t *ids = h, *positions = ids + n, *token_chunk = positions + n, *item_first = token_chunk + n;
  int32_t* item_queries = item_first + n;
  int32_t* logit_rows = item_queries + n;
  int32_t* table = logit_rows + rows;
  int32_t* query_start = table + chunk_count * stride;
  int32_t* seq_lens = query_start + chunk_count + 1;
  const int64_t used = (seq_lens + chunk_count) - h;
  if (used > metadata_capacity) fail("CUDA engine: step metadata overflows its buffer (", used, " ints)");
  int items = 0;
  for (int ci = 0, t = 0; ci < chunk_count; ++ci) {
    const bool padding = ci >= real_chunks;
    const int length = padding ? 0 : sequences[chunks[ci].sequence].length;
    const int len = padding ? 1 : static_cast<int>(chunks[ci].tokens.size());
    for (int i = 0; i < len; ++i) {
      ids[t + i] = padding ? 0 : chunks[ci].tokens[i];
      positions[t + i] = length + i;
      token_chunk[t + i] = ci;
    }
    for (int i = 0; i < len; i += queries_per_item) {
      item_first[items] = t + i;
      item_queries[items++] = std::min(queries_per_item, len - i);
    }
    if (!all_logits) logit_rows[ci] = t + len - 1;
    query_start[ci] = t;
    seq_lens[ci] = length + len;
    if (padding) {
      std::fill(table + ci * stride, table + (ci + 1) * stride, scratch_page);
    } else {
      const std::vector<int32_t>& pages = sequences[chunks[ci].sequence].pages;
      std::copy(pages.begin(), pages.end(), table + ci * stride);
      std::fill(table + ci * stride + pages.size(), table + (ci + 1) * stride, 0);
    }
    t += len;
  }
  query_start[chunk_count] = n;
  if (all_logits)
    for (int r = 0; r < rows; ++r) logit_rows[r] = r;
  FIREQ_CUDA_CHECK(cudaMemcpyAsync(metadata, h, used * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  FIREQ_CUDA_CHECK(cudaEventRecord(metadata_copied, stream));
  auto device = [&](const int32_t* host_pointer) { return metadata + (host_pointer - h); };

  Launch launch;
  launch.logit_rows = device(logit_rows);
  launch.rows = rows;
  launch.step = {.token_ids = device(ids), .positions = device(positions), .token_chunk = device(token_chunk),
                 .block_table = device(table), .table_stride = stride, .tokens = n};
  if (format.fireq) {
    FireqStep& f = launch.fireq;
    f = {.positions = device(positions), .token_sequence = device(token_chunk), .block_table = device(table),
         .query_start = device(query_start), .seq_lens = device(seq_lens), .tokens = n, .sequences = chunk_count,
         .table_stride = stride};
    while (f.decode_sequences < real_chunks && chunks[f.decode_sequences].tokens.size() == 1) ++f.decode_sequences;
    for (int ci = f.decode_sequences; ci < real_chunks; ++ci) {
      f.prefill_max_query_len = std::max(f.prefill_max_query_len, static_cast<int>(chunks[ci].tokens.size()));
      f.prefill_max_seq_len = std::max(f.prefill_max_seq_len, seq_lens[ci]);
    }
    if (bucket > 0) f.decode_sequences = chunk_count;  // the graph's padded rows
    // The split-KV launch plan (and its workspace, sized for these bounds) follows the bound, so
    // eager and graph steps split alike.
    if (f.decode_sequences > 0) f.decode_max_seq_len = context_bound;
  } else {
    launch.attention = {.q = q, .out = attended, .pool = pool, .q_heads = c.num_attention_heads,
                        .scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim))),
                        .item_first_token = device(item_first), .item_queries = device(item_queries),
                        .items = items, .rows_per_block = rows_per_block, .queries_per_item = queries_per_item,
                        .workspace = attention_workspace};
    choose_attention_splits(launch.attention, max_keys, sm_count);
  }

  if (bucket > 0) {
    replay_or_capture({bucket, launch.fireq.decode_max_seq_len}, launch);
  } else {
    launch_forward(launch);
    collect_profile();
  }

  for (const Chunk& chunk : chunks) sequences[chunk.sequence].length += static_cast<int>(chunk.tokens.size());
  last_step_sequences.clear();
  for (const Chunk& chunk : chunks) last_step_sequences.push_back(chunk.sequence);
  last_logit_rows = real_rows;
}

void CudaEngine::Impl::replay_or_capture(std::pair<int, int> key, const Launch& launch) {
  if (const auto it = graphs.find(key); it != graphs.end()) {
    FIREQ_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
    ++graph_replays;
    return;
  }
  if (warmed_up.insert(key).second) {
    launch_forward(launch);
    return;
  }
  cudaGraph_t graph = nullptr;
  FIREQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  try {
    launch_forward(launch);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  FIREQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  FIREQ_CUDA_CHECK(instantiated);
  graphs.emplace(key, exec);
  FIREQ_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  ++graph_replays;
}

void CudaEngine::Impl::launch_forward(const Launch& launch) {
  const LlamaConfig& c = config;
  const StepMetadata& step = launch.step;
  const int n = step.tokens, hidden = c.hidden_size, qd = c.q_dim(), qkv_width = qd + 2 * c.kv_dim();
  const int inter = c.intermediate_size;
  mark("start");
  if (format.fireq) {
    embed_tokens(embeddings, step.token_ids, n, hidden, residual_bf16, stream);
    mark("embedding");
    fireq_layers->forward(launch.fireq, rope_table, max_context, residual_bf16, stream,
                          [this](const char* op) { mark(op); });
    rms_norm_to_bf16(residual_bf16, launch.logit_rows, launch.rows, hidden, final_norm, c.rms_norm_eps, logit_inputs,
                     stream);
  } else {
    embed_tokens(embeddings, step.token_ids, n, hidden, residual, stream);
    mark("embedding");
    AttentionArgs attention = launch.attention;
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const LayerWeights& w = layers[l];
      rms_norm_to_bf16(residual, nullptr, n, hidden, w.attn_norm, c.rms_norm_eps, normed, stream);
      mark("rmsnorm");
      gemm->run(normed, w.wqkv, qkv, n, qkv_width, hidden, false, stream);
      mark("qkv_proj (cuBLASLt BF16)");
      rope_and_write_cache({.qkv = qkv, .bias = w.qkv_bias, .cos_sin = rope_table, .q_heads = c.num_attention_heads,
                            .q_out = q, .pool = pool, .layer = l},
                           step, stream);
      mark("rope + KV cache write");
      attention.layer = l;
      paged_attention_bf16(attention, step, stream);
      mark("attention (BF16 KV)");
      gemm->run(attended, w.wo, residual, n, hidden, qd, true, stream);
      mark("o_proj + residual");
      rms_norm_to_bf16(residual, nullptr, n, hidden, w.ffn_norm, c.rms_norm_eps, normed, stream);
      mark("rmsnorm");
      gemm->run(normed, w.w_gate_up, gate_up, n, 2 * inter, hidden, false, stream);
      mark("gate|up_proj");
      swiglu_to_bf16(gate_up, n, inter, activated, stream);
      mark("silu * mul");
      gemm->run(activated, w.w_down, residual, n, hidden, inter, true, stream);
      mark("down_proj + residual");
    }
    rms_norm_to_bf16(residual, launch.logit_rows, launch.rows, hidden, final_norm, c.rms_norm_eps, logit_inputs,
                     stream);
  }
  mark("final norm");
  gemm->run(logit_inputs, lm_head, logits, launch.rows, c.vocab_size, hidden, false, stream);
  mark("lm_head");
}

// ---------------------------------------------------------------------------------------------

CudaEngine::CudaEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaEngine::CudaEngine(const LlamaWeights& weights, const CudaEngineOptions& options) {
  LlamaConfig config = weights.config;
  config.tie_word_embeddings = weights.lm_head.empty();
  impl_ = std::make_unique<Impl>(config, options, CudaModelFormat{});
  impl_->upload(weights);
}

CudaEngine::CudaEngine(const QuantizedModel& model, const CudaEngineOptions& options) {
  LlamaConfig config = model.config;
  config.tie_word_embeddings = model.lm_head.empty();
  impl_ = std::make_unique<Impl>(config, options, CudaModelFormat{.fireq = true, .group_size = model.recipe.group_size});
  impl_->upload(model);
}

std::unique_ptr<CudaEngine> open_cuda_engine(const std::filesystem::path& path, const LlamaWeights& float_weights,
                                             const CudaEngineOptions& options) {
  if (cuda_device_count() == 0) fail(path.string(), ": the CUDA engine needs a CUDA GPU; none is present");
  if (is_fireq_checkpoint(path)) return std::make_unique<CudaEngine>(load_quantized_checkpoint(path), options);
  return std::make_unique<CudaEngine>(float_weights, options);
}

std::unique_ptr<CudaEngine> CudaEngine::with_random_weights(const LlamaConfig& config, uint64_t seed,
                                                            const CudaEngineOptions& options,
                                                            const CudaModelFormat& format) {
  auto impl = std::make_unique<Impl>(config, options, format);
  impl->randomize(seed);
  return std::unique_ptr<CudaEngine>(new CudaEngine(std::move(impl)));
}

CudaEngine::~CudaEngine() = default;

const LlamaConfig& CudaEngine::config() const { return impl_->config; }
const CudaMemoryPlan& CudaEngine::memory_plan() const { return impl_->plan; }
const CudaModelFormat& CudaEngine::format() const { return impl_->format; }
int64_t CudaEngine::graph_replays() const { return impl_->graph_replays; }
int CudaEngine::graphs_captured() const { return static_cast<int>(impl_->graphs.size()); }
int CudaEngine::max_context() const { return impl_->max_context; }

void CudaEngine::reset() {
  if (impl_->default_sequence >= 0) release_sequence(impl_->default_sequence);
  impl_->default_sequence = -1;
}

int CudaEngine::position() const {
  return impl_->default_sequence >= 0 ? impl_->sequences[impl_->default_sequence].length : 0;
}

std::vector<float> CudaEngine::forward(std::span<const int32_t> tokens, LogitsFor which) {
  Impl& m = *impl_;
  if (tokens.empty()) fail("forward: no tokens given");
  if (m.default_sequence < 0) {
    m.default_sequence = add_sequence();
    if (m.default_sequence < 0) fail("forward: all ", m.options.max_sequences, " sequences are in use");
  }
  const int vocab = m.config.vocab_size;
  const int per_step = which == LogitsFor::kAll ? std::min(m.options.max_step_tokens, m.options.max_logit_rows)
                                                : m.options.max_step_tokens;
  std::vector<float> out;
  for (size_t start = 0; start < tokens.size(); start += per_step) {
    const auto piece = tokens.subspan(start, std::min<size_t>(per_step, tokens.size() - start));
    const Chunk chunk{.sequence = m.default_sequence, .tokens = piece};
    m.run(std::span(&chunk, 1), which == LogitsFor::kAll);
    const bool last_piece = start + piece.size() == tokens.size();
    if (which == LogitsFor::kAll || (which == LogitsFor::kLast && last_piece)) {
      const size_t before = out.size();
      out.resize(before + static_cast<size_t>(m.last_logit_rows) * vocab);
      FIREQ_CUDA_CHECK(cudaMemcpyAsync(out.data() + before, m.logits, sizeof(float) * (out.size() - before),
                                       cudaMemcpyDeviceToHost, m.stream));
    }
  }
  FIREQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return out;
}

int CudaEngine::add_sequence() {
  for (size_t i = 0; i < impl_->sequences.size(); ++i) {
    Sequence& s = impl_->sequences[i];
    if (s.alive) continue;
    s = Sequence{};
    s.alive = true;
    set_sampling(static_cast<int>(i), {});
    return static_cast<int>(i);
  }
  return -1;
}

void CudaEngine::release_sequence(int sequence) {
  Sequence& s = impl_->sequence(sequence);
  impl_->free_pages.insert(impl_->free_pages.end(), s.pages.rbegin(), s.pages.rend());
  s = Sequence{};
}

int CudaEngine::sequence_length(int sequence) const { return impl_->sequence(sequence).length; }

int CudaEngine::max_step_tokens() const { return impl_->options.max_step_tokens; }
int CudaEngine::page_size() const { return impl_->options.page_size; }
int64_t CudaEngine::kv_capacity_tokens() const { return impl_->plan.kv_tokens(); }

int64_t CudaEngine::free_kv_tokens() const {
  return static_cast<int64_t>(impl_->free_pages.size()) * impl_->options.page_size;
}

bool CudaEngine::can_grow(int sequence, int tokens) const {
  const Sequence& s = impl_->sequence(sequence);
  return s.length + tokens <= impl_->max_context &&
         impl_->pages_needed(s, tokens) <= static_cast<int64_t>(impl_->free_pages.size());
}

void CudaEngine::step(std::span<const Chunk> chunks) { impl_->run(chunks, false); }

std::vector<float> CudaEngine::last_logits() const {
  const Impl& m = *impl_;
  std::vector<float> out(static_cast<size_t>(m.last_logit_rows) * m.config.vocab_size);
  FIREQ_CUDA_CHECK(cudaMemcpyAsync(out.data(), m.logits, out.size() * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
  FIREQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return out;
}

void CudaEngine::set_sampling(int sequence, const SamplingOptions& options) {
  Sampler validate(options);  // throws on bad options
  impl_->sequence(sequence).sampling = options;
  FIREQ_CUDA_CHECK(cudaMemcpyAsync(impl_->rng_states + sequence, &options.seed, sizeof(uint64_t),
                                   cudaMemcpyHostToDevice, impl_->stream));
  FIREQ_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));  // the source is on this stack
}

std::vector<int32_t> CudaEngine::sample(std::span<const uint8_t> draw) {
  Impl& m = *impl_;
  const int rows = static_cast<int>(m.last_step_sequences.size());
  if (rows == 0 || m.last_logit_rows != rows)
    fail("CUDA engine: sample() needs the logits of a step() (one row per chunk)");
  if (!draw.empty() && static_cast<int>(draw.size()) != rows)
    fail("CUDA engine: sample() got ", draw.size(), " draw flags for ", rows, " rows");
  bool any_random = false;
  for (int r = 0; r < rows; ++r) {
    const SamplingOptions& o = m.sequences[m.last_step_sequences[r]].sampling;
    const double temperature = draw.empty() || draw[r] ? o.temperature : 0.0;
    m.host_row_options[r] = {.slot = m.last_step_sequences[r], .temperature = temperature,
                             .top_k = o.top_k, .top_p = o.top_p};
    any_random |= temperature > 0;
  }
  FIREQ_CUDA_CHECK(cudaMemsetAsync(m.nan_rows, 0, sizeof(int), m.stream));
  argmax_rows(m.logits, rows, m.config.vocab_size, m.sampled, m.nan_rows, m.stream);
  if (any_random) {
    FIREQ_CUDA_CHECK(cudaMemcpyAsync(m.row_options, m.host_row_options, rows * sizeof(RowSampling),
                                     cudaMemcpyHostToDevice, m.stream));
    sample_rows(m.logits, rows, m.config.vocab_size, m.row_options, m.rng_states, m.sort_workspace,
                m.sort_workspace_bytes, m.sampled, m.stream);
  }
  FIREQ_CUDA_CHECK(cudaMemcpyAsync(m.host_sampled, m.sampled, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, m.stream));
  FIREQ_CUDA_CHECK(cudaMemcpyAsync(m.host_sampled + rows, m.nan_rows, sizeof(int), cudaMemcpyDeviceToHost, m.stream));
  FIREQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  if (m.host_sampled[rows] > 0) fail("sampling: ", m.host_sampled[rows], " rows of logits hold NaN");
  return std::vector<int32_t>(m.host_sampled, m.host_sampled + rows);
}

void CudaEngine::synchronize() const { FIREQ_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

void CudaEngine::set_profiling(bool on) { impl_->profiling = on; }

void CudaEngine::set_cuda_graphs(bool on) { impl_->options.cuda_graphs = on; }

std::vector<std::pair<std::string, double>> CudaEngine::take_profile() { return std::exchange(impl_->profile, {}); }

}  // namespace fireq
