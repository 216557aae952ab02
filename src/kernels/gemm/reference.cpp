// CPU reference of the INT4 x FP8 GEMM: the numerics the Hopper kernel implements, written for
// clarity, not speed (tests run it on small shapes; the GPU tests on full Llama shapes).
#include "fireq/kernels/gemm_reference.h"

#include <algorithm>
#include <cmath>

#include "fireq/error.h"
#include "fireq/numerics.h"

namespace fireq::gemm {

const char* epilogue_name(Epilogue epilogue) {
  switch (epilogue) {
    case Epilogue::kBf16: return "bf16";
    case Epilogue::kSwiGlu: return "swiglu";
    case Epilogue::kResidualAdd: return "residual";
  }
  return "?";
}

Int4Weights quantize_int4_weights(const float* w, int n, int k, int group_size) {
  if (group_size != 64 && group_size != 128) fail("quantize_int4_weights: group size ", group_size, " is not 64 or 128");
  if (n <= 0 || k <= 0 || k % group_size != 0)
    fail("quantize_int4_weights: K = ", k, " is not a positive multiple of the group size ", group_size);
  Int4Weights q;
  q.n = n;
  q.k = k;
  q.group_size = group_size;
  q.packed.assign(static_cast<size_t>(n) * k / 2, 0);
  q.scales.assign(static_cast<size_t>(n) * (k / group_size), 0);
  for (int row = 0; row < n; ++row) {
    for (int g = 0; g < k / group_size; ++g) {
      const float* group = w + static_cast<size_t>(row) * k + static_cast<size_t>(g) * group_size;
      float absmax = 0.0f;
      for (int i = 0; i < group_size; ++i) absmax = std::max(absmax, std::min(std::fabs(group[i]), kFp8E4M3Max));
      const uint8_t scale = int4_group_scale_e4m3(absmax);
      q.scales[static_cast<size_t>(row) * (k / group_size) + g] = scale;
      const float sigma = fp8_e4m3_to_float(scale);
      for (int i = 0; i < group_size; i += 2) {
        const float lo = std::clamp(group[i], -kFp8E4M3Max, kFp8E4M3Max);
        const float hi = std::clamp(group[i + 1], -kFp8E4M3Max, kFp8E4M3Max);
        q.packed[(static_cast<size_t>(row) * k + static_cast<size_t>(g) * group_size + i) / 2] =
            int4_pack(int4_quantize(lo, sigma), int4_quantize(hi, sigma));
      }
    }
  }
  return q;
}

Fp8Activations quantize_fp8_rows(const float* x, int m, int k) {
  Fp8Activations a;
  a.m = m;
  a.k = k;
  a.values.resize(static_cast<size_t>(m) * k);
  a.scales.resize(m);
  for (int row = 0; row < m; ++row) {
    const float* r = x + static_cast<size_t>(row) * k;
    float absmax = 0.0f;
    for (int i = 0; i < k; ++i) absmax = std::max(absmax, std::fabs(r[i]));
    const float scale = fp8_token_scale(absmax);
    a.scales[row] = scale;
    for (int i = 0; i < k; ++i) a.values[static_cast<size_t>(row) * k + i] = fp8_quantize_activation(r[i], scale);
  }
  return a;
}

Fp8Activations rmsnorm_fp8_reference(const uint16_t* x, const uint16_t* gamma, int m, int k, float eps) {
  std::vector<float> normed(static_cast<size_t>(m) * k);
  for (int row = 0; row < m; ++row) {
    const uint16_t* r = x + static_cast<size_t>(row) * k;
    double sum_squares = 0.0;
    for (int i = 0; i < k; ++i) {
      const double v = bf16_to_float(r[i]);
      sum_squares += v * v;
    }
    const float inv_rms = 1.0f / std::sqrt(static_cast<float>(sum_squares) / static_cast<float>(k) + eps);
    for (int i = 0; i < k; ++i)
      normed[static_cast<size_t>(row) * k + i] = bf16_to_float(r[i]) * inv_rms * bf16_to_float(gamma[i]);
  }
  return quantize_fp8_rows(normed.data(), m, k);
}

std::vector<float> gemm_accumulate_reference(const Fp8Activations& x, const Int4Weights& w, float s_inv) {
  if (x.k != w.k) fail("gemm_reference: activations have K = ", x.k, " but the weights K = ", w.k);
  if (w.group_size <= 0 || w.k % w.group_size != 0) fail("gemm_reference: bad group size ", w.group_size);
  const int groups = w.k / w.group_size;
  std::vector<float> x_float(x.values.size());
  for (size_t i = 0; i < x.values.size(); ++i) x_float[i] = fp8_e4m3_to_float(x.values[i]);
  std::vector<float> y(static_cast<size_t>(x.m) * w.n);
  std::vector<int> q_row(w.k);
  for (int n = 0; n < w.n; ++n) {
    const uint8_t* packed_row = w.packed.data() + static_cast<size_t>(n) * w.k / 2;
    for (int k = 0; k < w.k; ++k) q_row[k] = int4_at(packed_row, k);
    for (int m = 0; m < x.m; ++m) {
      const float* x_row = x_float.data() + static_cast<size_t>(m) * w.k;
      float acc = 0.0f;
      for (int g = 0; g < groups; ++g) {
        double partial = 0.0;  // exact: at most 128 products of 8 significant bits
        for (int k = g * w.group_size; k < (g + 1) * w.group_size; ++k) partial += static_cast<double>(x_row[k]) * q_row[k];
        const float sigma = fp8_e4m3_to_float(w.scales[static_cast<size_t>(n) * groups + g]);
        acc = std::fmaf(sigma, static_cast<float>(partial), acc);
      }
      y[static_cast<size_t>(m) * w.n + n] = acc * (x.scales[m] * s_inv);
    }
  }
  return y;
}

float silu_reference(float g) { return g / (1.0f + std::exp(-g)); }

std::vector<uint16_t> apply_epilogue_reference(const std::vector<float>& y, int m, int n, Epilogue epilogue,
                                               const uint16_t* residual) {
  if (epilogue == Epilogue::kSwiGlu) {
    if (n % 2 != 0) fail("gemm_reference: SwiGLU needs an even N (gate|up), got ", n);
    const int half = n / 2;
    std::vector<uint16_t> out(static_cast<size_t>(m) * half);
    for (int row = 0; row < m; ++row)
      for (int i = 0; i < half; ++i) {
        const float gate = y[static_cast<size_t>(row) * n + i];
        const float up = y[static_cast<size_t>(row) * n + half + i];
        out[static_cast<size_t>(row) * half + i] = bf16_from_float(silu_reference(gate) * up);
      }
    return out;
  }
  if (epilogue == Epilogue::kResidualAdd && residual == nullptr) fail("gemm_reference: residual epilogue without a residual");
  std::vector<uint16_t> out(static_cast<size_t>(m) * n);
  for (size_t i = 0; i < out.size(); ++i) {
    const float v = epilogue == Epilogue::kResidualAdd ? y[i] + bf16_to_float(residual[i]) : y[i];
    out[i] = bf16_from_float(v);
  }
  return out;
}

std::vector<uint16_t> gemm_reference(const Fp8Activations& x, const Int4Weights& w, float s_inv, Epilogue epilogue,
                                     const uint16_t* residual) {
  return apply_epilogue_reference(gemm_accumulate_reference(x, w, s_inv), x.m, w.n, epilogue, residual);
}

Fp8Activations quantize_bf16_rows_reference(const uint16_t* rows, int m, int n) {
  std::vector<float> values(static_cast<size_t>(m) * n);
  for (size_t i = 0; i < values.size(); ++i) values[i] = bf16_to_float(rows[i]);
  return quantize_fp8_rows(values.data(), m, n);
}

}  // namespace fireq::gemm
