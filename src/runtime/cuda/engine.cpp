// The CUDA engine's host side: weights and buffers (from the memory plan), the KV page pool and
// the sequences that own pages, and one step = one pass over the layers for every token of every
// chunk (the order of ops is the CPU reference engine's, src/runtime/cpu/engine.cpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "fireq/cuda_check.h"
#include "fireq/cuda_engine.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "gemm_bf16.h"
#include "kernels.h"
#include "plan_sizes.h"

namespace fireq {

using namespace cuda_runtime;

namespace {

// One cudaMalloc carved into aligned buffers; freed as a whole.
class DeviceArena {
 public:
  explicit DeviceArena(int64_t bytes) : capacity_(bytes) { FIREQ_CUDA_CHECK(cudaMalloc(&base_, bytes)); }
  ~DeviceArena() { cudaFree(base_); }
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  template <typename T>
  T* take(int64_t count, const char* what) {
    const int64_t bytes = (count * int64_t(sizeof(T)) + 255) / 256 * 256;
    if (used_ + bytes > capacity_)
      fail("CUDA engine: buffer '", what, "' overflows its arena (", used_ + bytes, " > ", capacity_,
           " bytes): the memory plan is out of date");
    T* p = reinterpret_cast<T*>(static_cast<char*>(base_) + used_);
    used_ += bytes;
    return p;
  }

 private:
  void* base_ = nullptr;
  int64_t capacity_ = 0, used_ = 0;
};

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
  int max_context = 0;
  CudaMemoryPlan plan;
  int sm_count = 0;
  cudaStream_t stream = nullptr;
  cudaEvent_t metadata_copied = nullptr;

  std::unique_ptr<DeviceArena> weight_arena, activation_arena, kv_arena;
  uint16_t* embeddings = nullptr;  // [vocab][hidden]
  uint16_t* lm_head = nullptr;     // == embeddings when tied
  float* final_norm = nullptr;
  std::vector<LayerWeights> layers;

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
  void mark(const char* op);
  void collect_profile();

  Impl(const LlamaConfig& c, const CudaEngineOptions& o);
  ~Impl();
  void allocate_weights();
  void upload(const LlamaWeights& w);
  void randomize(uint64_t seed);
  void run(std::span<const Chunk> chunks, bool all_logits);
  int pages_needed(const Sequence& s, int more) const {
    return pages_per_sequence(s.length + more, options.page_size) - static_cast<int>(s.pages.size());
  }
  Sequence& sequence(int id) {
    if (id < 0 || id >= static_cast<int>(sequences.size()) || !sequences[id].alive)
      fail("CUDA engine: sequence ", id, " does not exist");
    return sequences[id];
  }
};

CudaEngine::Impl::Impl(const LlamaConfig& c, const CudaEngineOptions& o) : config(c), options(o) {
  if (cuda_device_count() == 0) fail("CUDA engine: no CUDA device is present");
  if (c.head_dim != 64 && c.head_dim != 128)
    fail("CUDA engine: head_dim ", c.head_dim, " is not supported by the BF16 attention (64 or 128)");
  if (c.num_attention_heads % c.num_key_value_heads != 0 || c.gqa_group() > kAttentionRows)
    fail("CUDA engine: GQA group ", c.num_attention_heads, "/", c.num_key_value_heads, " is not supported");
  max_context = o.max_context > 0 ? o.max_context : c.max_position_embeddings;
  size_t free_bytes = 0, total_bytes = 0;
  FIREQ_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  plan = plan_cuda_memory(c, o, static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes));
  if (o.print_plan) std::fprintf(stderr, "[cuda] %s\n", plan.describe().c_str());
  sm_count = device_sm_count();
  FIREQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  FIREQ_CUDA_CHECK(cudaEventCreateWithFlags(&metadata_copied, cudaEventDisableTiming));

  allocate_weights();
  const int64_t t = o.max_step_tokens, h = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t inter = c.intermediate_size;
  activation_arena = std::make_unique<DeviceArena>(activation_arena_bytes(c, o, max_context));
  DeviceArena& a = *activation_arena;
  residual = a.take<float>(t * h, "residual");
  normed = a.take<uint16_t>(t * h, "normed");
  qkv = a.take<float>(t * (qd + 2 * kvd), "qkv");
  q = a.take<float>(t * qd, "q");
  attended = a.take<uint16_t>(t * qd, "attended");
  gate_up = a.take<float>(t * 2 * inter, "gate_up");
  activated = a.take<uint16_t>(t * inter, "activated");
  logits = a.take<float>(int64_t{o.max_logit_rows} * c.vocab_size, "logits");
  logit_inputs = a.take<uint16_t>(int64_t{o.max_logit_rows} * h, "logit inputs");
  rope_table = a.take<float>(int64_t{max_context} * c.head_dim, "rope table");
  attention_workspace = a.take<float>(attention_workspace_floats(kMaxSplitBlocks, c.head_dim), "attention");
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

