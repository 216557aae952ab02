// FP32 linear layers through OpenBLAS: sgemm for a chunk of tokens, sgemv for a single token.
#include <cblas.h>

#include <algorithm>
#include <sstream>

#include "fireq/engine.h"
#include "fireq/error.h"

namespace fireq {
namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

const FloatTensor& checked_matrix(const FloatTensor& weight, const std::string& name) {
  if (weight.shape.size() != 2 || weight.shape[0] <= 0 || weight.shape[1] <= 0 ||
      static_cast<int64_t>(weight.data.size()) != weight.numel())
    fail("linear ", name, ": weight must be a non-empty [out, in] matrix holding its data, got shape ",
         shape_string(weight.shape), " with ", weight.data.size(), " values");
  return weight;
}

}  // namespace

Linear::Linear(int in_features, int out_features) : in_(in_features), out_(out_features) {
  if (in_features <= 0 || out_features <= 0)
    fail("linear layer with invalid shape ", out_features, " x ", in_features);
}

FloatLinear::FloatLinear(const FloatTensor& weight, const FloatTensor* bias, const std::string& name)
    : Linear(static_cast<int>(checked_matrix(weight, name).cols()), static_cast<int>(weight.rows())),
      weight_(weight.data.data()),
      bias_(nullptr) {
  if (bias && !bias->empty()) {
    if (bias->numel() != out_features() || static_cast<int64_t>(bias->data.size()) != bias->numel())
      fail("linear ", name, ": bias has shape ", shape_string(bias->shape), ", expected [",
           out_features(), "]");
    bias_ = bias->data.data();
  }
}

void FloatLinear::forward(const float* x, int tokens, float* y) const {
  const int in = in_features(), out = out_features();
  float beta = 0.0f;
  if (bias_) {
    for (int t = 0; t < tokens; ++t) std::copy(bias_, bias_ + out, y + static_cast<size_t>(t) * out);
    beta = 1.0f;
  }
  if (tokens == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, weight_, in, x, 1, beta, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, out, in, 1.0f, x, in, weight_, in,
                beta, y, out);
  }
}

}  // namespace fireq
