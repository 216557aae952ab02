// The dispatch table: which token tile and split-K factor a GEMM shape runs with. Host-only so the
// CPU tests can check it; bench/gemm can sweep configurations to regenerate it.
#include <algorithm>

#include "fireq/error.h"
#include "fireq/kernels/gemm.h"

namespace fireq::gemm {

size_t prepared_weight_bytes(int n, int k, int group_size) {
  const size_t pairs = (n / kTileRows + 1) / 2;
  return pairs * (k / group_size) * pair_record_bytes(group_size / kBlockK);
}

size_t splitk_workspace_floats(int max_m, int n) { return static_cast<size_t>(max_m) * n; }
size_t splitk_counter_count(int max_m, int n) {
  return static_cast<size_t>((max_m + 15) / 16) * (n / kTileRows);
}

namespace {

// The decode kernel: one CTA per (tile pair, K split), up to decode_ctas_per_sm per SM. Fitted to
// the split sweep of 2026-11-25 (bench/NOTES-gemm.md decode v8: every split count of every Llama
// shape at M = 1..64): a weight with at least one tile pair per SM runs unsplit (splitting Llama-3
// gate_up cost 20-60 % at every M, for a reason not yet measured); fewer pairs are split, by the
// smallest even split count that gives at least 1.9 CTAs per SM (o, down, qkv: 3-8 splits; within
// 5 % of the sweep's best at M <= 4, 15 % at M = 16).
GemmConfig decode_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok) {
  GemmConfig c;
  c.kernel = GemmKernel::kDecodeMma;
  c.token_tile = 8;
  while (c.token_tile < m) c.token_tile *= 2;
  const int groups = k / group_size;
  const int tile_pairs = (n / kTileRows + 1) / 2;
  c.splits = 1;
  c.groups_per_split = groups;
  if (workspace_ok && tile_pairs < sm_count) {
    for (int splits = 2; splits <= std::min(groups, 32); ++splits) {
      const int per_split = (groups + splits - 1) / splits;
      if ((groups + per_split - 1) / per_split != splits) continue;  // only splits that cover K evenly
      c.splits = splits;
      c.groups_per_split = per_split;
      if (10 * tile_pairs * splits >= 19 * sm_count) break;
    }
  }
  c.work_items = tile_pairs * c.splits;
  c.grid = c.work_items;
  return c;
}

// Shapes whose measured crossover between the two kernels is not kDecodeDispatchMaxM: H100,
// bench/results/gemm-decode-h100-2026-11-25-v8.md (forced ours_decode vs ours_wgmma rows, same call).
// bench_gemm prints these entries from its forced rows ("decode reach" lines) to regenerate them.
struct DecodeReach {
  int n, k, max_m;
};
constexpr DecodeReach kMeasuredDecodeReach[] = {
    {6144, 4096, 32},   // Llama-3-8B q|k|v, M = 32: 23.8 us decode vs 28.8 us wgmma
    {4096, 4096, 32},   // Llama-3-8B / Llama-2-7B o_proj, M = 32: 18.3 vs 24.8
    {22016, 4096, 32},  // Llama-2-7B gate|up, M = 32: 53.8 vs 91.9
    {4096, 11008, 32},  // Llama-2-7B down, M = 32: 28.4 vs 32.4
    {12288, 4096, 8},   // Llama-2-7B q|k|v, M = 16: 27.2 vs 17.8
};

}  // namespace

int decode_dispatch_max_m(int n, int k) {
  for (const DecodeReach& r : kMeasuredDecodeReach)
    if (r.n == n && r.k == k) return r.max_m;
  return kDecodeDispatchMaxM;
}

GemmConfig choose_gemm_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok) {
  if (m <= 0 || n <= 0 || k <= 0 || group_size <= 0 || sm_count <= 0)
    fail("choose_gemm_config: bad shape M=", m, " N=", n, " K=", k, " group=", group_size);
  if (m <= decode_dispatch_max_m(n, k)) return decode_config(m, n, k, group_size, sm_count, workspace_ok);
  return choose_wgmma_config(m, n, k, group_size, sm_count, workspace_ok);
}

