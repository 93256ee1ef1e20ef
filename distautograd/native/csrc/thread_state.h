// A thread's torch state (profiler, grad mode, ...), captured to run code under it later, elsewhere.
#pragma once

#include <torch/extension.h>

#include <ATen/ThreadLocalState.h>

namespace distautograd::native {

class ThreadState {
 public:
  ThreadState();  // captures the calling thread's state
  // Calls `fn` on this thread with the captured state in place, then puts this thread's own back.
  pybind11::object run(const pybind11::function& fn) const;

 private:
  at::ThreadLocalState state_;
};

}  // namespace distautograd::native
