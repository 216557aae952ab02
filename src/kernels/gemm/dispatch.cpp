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

GemmConfig choose_gemm_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok) {
  if (m <= 0 || n <= 0 || k <= 0 || group_size <= 0 || sm_count <= 0)
    fail("choose_gemm_config: bad shape M=", m, " N=", n, " K=", k, " group=", group_size);
  GemmConfig c;
  const int groups = k / group_size;
  const int tile_pairs = (n / kTileRows + 1) / 2;
  // Token tile: 16 / 64 for decode sizes; above 64 the 128-token tile once its work items alone
  // keep most SMs busy (bench sweep 2026-11-25: M = 128..256 on N >= 12288 and all M > 256).
  if (m <= 16) {
    c.token_tile = 16;
  } else if (m <= 64 || (m <= 256 && 10 * tile_pairs * ((m + 127) / 128) < 7 * sm_count)) {
    c.token_tile = 64;
  } else {
    c.token_tile = 128;
  }
  const int base_items = tile_pairs * ((m + c.token_tile - 1) / c.token_tile);
  // One CTA per SM streams its items' weights. Split K over groups when that fills the SMs in
  // more even waves; each split costs a fix-up (measured ~6 % of a wave) and FP32 atomics of
  // M x N partial sums (relative to the N x K / 2 weight bytes: 8 s M / K).
  int best_splits = 1;
  double best_score = -1.0;
  const int max_splits = workspace_ok && c.token_tile < 128 ? std::min(groups, 16) : 1;
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

}  // namespace fireq::gemm
