// What a profiled remote call recorded on its callee, added to the caller's legacy profiler.
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace distautograd::native {

// (record input shapes, record memory) of torch's legacy profiler on this thread, or nullopt when it is off.
std::optional<std::tuple<bool, bool>> legacy_profiler_config();

// A future that completes as `answer` does, once the events in `answer.profiled` (tuples: kind, name,
// thread, handle, shapes, cpu_memory, cpu_ns, node) have been added, under names starting with `prefix`,
// to the legacy profiler of the thread calling this.
pybind11::object with_remote_events(const pybind11::object& answer, const std::string& prefix);

}  // namespace distautograd::native
