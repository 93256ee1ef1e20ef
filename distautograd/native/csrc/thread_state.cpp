// torch keeps a thread's profiler (and grad mode, and more) in thread-local state, and carries it
// into the callbacks of the work a thread starts (at::wrapPropagateTLSState). Python cannot: a call
// that answers later (@async_execution) ends its profile on another thread, under the state its
// first thread had. This is that state, captured and reapplied.
#include "thread_state.h"

namespace distautograd::native {

ThreadState::ThreadState() : state_() {}

pybind11::object ThreadState::run(const pybind11::function& fn) const {
  at::ThreadLocalStateGuard guard(state_);
  return fn();
}

}  // namespace distautograd::native
