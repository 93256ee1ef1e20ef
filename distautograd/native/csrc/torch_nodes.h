// torch's autograd Nodes and their Python objects, both ways: what the planner and the recv node use
// to go from a grad_fn (or a GradientEdge's node) to the C++ Node behind it and back.
#pragma once

#include <torch/extension.h>

#include <torch/csrc/autograd/function.h>

namespace distautograd::native {

using NodePtr = c10::intrusive_ptr<torch::autograd::Node>;

// The Node behind a grad_fn object (a C++ node's or a custom Function's), or null when it is neither.
NodePtr node_of(PyObject* object);

// The Node behind `object`, or a TypeError saying that `what` must be an autograd node.
NodePtr node_or_raise(const pybind11::handle& object, const char* what);

// The Python object of `node` (torch's own, made now if none is alive).
pybind11::object object_of(const NodePtr& node);

}  // namespace distautograd::native
