// Failing a torch Future the way torch's own RPC fails one: an error set in C++ (so
// torch.futures.wait_all returns at the first failure), that re-raises the very Python exception.
#pragma once

#include <torch/extension.h>

namespace distautograd::native {

// Marks `future` (a torch.futures.Future) failed with `exception` (a Python exception instance).
void fail_future(const pybind11::handle& future, const pybind11::object& exception);

}  // namespace distautograd::native
