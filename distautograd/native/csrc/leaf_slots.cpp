// See leaf_slots.h. The copying pre-hook is engine/slots.py's `own_copy`: a leaf that is handed the
// very tensor an earlier leaf of the same call got clones it, as torch's distributed engine (which
// holds every gradient until all are accumulated) would have AccumulateGrad copy it. It remembers
// those tensors weakly, so holding them does not itself make AccumulateGrad copy.
#include "leaf_slots.h"

#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace distautograd::native {

namespace py = pybind11;
using torch::autograd::AccumulateGrad;
using torch::autograd::variable_list;

struct SeenGradients {
  std::mutex mutex;
  std::unordered_map<c10::TensorImpl*, c10::weak_intrusive_ptr<c10::TensorImpl>> tensors;
};

namespace {

class CopyIfSeen : public torch::autograd::FunctionPreHook {
 public:
  explicit CopyIfSeen(std::shared_ptr<SeenGradients> seen) : seen_(std::move(seen)) {}

  variable_list operator()(const variable_list& grads) override {
    if (grads.empty() || !grads[0].defined()) return grads;
    c10::TensorImpl* impl = grads[0].unsafeGetTensorImpl();
    std::lock_guard<std::mutex> lock(seen_->mutex);
    auto found = seen_->tensors.find(impl);
    if (found != seen_->tensors.end() && !found->second.expired()) return {grads[0].clone()};
    // A weak handle keeps the memory of the impl, so no other tensor takes its address meanwhile.
    seen_->tensors.insert_or_assign(impl, c10::weak_intrusive_ptr<c10::TensorImpl>(
                                              grads[0].getIntrusivePtr()));
    return grads;
  }

 private:
  std::shared_ptr<SeenGradients> seen_;
};

AccumulateGrad& accumulator(const NodePtr& leaf) {
  auto* accumulate = dynamic_cast<AccumulateGrad*>(leaf.get());
  if (accumulate == nullptr) throw py::type_error("a leaf of a wave must be an AccumulateGrad node");
  if (!accumulate->variable.defined()) throw py::value_error("a leaf of a wave has no tensor any more");
  return *accumulate;
}

}  // namespace

SwappedSlots::SwappedSlots(const std::vector<NodePtr>& leaves, py::dict store) : store_(std::move(store)) {
  slots_.reserve(leaves.size());
  for (const NodePtr& leaf : leaves) {
    at::Tensor variable = accumulator(leaf).variable;
    slots_.push_back({leaf, variable, variable.grad(), py::cast(variable), nullptr, false});
  }
  if (slots_.size() > 1) seen_ = std::make_shared<SeenGradients>();
  try {
    for (Slot& slot : slots_) {
      PyObject* stored = PyDict_GetItemWithError(store_.ptr(), slot.key.ptr());
      if (stored == nullptr && PyErr_Occurred()) throw py::error_already_set();
      if (seen_) {
        auto hook = std::make_unique<CopyIfSeen>(seen_);
        slot.copying = hook.get();
        slot.leaf->add_pre_hook(std::move(hook));
      }
      // Through .grad's own setter, as slots.py does: a gradient that no longer fits the tensor (its
      // dtype or device changed between two passes of one context) fails with torch's message.
      if (PyObject_SetAttrString(slot.key.ptr(), "grad", stored != nullptr ? stored : Py_None) != 0) {
        throw py::error_already_set();
      }
      slot.swapped = true;
    }
  } catch (...) {
    restore();  // the destructor of an object not made does not run
    throw;
  }
}

void SwappedSlots::restore() {
  if (restored_) return;
  restored_ = true;
  std::exception_ptr failed;
  for (Slot& slot : slots_) {
    if (slot.copying != nullptr) {
      auto& hooks = slot.leaf->pre_hooks();
      hooks.erase(std::remove_if(hooks.begin(), hooks.end(),
                                 [&](const auto& hook) { return hook.get() == slot.copying; }),
                  hooks.end());
    }
    if (!slot.swapped) continue;
    at::Tensor after = slot.variable.grad();
    slot.variable.mutable_grad() = slot.own;
    if (!after.defined()) continue;
    try {
      store_[slot.key] = py::cast(after);
    } catch (...) {  // only a failing hash or no memory; the other slots are still restored
      if (!failed) failed = std::current_exception();
    }
  }
  if (failed) std::rethrow_exception(failed);
}

SwappedSlots::~SwappedSlots() {
  try {
    restore();
  } catch (...) {  // a destructor must not throw: an error is already on its way out
  }
}

}  // namespace distautograd::native