  // RoPE (cos, sin) per position and pair, computed as the CPU reference does (float angle,
  // double cos/sin rounded once).
  std::vector<float> inv_freq;
  for (const double f : rope_inverse_frequencies(c)) inv_freq.push_back(static_cast<float>(f));
  std::vector<float> table(static_cast<size_t>(max_context) * c.head_dim);
  for (int p = 0; p < max_context; ++p)
    for (size_t i = 0; i < inv_freq.size(); ++i) {
      const double angle = inv_freq[i] * static_cast<float>(p);
      table[(p * inv_freq.size() + i) * 2] = static_cast<float>(std::cos(angle));
      table[(p * inv_freq.size() + i) * 2 + 1] = static_cast<float>(std::sin(angle));
    }
  FIREQ_CUDA_CHECK(cudaMemcpy(rope_table, table.data(), table.size() * sizeof(float), cudaMemcpyHostToDevice));

  pool = {.layers = c.num_hidden_layers, .num_pages = static_cast<int>(plan.kv_pages), .page_size = o.page_size,
          .kv_heads = c.num_key_value_heads, .head_dim = c.head_dim};
  kv_arena = std::make_unique<DeviceArena>(plan.kv_pages * plan.kv_bytes_per_page);
  pool.base = kv_arena->take<uint16_t>(plan.kv_pages * plan.kv_bytes_per_page / 2, "KV pool");
  for (int p = pool.num_pages - 1; p >= 0; --p) free_pages.push_back(p);
  sequences.resize(o.max_sequences);
}

