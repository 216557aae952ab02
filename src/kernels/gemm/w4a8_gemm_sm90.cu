// Host side of the INT4 x FP8 GEMM: argument checks, the X tensor map, the launch per token tile
// (or the decode kernel's launcher, w4a8_gemm_decode.cu, when the configuration says so).
#include <cudaTypedefs.h>

#include <mutex>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "w4a8_gemm_sm90.cuh"

namespace fireq::gemm {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FIREQ_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || fn == nullptr) fail("gemm_w4a8: cuTensorMapEncodeTiled is unavailable");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// X [M][K] FP8 as a 2D tensor; one box = token_tile rows x one K group (64 or 128 bytes) with the
// swizzle of the same width (the wgmma B descriptor's layout), rows past M read as zeros. Wide rows
// matter: the copy engine's cost grows with the rows of a box, not its bytes.
CUtensorMap make_x_map(const uint8_t* x, int m, int k, int token_tile, int group_size) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(group_size), static_cast<cuuint32_t>(token_tile)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(x), dims, strides,
                                          box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                          group_size == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) fail("gemm_w4a8: cuTensorMapEncodeTiled failed (", static_cast<int>(r), ") for X [", m, "][", k, "]");
  return map;
}

int sm_count() {
  static int count = [] {
    int device = 0, value = 0;
    FIREQ_CUDA_CHECK(cudaGetDevice(&device));
    FIREQ_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device));
    return value;
  }();
  return count;
}

template <int TokenTile, int Blocks>
void launch(const CUtensorMap& map, const KernelParams& p, int grid, cudaStream_t stream) {
  constexpr int bytes = TileTraits<TokenTile>::kSharedBytes;
  static std::once_flag configured;
  std::call_once(configured, [] {
    FIREQ_CUDA_CHECK(
        cudaFuncSetAttribute(w4a8_gemm_sm90_kernel<TokenTile, Blocks>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  });
  w4a8_gemm_sm90_kernel<TokenTile, Blocks><<<grid, 384, bytes, stream>>>(map, p);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void gemm_w4a8(const GemmArgs& args, const PreparedWeights& w, const SplitKWorkspace& workspace, cudaStream_t stream,
               const GemmConfig* forced) {
  if (w.data == nullptr) fail("gemm_w4a8: weights are not prepared");
  if (args.x == nullptr || args.x_scales == nullptr || args.out == nullptr) fail("gemm_w4a8: null X, X scales or output");
  if (args.m <= 0) fail("gemm_w4a8: M = ", args.m, " must be positive");
  if (w.n % kTileRows != 0 || w.k % w.group_size != 0 || (w.group_size != 64 && w.group_size != 128))
    fail("gemm_w4a8: weights [", w.n, "][", w.k, "] group ", w.group_size, " are not in a supported shape");
  if ((args.epilogue == Epilogue::kSwiGlu) != w.swiglu_interleaved)
    fail("gemm_w4a8: the SwiGLU epilogue needs weights prepared with gate|up interleaving (and only it)");
  if (args.epilogue == Epilogue::kResidualAdd && args.residual == nullptr) fail("gemm_w4a8: residual epilogue without residual");

  const bool workspace_ok = workspace.partial != nullptr && workspace.counters != nullptr &&
                            workspace.partial_floats >= splitk_workspace_floats(args.m, w.n) &&
                            workspace.counter_count >= splitk_counter_count(args.m, w.n);
  const GemmConfig c = forced ? *forced : choose_gemm_config(args.m, w.n, w.k, w.group_size, sm_count(), workspace_ok);
  if (c.splits > 1 && c.token_tile > 64) fail("gemm_w4a8: the ", c.token_tile, "-token tile has no split-K");
  if (c.splits > 1 && !workspace_ok) fail("gemm_w4a8: split-K ", c.splits, " needs a workspace for M = ", args.m);

  KernelParams p{};
  p.weights = w.data;
  p.x_scales = args.x_scales;
  p.residual = args.residual;
  p.out = args.out;
  p.partial = workspace.partial;
  p.counters = workspace.counters;
  p.s_inv = args.s_inv;
  p.m = args.m;
  p.n = w.n;
  p.k = w.k;
  p.n_tiles = w.n / kTileRows;
  p.tile_pairs = (p.n_tiles + 1) / 2;
  p.token_tiles = (args.m + c.token_tile - 1) / c.token_tile;
  p.groups = w.k / w.group_size;
  p.blocks_per_group = w.group_size / kBlockK;
  p.groups_per_split = c.groups_per_split;
  p.splits = c.splits;
  p.work_items = p.tile_pairs * p.token_tiles * c.splits;
  p.epilogue = args.epilogue;
  if ((p.groups + p.groups_per_split - 1) / p.groups_per_split != p.splits)
    fail("gemm_w4a8: ", p.splits, " splits of ", p.groups_per_split, " groups do not cover ", p.groups, " groups");
  if (c.kernel == GemmKernel::kDecodeMma) {
    p.x = args.x;
    launch_decode_gemm(p, c, stream);
    return;
  }
  const int grid = c.grid > 0 ? std::min(c.grid, p.work_items) : std::min(p.work_items, sm_count());

  const CUtensorMap map = make_x_map(args.x, args.m, w.k, c.token_tile, w.group_size);
  // Group 128 (every Llama shape) has a kernel per token tile; group 64 (SmolLM2) one with the
  // 64-token tile, which the dispatch picks for it (the block count per group is a template
  // parameter: a run-time bound around the wgmmas serializes them).
  if (p.blocks_per_group == 1) {
    if (c.token_tile != 64) fail("gemm_w4a8: group 64 runs with the 64-token tile only, not ", c.token_tile);
    launch<64, 1>(map, p, grid, stream);
    return;
  }
  switch (c.token_tile) {
    case 16: launch<16, 2>(map, p, grid, stream); break;
    case 64: launch<64, 2>(map, p, grid, stream); break;
    case 128: launch<128, 2>(map, p, grid, stream); break;
    case 192: launch<192, 2>(map, p, grid, stream); break;
    default: fail("gemm_w4a8: token tile ", c.token_tile, " is not 16, 64, 128 or 192");
  }
}

}  // namespace fireq::gemm
