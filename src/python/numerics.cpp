// numpy views of include/fireq/numerics.h and the INT4 weight quantizer of quant_ops.h: FP8 e4m3
// codes, INT4 group quantization with FP8 group scales in the canonical packing, and its inverse.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/stl/pair.h>

#include "bindings.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "fireq/quant_ops.h"
#include "fireq/quant_recipe.h"

namespace fireq::python {
namespace {

template <typename T>
using CpuInput = nb::ndarray<const T, nb::c_contig, nb::device::cpu>;

std::vector<size_t> shape_of(const auto& array) {
  std::vector<size_t> shape(array.ndim());
  for (size_t i = 0; i < shape.size(); ++i) shape[i] = array.shape(i);
  return shape;
}

NumpyArray<uint8_t> fp8_e4m3_codes(CpuInput<float> x) {
  std::vector<uint8_t> codes(x.size());
  const float* values = x.data();
  {
    nb::gil_scoped_release unlocked;
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = fp8_e4m3_from_float(values[i]);
  }
  return to_numpy(std::move(codes), shape_of(x));
}

NumpyArray<float> fp8_e4m3_values(CpuInput<uint8_t> codes) {
  std::vector<float> values(codes.size());
  const uint8_t* in = codes.data();
  for (size_t i = 0; i < values.size(); ++i) values[i] = fp8_e4m3_to_float(in[i]);
  return to_numpy(std::move(values), shape_of(codes));
}

// The recipe quantize_int4_linear needs for plain group quantization: no per-tensor scale, FP8
// group scales, K a multiple of the group.
QuantRecipe plain_int4_recipe(int group) {
  if (group < 2 || group % 2 != 0) fail("quantize_int4: group must be a positive even number, got ", group);
  QuantRecipe recipe;
  recipe.quantize_weights = true;
  recipe.group_size = group;
  recipe.weight_scale_dtype = ScaleDType::kFp8E4M3;
  recipe.per_tensor_scale = false;
  recipe.k_remainder = KRemainder::kRefuse;
  return recipe;
}

std::pair<NumpyArray<uint8_t>, NumpyArray<uint8_t>> quantize_int4(CpuInput<float> w, int group) {
  if (w.ndim() != 2) fail("quantize_int4: w must be 2-D [N, K], got ", w.ndim(), " dimensions");
  const QuantRecipe recipe = plain_int4_recipe(group);
  Matrix64 weight(static_cast<int64_t>(w.shape(0)), static_cast<int64_t>(w.shape(1)));
  const float* values = w.data();
  Int4Linear q;
  {
    nb::gil_scoped_release unlocked;
    for (size_t i = 0; i < weight.data.size(); ++i) weight.data[i] = values[i];
    q = quantize_int4_linear(weight, nullptr, recipe, "w");
  }
  const size_t n = static_cast<size_t>(q.out_features), k = static_cast<size_t>(q.in_features);
  return {to_numpy(std::move(q.packed), {n, k / 2}),
          to_numpy(std::move(q.scales_fp8), {n, k / static_cast<size_t>(group)})};
}

NumpyArray<float> dequantize_int4(CpuInput<uint8_t> packed, CpuInput<uint8_t> scales, int group) {
  if (packed.ndim() != 2 || scales.ndim() != 2)
    fail("dequantize_int4: packed [N, K/2] and scales [N, K/group] must be 2-D");
  plain_int4_recipe(group);  // validates the group
  Int4Linear q;
  q.out_features = static_cast<int64_t>(packed.shape(0));
  q.in_features = q.padded_in_features = 2 * static_cast<int64_t>(packed.shape(1));
  q.group_size = group;
  if (q.in_features % group != 0)
    fail("dequantize_int4: K = ", q.in_features, " (2 x packed columns) is not a multiple of group ", group);
  if (static_cast<int64_t>(scales.shape(0)) != q.out_features ||
      static_cast<int64_t>(scales.shape(1)) != q.groups_per_row())
    fail("dequantize_int4: scales must be [", q.out_features, ", ", q.groups_per_row(), "], got [",
         scales.shape(0), ", ", scales.shape(1), "]");
  q.packed.assign(packed.data(), packed.data() + packed.size());
  q.scales_fp8.assign(scales.data(), scales.data() + scales.size());
  std::vector<float> w = q.dequantize();
  return to_numpy(std::move(w), {static_cast<size_t>(q.out_features), static_cast<size_t>(q.in_features)});
}

}  // namespace

void bind_numerics(nb::module_& m) {
  m.def("fp8_e4m3", &fp8_e4m3_codes, nb::arg("x"),
        "float32 array -> uint8 FP8 e4m3 codes (round to nearest even, saturating, NaN -> 0x7F)");
  m.def("fp8_e4m3_to_float", &fp8_e4m3_values, nb::arg("codes"), "uint8 FP8 e4m3 codes -> float32");
  m.def("quantize_int4", &quantize_int4, nb::arg("w"), nb::arg("group"),
        "float32 [N, K] -> (packed uint8 [N, K/2], scales uint8 e4m3 [N, K/group])");
  m.def("dequantize_int4", &dequantize_int4, nb::arg("packed"), nb::arg("scales"), nb::arg("group"),
        "(packed [N, K/2], e4m3 scales [N, K/group]) -> float32 [N, K] = q * scale");
}

}  // namespace fireq::python