CudaEngine::Impl::~Impl() {
  if (stream) cudaStreamSynchronize(stream);
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
  weight_arena = std::make_unique<DeviceArena>(plan.weight_bytes + 256 * (8 * int64_t{c.num_hidden_layers} + 8));
  DeviceArena& a = *weight_arena;
  embeddings = a.take<uint16_t>(int64_t{c.vocab_size} * h, "embeddings");
  lm_head = c.tie_word_embeddings ? embeddings : a.take<uint16_t>(int64_t{c.vocab_size} * h, "lm_head");
  final_norm = a.take<float>(h, "final norm");
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

void CudaEngine::Impl::upload(const LlamaWeights& w) {
  const LlamaConfig& c = config;
  auto put_bf16 = [&](uint16_t* dst, const FloatTensor& t, int64_t rows, int64_t cols, const std::string& name) {
    check_tensor(t, rows, cols, name);
    const std::vector<uint16_t> b = to_bf16(t.data.data(), t.data.size());
    FIREQ_CUDA_CHECK(cudaMemcpy(dst, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  };
  auto put_f32 = [&](float* dst, const FloatTensor& t, int64_t size, const std::string& name) {
    check_tensor(t, size, 1, name);
    FIREQ_CUDA_CHECK(cudaMemcpy(dst, t.data.data(), size * 4, cudaMemcpyHostToDevice));
  };
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

// Metadata layout in one int32 buffer (host pinned, copied once per step):
//   token ids, positions, token chunk [n each]; item first token, item queries [items each];
//   logit rows [rows]; block table [chunks][stride].
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
  const int rows = all_logits ? static_cast<int>(tokens) : static_cast<int>(chunks.size());
  if (rows > options.max_logit_rows)
    fail("CUDA engine: ", rows, " logit rows in one step exceed max_logit_rows = ", options.max_logit_rows);
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
  const int n = static_cast<int>(tokens), chunk_count = static_cast<int>(chunks.size());
  int longest_chunk = 0;
  for (const Chunk& chunk : chunks) longest_chunk = std::max(longest_chunk, static_cast<int>(chunk.tokens.size()));
  const int rows_per_block = attention_rows_per_block(longest_chunk, c.gqa_group());
  const int queries_per_item = std::max(1, rows_per_block / c.gqa_group());
  int stride = 0;
  for (const Chunk& chunk : chunks) stride = std::max(stride, static_cast<int>(sequences[chunk.sequence].pages.size()));
  int32_t* h = host_metadata;
  int32_t *ids = h, *positions = ids + n, *token_chunk = positions + n, *item_first = token_chunk + n;
  int32_t* item_queries = item_first + n;
  int items = 0;
  for (int ci = 0, t = 0; ci < chunk_count; ++ci) {
    const Sequence& s = sequences[chunks[ci].sequence];
    const int len = static_cast<int>(chunks[ci].tokens.size());
    for (int i = 0; i < len; ++i) {
      ids[t + i] = chunks[ci].tokens[i];
      positions[t + i] = s.length + i;
      token_chunk[t + i] = ci;
    }
    for (int i = 0; i < len; i += queries_per_item) {
      item_first[items] = t + i;
      item_queries[items++] = std::min(queries_per_item, len - i);
    }
    t += len;
  }
  int32_t* logit_rows = item_queries + n;
  for (int r = 0, t = 0; r < rows; ++r) {
    if (all_logits) {
      logit_rows[r] = r;
    } else {
      t += static_cast<int>(chunks[r].tokens.size());
      logit_rows[r] = t - 1;
    }
  }
  int32_t* table = logit_rows + rows;
  for (int ci = 0; ci < chunk_count; ++ci) {
    const std::vector<int32_t>& pages = sequences[chunks[ci].sequence].pages;
    std::copy(pages.begin(), pages.end(), table + ci * stride);
    std::fill(table + ci * stride + pages.size(), table + (ci + 1) * stride, 0);
  }
  const int64_t used = (table + chunk_count * stride) - h;
  if (used > metadata_capacity) fail("CUDA engine: step metadata overflows its buffer (", used, " ints)");
  FIREQ_CUDA_CHECK(cudaMemcpyAsync(metadata, h, used * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  FIREQ_CUDA_CHECK(cudaEventRecord(metadata_copied, stream));
  auto device = [&](const int32_t* host_pointer) { return metadata + (host_pointer - h); };

  const StepMetadata step{.token_ids = device(ids), .positions = device(positions),
                          .token_chunk = device(token_chunk), .block_table = device(table),
                          .table_stride = stride, .tokens = n};
  const int hidden = c.hidden_size, qd = c.q_dim(), qkv_width = qd + 2 * c.kv_dim(), inter = c.intermediate_size;
  AttentionArgs attention{.q = q, .out = attended, .pool = pool, .q_heads = c.num_attention_heads,
                          .scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim))),
                          .item_first_token = device(item_first), .item_queries = device(item_queries),
                          .items = items, .rows_per_block = rows_per_block, .queries_per_item = queries_per_item,
                          .workspace = attention_workspace};
  choose_attention_splits(attention, max_keys, sm_count);

  mark("start");
  embed_tokens(embeddings, step.token_ids, n, hidden, residual, stream);
  mark("embedding");
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
  rms_norm_to_bf16(residual, device(logit_rows), rows, hidden, final_norm, c.rms_norm_eps, logit_inputs, stream);
  mark("final norm");
  gemm->run(logit_inputs, lm_head, logits, rows, c.vocab_size, hidden, false, stream);
  mark("lm_head");
  collect_profile();

  for (const Chunk& chunk : chunks) sequences[chunk.sequence].length += static_cast<int>(chunk.tokens.size());
  last_step_sequences.clear();
  for (const Chunk& chunk : chunks) last_step_sequences.push_back(chunk.sequence);
  last_logit_rows = rows;
}

// ---------------------------------------------------------------------------------------------

CudaEngine::CudaEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaEngine::CudaEngine(const LlamaWeights& weights, const CudaEngineOptions& options) {
  LlamaConfig config = weights.config;
  config.tie_word_embeddings = weights.lm_head.empty();
  impl_ = std::make_unique<Impl>(config, options);
  impl_->upload(weights);
}

std::unique_ptr<CudaEngine> CudaEngine::with_random_weights(const LlamaConfig& config, uint64_t seed,
                                                            const CudaEngineOptions& options) {
  auto impl = std::make_unique<Impl>(config, options);
  impl->randomize(seed);
  return std::unique_ptr<CudaEngine>(new CudaEngine(std::move(impl)));
}

CudaEngine::~CudaEngine() = default;

const LlamaConfig& CudaEngine::config() const { return impl_->config; }
const CudaMemoryPlan& CudaEngine::memory_plan() const { return impl_->plan; }
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

std::vector<std::pair<std::string, double>> CudaEngine::take_profile() { return std::exchange(impl_->profile, {}); }

}  // namespace fireq
