// Shared pieces of the _fireq extension: one bind_* function per source file, and numpy arrays
// that own the std::vector they were built from (no copy on the way to Python).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

namespace fireq::python {

namespace nb = nanobind;

template <typename T>
using NumpyArray = nb::ndarray<nb::numpy, T>;

// A numpy array of `shape` over `values`, which it takes over.
template <typename T>
NumpyArray<T> to_numpy(std::vector<T>&& values, const std::vector<size_t>& shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return NumpyArray<T>(owned->data(), shape.size(), shape.data(), owner);
}

void bind_numerics(nb::module_& m);
void bind_model(nb::module_& m);
void bind_checkpoints(nb::module_& m);

}  // namespace fireq::python
