// The garbage collector's view of a bound class that holds Python objects which may refer back to it
// (callbacks closing over whoever holds it): pybind11's type setup that has the collector ask the object
// what it holds (T::traverse) and let it go (T::clear).
#pragma once

#include <torch/extension.h>

namespace distautograd::native {

template <typename T>
pybind11::custom_type_setup collectable() {
  return pybind11::custom_type_setup([](PyHeapTypeObject* heap_type) {
    PyTypeObject* type = &heap_type->ht_type;
    type->tp_flags |= Py_TPFLAGS_HAVE_GC;
    type->tp_traverse = [](PyObject* self, visitproc visit, void* arg) -> int {
      Py_VISIT(Py_TYPE(self));
      if (!pybind11::detail::is_holder_constructed(self)) return 0;
      return pybind11::cast<const T&>(pybind11::handle(self)).traverse(visit, arg);
    };
    type->tp_clear = [](PyObject* self) -> int {
      if (pybind11::detail::is_holder_constructed(self)) pybind11::cast<T&>(pybind11::handle(self)).clear();
      return 0;
    };
  });
}

}  // namespace distautograd::native
