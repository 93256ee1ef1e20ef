// The one binding module of the compiled core (distautograd._core): what Python may call.
#include <torch/extension.h>

#include "futures.h"
#include "remote_events.h"
#include "thread_state.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "distautograd's compiled core";
  m.def("fail_future", &distautograd::native::fail_future, pybind11::arg("future"), pybind11::arg("exception"),
        "Fails a torch Future with a Python exception, as torch's RPC fails its own.");
  m.def("legacy_profiler_config", &distautograd::native::legacy_profiler_config,
        "(record shapes, record memory) of torch's legacy profiler on this thread, or None when it is off.");
  m.def("with_remote_events", &distautograd::native::with_remote_events, pybind11::arg("answer"),
        pybind11::arg("prefix"),
        "A future completing as `answer` does, after its callee's profiled events join this thread's profiler.");
  pybind11::class_<distautograd::native::ThreadState>(m, "ThreadState",
                                                     "The calling thread's torch state (profiler, grad mode, ...).")
      .def(pybind11::init<>())
      .def("run", &distautograd::native::ThreadState::run, pybind11::arg("fn"),
           "Calls fn here under the captured state.");
}
