// torch's RPC shows a remote call's work in the caller's profile: the callee profiles the call and
// sends its events back, and the caller adds them to its own thread's legacy profiler, each name
// prefixed with the call's key and marked remote (torch::autograd::profiler::addEventList). That
// profiler state is thread-local, and the answer arrives on another thread: the callback that adds
// the events carries the calling thread's state with it (at::wrapPropagateTLSState), as torch's do.
#include "remote_events.h"

#include "gil.h"

#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/csrc/profiler/api.h>

namespace distautograd::native {

namespace {

using torch::autograd::profiler::EventKind;
using torch::autograd::profiler::LegacyEvent;

EventKind kind_of(const std::string& kind) {
  if (kind == "push") return EventKind::PushRange;
  if (kind == "pop") return EventKind::PopRange;
  if (kind == "memory_alloc") return EventKind::MemoryAlloc;
  return EventKind::Mark;
}

// The events of `answer.profiled`, named `prefix` + their name. Holds the GIL.
std::vector<LegacyEvent> events_of(const pybind11::object& answer, const std::string& prefix) {
  std::vector<LegacyEvent> events;
  if (!pybind11::hasattr(answer, "profiled")) return events;
  for (const auto& item : answer.attr("profiled")) {
    auto [kind, name, thread, handle, shapes, cpu_memory, cpu_ns, node] =
        item.cast<std::tuple<std::string, std::string, uint16_t, uint64_t, std::vector<std::vector<int64_t>>, int64_t,
                             int64_t, int64_t>>();
    if (cpu_ns <= 0) continue;  // torch's constructor asserts a time was recorded
    events.emplace_back(kind_of(kind), at::StringView(prefix + name), thread, handle, std::move(shapes), node,
                        /*is_remote=*/true, cpu_memory, cpu_ns, /*cuda_recorded=*/false);
  }
  return events;
}

}  // namespace

std::optional<std::tuple<bool, bool>> legacy_profiler_config() {
  if (!torch::autograd::profiler::profilerEnabled()) return std::nullopt;
  auto config = torch::profiler::impl::getProfilerConfig();
  return std::make_tuple(config.report_input_shapes, config.profile_memory);
}

pybind11::object with_remote_events(const pybind11::object& answer, const std::string& prefix) {
  auto fut = torch::jit::toIValue(answer, c10::FutureType::create(c10::PyObjectType::get())).toFuture();
  // The answer object outlives the callback; it is released with the GIL held.
  std::shared_ptr<pybind11::object> held(new pybind11::object(answer), [](pybind11::object* object) {
    gil::unless_finalizing([object] { delete object; });
  });
  auto added = fut->then(
      at::wrapPropagateTLSState([held, prefix](c10::ivalue::Future& parent) -> c10::IValue {
        std::vector<LegacyEvent> events;
        gil::unless_finalizing([&] { events = events_of(*held, prefix); });
        if (!events.empty()) torch::autograd::profiler::addEventList(std::move(events));
        if (parent.hasError()) std::rethrow_exception(parent.exception_ptr());
        return parent.value();
      }),
      fut->elementType());
  return torch::jit::toPyObject(c10::IValue(std::move(added)));
}

}  // namespace distautograd::native
