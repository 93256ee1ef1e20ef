// Leaves accumulate into a context while torch's engine runs (engine/slots.py's `swapped`, in C++):
// each leaf's .grad holds the context's gradient for the engine call and the user's own again after,
// and where two or more leaves take part, a leaf handed a gradient an earlier leaf got gets a copy.
#pragma once

#include <torch/extension.h>

#include <memory>
#include <vector>

#include "torch_nodes.h"

namespace distautograd::native {

struct SeenGradients;

// Holds the GIL to swap in and to restore; the engine call between them may run without it.
class SwappedSlots {
 public:
  // `leaves`: AccumulateGrad nodes; `store`: the context's gradients {leaf tensor: gradient}.
  SwappedSlots(const std::vector<NodePtr>& leaves, pybind11::dict store);
  ~SwappedSlots();  // restores, if restore() was not called (an error on the way)
  SwappedSlots(const SwappedSlots&) = delete;
  SwappedSlots& operator=(const SwappedSlots&) = delete;

  // What each leaf accumulated goes to the store, and its own gradient back to .grad; the copying
  // pre-hooks go. Raises (after restoring every slot) if the store could not take a gradient.
  void restore();

 private:
  struct Slot {
    NodePtr leaf;
    at::Tensor variable;
    at::Tensor own;  // the user's .grad, kept aside
    pybind11::object key;  // the variable's Python object, the store's key
    torch::autograd::FunctionPreHook* copying = nullptr;  // our pre-hook on the leaf, if any
    bool swapped = false;  // .grad holds the store's gradient
  };
  std::vector<Slot> slots_;
  pybind11::dict store_;
  std::shared_ptr<SeenGradients> seen_;
  bool restored_ = false;
};

}  // namespace distautograd::native
