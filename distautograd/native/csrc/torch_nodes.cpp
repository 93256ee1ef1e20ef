// See torch_nodes.h.
#include "torch_nodes.h"

#include <torch/csrc/autograd/python_cpp_function.h>
#include <torch/csrc/autograd/python_function.h>

#include <string>

namespace distautograd::native {

NodePtr node_of(PyObject* object) {
  if (torch::autograd::THPCppFunction_Check(object)) {
    return reinterpret_cast<torch::autograd::THPCppFunction*>(object)->cdata;
  }
  int is_function = PyObject_IsInstance(object, reinterpret_cast<PyObject*>(&THPFunctionType));
  if (is_function < 0) {
    PyErr_Clear();
    return {};
  }
  return is_function ? reinterpret_cast<THPFunction*>(object)->cdata : NodePtr();
}

NodePtr node_or_raise(const pybind11::handle& object, const char* what) {
  NodePtr node = node_of(object.ptr());
  if (!node) throw pybind11::type_error(std::string(what) + " must be an autograd node (a tensor's grad_fn)");
  return node;
}

pybind11::object object_of(const NodePtr& node) {
  PyObject* object = torch::autograd::functionToPyObject(node);
  if (object == nullptr) throw pybind11::error_already_set();
  return pybind11::reinterpret_steal<pybind11::object>(object);
}

}  // namespace distautograd::native
