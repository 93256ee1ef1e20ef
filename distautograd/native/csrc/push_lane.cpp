// A push run by the call that read it: into its registered part, or through the pass protocol (push_lane.h).
#include "push_lane.h"

#include <torch/csrc/profiler/api.h>

#include <optional>
#include <vector>

#include "collectable.h"
#include "local_pass.h"
#include "tensor_codec.h"

namespace py = pybind11;

namespace distautograd::native {

PushLane::PushLane(py::object take, py::object lend, py::object reclaim, py::object stamps, uint64_t unsent_limit)
    : take_(std::move(take)),
      lend_(std::move(lend)),
      reclaim_(std::move(reclaim)),
      stamps_(std::move(stamps)),
      unsent_limit_(unsent_limit) {}

void PushLane::add(uint64_t context_id, uint64_t pass_id, py::object local, py::object learn, py::object failed) {
  if (!py::isinstance<LocalPass>(local)) {  // a TypeError now, not at the first push
    throw py::type_error("a PushLane runs pushes into the core's LocalPass, not " +
                         py::str(py::type::of(local)).cast<std::string>());
  }
  parts_[{context_id, pass_id}] = Entry{std::move(local), std::move(learn), std::move(failed)};
}

void PushLane::drop(uint64_t context_id, uint64_t pass_id) { parts_.erase({context_id, pass_id}); }

namespace {

// The gradients the core decodes, one per message id; none where the Python path is to decode them
// (and say what is wrong with them, if anything is).
std::optional<py::list> decoded(const PushRead& push, const py::list& attachments, uint64_t unsent_limit) {
  py::object grads;
  try {
    grads = decode_tensor_list(py::bytes(push.gradients), attachments, unsent_limit);
  } catch (const std::exception&) {  // error_already_set among them: the error is dropped with it
    return std::nullopt;
  }
  if (!py::isinstance<py::list>(grads) || py::len(grads) != push.message_ids.size()) return std::nullopt;
  return py::reinterpret_borrow<py::list>(grads);
}

}  // namespace

bool PushLane::run(const PushRead& push, const py::list& attachments, int64_t src) {
  if (push.message_ids.empty() || torch::autograd::profiler::profilerEnabled()) {
    return false;  // the Python path records a range per push, on the thread that runs it
  }
  bool stamping = py::bool_(stamps_.attr("ON"));
  if (stamping) stamps_.attr("arrived")();
  std::optional<py::list> grads = decoded(push, attachments, unsent_limit_);
  if (!grads) return false;
  if (stamping) stamps_.attr("received")(py::make_tuple(push.context_id, push.pass_id, push.message_ids[0]));
  auto found = parts_.find({push.context_id, push.pass_id});
  if (found != parts_.end()) {
    Entry entry = found->second;  // held here: what runs may drop it
    return run_registered(entry, push, *grads);
  }
  try {
    py::object plan = push.plan ? py::object(py::bytes(*push.plan)) : py::object(py::none());
    return py::bool_(take_(src, push.context_id, push.pass_id, push.root, message_ids_as_list(push), done_as_list(push),
                           plan, *grads));
  } catch (py::error_already_set& unreported) {  // `take` says its own failures: this is a last resort
    unreported.discard_as_unraisable("distautograd's push lane handing a push to the pass protocol");
    return true;
  }
}

bool PushLane::run_registered(const Entry& entry, const PushRead& push, const py::list& grads) {
  py::object role = lend_();
  try {
    if (!push.done.empty()) entry.learn(done_as_list(push));
    LocalPass& local = entry.local.cast<LocalPass&>();
    std::vector<std::optional<at::Tensor>> one(1);
    for (size_t i = 0; i < push.message_ids.size(); ++i) {
      py::handle grad = grads[i];
      one[0] = grad.is_none() ? std::nullopt : std::optional<at::Tensor>(THPVariable_Unpack(grad.ptr()));
      arrive_as_python(local, py::int_(push.message_ids[i]), one);
    }
  } catch (py::error_already_set& error) {
    try {
      entry.failed(error.value());
    } catch (py::error_already_set& unreported) {
      unreported.discard_as_unraisable("distautograd's push lane reporting a part's error");
    }
  }
  if (!role.is_none()) reclaim_(role);
  return true;
}

py::list message_ids_as_list(const PushRead& push) {
  py::list ids(push.message_ids.size());
  for (size_t i = 0; i < push.message_ids.size(); ++i) ids[i] = py::int_(push.message_ids[i]);
  return ids;
}

py::list done_as_list(const PushRead& push) {
  py::list done(push.done.size());
  for (size_t i = 0; i < push.done.size(); ++i) done[i] = py::make_tuple(push.done[i].first, push.done[i].second);
  return done;
}

int PushLane::traverse(visitproc visit, void* arg) const {
  for (const py::object* held : {&take_, &lend_, &reclaim_, &stamps_}) Py_VISIT(held->ptr());
  for (const auto& [key, entry] : parts_) {
    Py_VISIT(entry.local.ptr());
    Py_VISIT(entry.learn.ptr());
    Py_VISIT(entry.failed.ptr());
  }
  return 0;
}

void PushLane::clear() {
  parts_.clear();
  take_ = lend_ = reclaim_ = stamps_ = py::none();
}

void add_push_lane_type(py::module_& module) {
  // The callbacks it holds close over Parts, which reach whoever holds the lane: the collector sees both.
  py::class_<PushLane>(module, "PushLane",
                       "Pushes run by the call that read them: into their part where it is registered.",
                       collectable<PushLane>())
      .def(py::init<py::object, py::object, py::object, py::object, uint64_t>(), py::arg("take"), py::arg("lend"),
           py::arg("reclaim"), py::arg("stamps"), py::arg("unsent_limit"))
      .def("add", &PushLane::add, py::arg("context_id"), py::arg("pass_id"), py::arg("local"), py::arg("learn"),
           py::arg("failed"), "Pushes of the pass arrive at `local` (a LocalPass) from now on.")
      .def("drop", &PushLane::drop, py::arg("context_id"), py::arg("pass_id"),
           "Nothing more of the pass goes this way.")
      .def("__len__", &PushLane::size);
}

}  // namespace distautograd::native