GemmConfig choose_decode_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok) {
  if (m <= 0 || m > kDecodeMaxM || n <= 0 || k <= 0 || group_size <= 0 || sm_count <= 0)
    fail("choose_decode_config: bad shape M=", m, " (at most ", kDecodeMaxM, ") N=", n, " K=", k, " group=", group_size);
  return decode_config(m, n, k, group_size, sm_count, workspace_ok);
}

namespace {

// Relative throughput of the wgmma kernel's token tiles at compute-bound sizes: the per-group
// INT4 -> FP8 conversion, the producer's copies and the drains are shared by more tokens in larger
// tiles. Fitted to the 2026-11-25 sweep (bench/NOTES-gemm.md v7: l3_gate_up M = 256 and 1024),
// the 128-token tile rescaled by its one-unit form (v7d: 11 % faster on l3_gate_up M = 512).
double token_tile_efficiency(int token_tile) {
  switch (token_tile) {
    case 64: return 0.58;
    case 128: return 0.86;
    default: return 1.0;
  }
}

}  // namespace

GemmConfig choose_wgmma_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok) {
  if (m <= 0 || n <= 0 || k <= 0 || group_size <= 0 || sm_count <= 0)
    fail("choose_wgmma_config: bad shape M=", m, " N=", n, " K=", k, " group=", group_size);
  GemmConfig c;
  const int groups = k / group_size;
  const int tile_pairs = (n / kTileRows + 1) / 2;
  // Group 64 (SmolLM2) has only the 64-token kernel; decode sizes keep the 16 / 64 token tiles
  // and the split-K score fitted to the 2026-11-25 sweep (memory-bound: fill the SMs evenly).
  if (group_size == 64 || m <= 64) {
    c.token_tile = m <= 16 && group_size != 64 ? 16 : 64;
    const int base_items = tile_pairs * ((m + c.token_tile - 1) / c.token_tile);
    // One CTA per SM streams its items' weights. Split K over groups when that fills the SMs in
    // more even waves; each split costs a fix-up (measured ~6 % of a wave) and FP32 atomics of
    // M x N partial sums (relative to the N x K / 2 weight bytes: 8 s M / K).
    int best_splits = 1;
    double best_score = -1.0;
    const int max_splits = workspace_ok ? std::min(groups, 16) : 1;
    for (int splits = 1; splits <= max_splits; ++splits) {
      const int per_split = (groups + splits - 1) / splits;
      if ((groups + per_split - 1) / per_split != splits) continue;
      const int items = base_items * splits;
      const int waves = (items + sm_count - 1) / sm_count;
      const double fill = static_cast<double>(items) / (static_cast<double>(waves) * sm_count);
      const double atomics = splits > 1 ? 8.0 * splits * m / k : 0.0;
      const double score = fill / (1.0 + atomics) - 0.06 * (splits - 1);
      if (score > best_score + 1e-9) {
        best_score = score;
        best_splits = splits;
      }
    }
    c.splits = best_splits;
    c.groups_per_split = (groups + best_splits - 1) / best_splits;
    c.work_items = base_items * best_splits;
    c.grid = std::min(c.work_items, sm_count);
    return c;
  }
  // Compute-bound sizes: the token tile with the least estimated time. A persistent CTA runs
  // ceil(items / SMs) items; an item of a T-token tile costs T / efficiency(T) per K group. No
  // split-K: the 2026-11-25 sweep measured it 4-6x slower than unsplit from M = 256 (FP32 atomics
  // of M x N partial sums per split), even where the unsplit items leave SMs idle.
  double best_cost = 0.0;
  for (const int tile : {64, 128, 192}) {
    const int items = tile_pairs * ((m + tile - 1) / tile);
    const int rounds = (items + sm_count - 1) / sm_count;
    const double cost = static_cast<double>(rounds) * tile / token_tile_efficiency(tile);
    if (c.token_tile == 0 || cost < best_cost * (1.0 - 1e-9)) {
      best_cost = cost;
      c.token_tile = tile;
      c.work_items = items;
    }
  }
  c.splits = 1;
  c.groups_per_split = groups;
  c.grid = std::min(c.work_items, sm_count);
  return c;
}

}  // namespace fireq::gemm
