// The _fireq extension module: fireq::Error becomes fireq.Error (a ValueError subclass) carrying
// the C++ message, which names the file, tensor or field at fault.
#include <nanobind/nanobind.h>

#include "bindings.h"
#include "fireq/error.h"

NB_MODULE(_fireq, m) {
  namespace nb = nanobind;
  m.doc() = "FireQ C++ core: INT4/FP8 numerics, the CPU reference engine, quantizer and checkpoints";
  m.attr("__version__") = FIREQ_VERSION;
  nb::exception<fireq::Error>(m, "Error", PyExc_ValueError);
  fireq::python::bind_numerics(m);
  fireq::python::bind_model(m);
  fireq::python::bind_checkpoints(m);
}
