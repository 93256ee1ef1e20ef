// The one binding module of the compiled core (distautograd._core): what Python may call.
#include <torch/extension.h>
#include <torch/csrc/Exceptions.h>

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <optional>
#include <cstring>

#include "envelope.h"
#include "fields.h"
#include "frame_reader.h"
#include "frame_writer.h"
#include "futures.h"
#include "gil.h"
#include "lent_watch.h"
#include "local_pass.h"
#include "pass_graph.h"
#include "push_lane.h"
#include "push_reading.h"
#include "push_request.h"
#include "recv_node.h"
#include "remote_events.h"
#include "tensor_codec.h"
#include "thread_state.h"
#include "wave_run.h"
#include "wire.h"

namespace {

using distautograd::native::Envelope;
using distautograd::native::FrameReader;

// A push's header up to this size is read holding the GIL: that takes less than letting it go and back.
constexpr size_t kParsedHoldingGil = 16 << 10;

pybind11::tuple envelope_tuple(const Envelope& envelope) {
  pybind11::list sizes, shared;
  for (uint64_t size : envelope.streamed_sizes) sizes.append(size);
  for (uint32_t key : envelope.shared) shared.append(key);
  return pybind11::make_tuple(envelope.kind, sizes, shared);
}

// (context id, pass id, root, [message ids], [(rank, leaves)], plan bytes or None, gradients' Value bytes)
// of a push push_reading.h read, or None.
pybind11::object push_tuple(const std::optional<distautograd::native::PushRead>& push) {
  if (!push) return pybind11::none();
  using distautograd::native::done_as_list, distautograd::native::message_ids_as_list;
  pybind11::object plan = push->plan ? pybind11::object(pybind11::bytes(*push->plan)) : pybind11::none();
  return pybind11::make_tuple(push->context_id, push->pass_id, push->root, message_ids_as_list(*push),
                              done_as_list(*push), plan, pybind11::bytes(push->gradients));
}

// One frame: (header bytes, (kind, streamed sizes, shared keys), the streamed attachments with None
// where one is in shared memory -- or None when together they are over `following_limit` and are still
// in the stream -- their total, and the push it carries as push_tuple gives it, or None; or True where
// `lane` ran that push, from peer `peer_rank`, having closed the descriptors that came with it).
// `allocate(size)` gives the writable buffer for each of at least `allocate_from` bytes, a bytearray is
// made for each smaller one; a read that waits runs without the GIL.
pybind11::tuple read_frame(FrameReader& reader, uint64_t header_limit, uint64_t following_limit,
                           const pybind11::function& allocate, uint64_t allocate_from,
                           distautograd::native::PushLane* lane, int64_t peer_rank) {
  Envelope envelope;
  std::string header;
  {
    distautograd::native::gil::Released released;
    header = reader.read_header(header_limit, &envelope);
  }
  uint64_t following = envelope.following();
  pybind11::bytes header_bytes(header);
  if (following > following_limit) {
    return pybind11::make_tuple(header_bytes, envelope_tuple(envelope), pybind11::none(), following, pybind11::none());
  }
  pybind11::list buffers;
  std::vector<pybind11::buffer_info> views;  // of the buffers `allocate` gave, kept while they are read into
  std::vector<std::pair<uint8_t*, size_t>> into;
  for (size_t i = 0; i < envelope.streamed_sizes.size(); ++i) {
    if (envelope.shared.count(static_cast<uint32_t>(i))) {
      buffers.append(pybind11::none());
      continue;
    }
    uint64_t size = envelope.streamed_sizes[i];
    if (size < allocate_from) {  // a small one: a bytearray, as frames.allocate makes it, without calling it
      pybind11::object buffer = pybind11::reinterpret_steal<pybind11::object>(
          PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size)));
      if (!buffer) throw pybind11::error_already_set();
      into.emplace_back(reinterpret_cast<uint8_t*>(PyByteArray_AS_STRING(buffer.ptr())), size);
      buffers.append(buffer);
      continue;
    }
    pybind11::object buffer = allocate(size);
    pybind11::buffer_info info = pybind11::reinterpret_borrow<pybind11::buffer>(buffer).request(true);
    if (static_cast<uint64_t>(info.size * info.itemsize) != size) {
      throw pybind11::value_error("allocate(size) returned a buffer of another size");
    }
    into.emplace_back(static_cast<uint8_t*>(info.ptr), size);
    views.push_back(std::move(info));
    buffers.append(buffer);
  }
  // What came with the header is read holding the GIL (letting it go and taking it back costs more);
  // the GIL goes only when the reader would wait for the rest.
  size_t next = 0;
  while (next < into.size()) {
    size_t got = reader.read_ready(into[next].first, into[next].second);
    if (got < into[next].second) {
      into[next].first += got;
      into[next].second -= got;
      break;
    }
    ++next;
  }
  if (next < into.size()) {
    distautograd::native::gil::Released released;
    for (; next < into.size(); ++next) reader.read_into(into[next].first, into[next].second);
  }
  std::optional<distautograd::native::PushRead> push;
  if (envelope.kind == distautograd::native::fields::frame::kRequest && envelope.shared.empty()) {
    const auto* data = reinterpret_cast<const uint8_t*>(header.data());
    if (header.size() <= kParsedHoldingGil) {
      push = distautograd::native::read_push(data, header.size());
    } else {
      distautograd::native::gil::Released released;
      push = distautograd::native::read_push(data, header.size());
    }
  }
  if (push && lane != nullptr) {
    // Taken first: once the push runs, reading may be handed to another thread, whose frames' descriptors
    // are its own. A push in the common case names no shared segment: what came with it is stray.
    std::vector<int> stray = reader.take_fds();
    if (lane->run(*push, buffers, peer_rank)) {
      for (int fd : stray) ::close(fd);
      return pybind11::make_tuple(header_bytes, envelope_tuple(envelope), buffers, following, true);
    }
    reader.put_back_fds(stray);  // nothing ran (reading was never lent): still this thread's
  }
  return pybind11::make_tuple(header_bytes, envelope_tuple(envelope), buffers, following, push_tuple(push));
}

// Buffers held for a write: each attachment's memory, exported for as long as the write lasts.
class Held {
 public:
  explicit Held(const pybind11::list& attachments) {
    views_.reserve(attachments.size());
    for (const pybind11::handle& attachment : attachments) {
      views_.emplace_back();
      if (PyObject_GetBuffer(attachment.ptr(), &views_.back(), PyBUF_C_CONTIGUOUS) != 0) {
        views_.pop_back();
        throw pybind11::error_already_set();
      }
      spans.push_back({static_cast<const uint8_t*>(views_.back().buf), static_cast<size_t>(views_.back().len)});
    }
  }
  ~Held() {
    for (Py_buffer& view : views_) PyBuffer_Release(&view);
  }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;

  std::vector<distautograd::native::Span> spans;

 private:
  std::vector<Py_buffer> views_;
};

// Sends Frame{id, <kind>: message} (message serialized, kind 2 request or 3 response) with its length
// and attachments on `fd`, without the GIL; returns the header's size. `describe`: the message comes
// without its attachments' description, which the core puts in front (all of them streamed). A signal
// during a wait runs Python's handlers (Ctrl-C stops the send as it would stop socket.sendmsg).
size_t write_frame(int fd, uint64_t frame_id, uint32_t kind, const pybind11::bytes& message,
                   const pybind11::list& attachments, const std::vector<int>& fds, std::optional<double> stall,
                   bool describe) {
  if (kind != 2 && kind != 3) throw pybind11::value_error("a frame carries a request (2) or a response (3)");
  Held held(attachments);
  std::string body = describe ? distautograd::native::attachments_field(held.spans) : std::string();
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(message.ptr(), &data, &size) != 0) throw pybind11::error_already_set();
  body.append(data, static_cast<size_t>(size));
  std::string header = distautograd::native::frame_header(frame_id, kind, body);
  int stall_ms = stall ? static_cast<int>(std::ceil(*stall * 1000)) : -1;
  distautograd::native::gil::Released released;
  distautograd::native::write_frame(fd, header, held.spans, fds, stall_ms, [] {
    distautograd::native::gil::Taken gil;
    if (PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
  });
  return header.size();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "distautograd's compiled core";
  pybind11::register_exception<distautograd::native::wire::Malformed>(m, "MalformedFrame", PyExc_ValueError);
  pybind11::register_exception<distautograd::native::HeaderTooLarge>(m, "FrameTooLarge", PyExc_ValueError);
  pybind11::register_exception_translator([](std::exception_ptr raised) {
    try {
      if (raised) std::rethrow_exception(raised);
    } catch (const distautograd::native::SocketError& e) {  // OSError(errno, text): Python picks the subclass
      pybind11::object error = pybind11::reinterpret_borrow<pybind11::object>(PyExc_OSError)(e.error, e.what());
      PyErr_SetObject(PyExc_OSError, error.ptr());
    } catch (const distautograd::native::EndOfStream& e) {
      PyErr_SetString(PyExc_EOFError, e.what());
    }
  });
  m.def("read_envelope", [](const pybind11::bytes& header) {
    std::string data = header;
    return envelope_tuple(distautograd::native::read_envelope(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
  }, pybind11::arg("header"), "(kind, streamed sizes, shared keys) of a serialized Frame; raises MalformedFrame.");
  m.def("read_push", [](const pybind11::bytes& header) {
    std::string data = header;
    return push_tuple(distautograd::native::read_push(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
  }, pybind11::arg("header"),
     "(context id, pass id, root, message ids, [(rank, leaves)], plan or None, gradients) of the push a serialized "
     "Frame carries in the common case; None otherwise.");
  pybind11::class_<FrameReader>(m, "FrameReader", "Frames read from a connected socket, without the GIL.")
      .def(pybind11::init<int, bool>(), pybind11::arg("fd"), pybind11::arg("unix_socket"))
      .def("read_frame", &read_frame, pybind11::arg("header_limit"), pybind11::arg("following_limit"),
           pybind11::arg("allocate"), pybind11::arg("allocate_from") = 0, pybind11::arg("lane") = nullptr,
           pybind11::arg("peer_rank") = -1,
           "(header, (kind, sizes, shared keys), attachments or None, their total, the push it carries or None, "
           "or True where `lane` ran it)")
      .def("skip", [](FrameReader& reader, uint64_t size) {
        distautograd::native::gil::Released released;
        reader.skip(size);
      }, pybind11::arg("size"), "Reads past `size` bytes.")
      .def("take_fds", &FrameReader::take_fds, "The descriptors that arrived since the last call, now the caller's.");
  pybind11::class_<distautograd::native::TensorBytes>(m, "TensorBytes", pybind11::buffer_protocol(),
                                                     "A tensor's bytes, for a socket to send: the tensor stays alive.")
      .def_buffer([](distautograd::native::TensorBytes& bytes) {
        const at::Tensor& tensor = bytes.tensor;
        return pybind11::buffer_info(tensor.data_ptr(), 1, pybind11::format_descriptor<uint8_t>::format(), 1,
                                     {static_cast<pybind11::ssize_t>(tensor.nbytes())}, {1}, /*readonly=*/true);
      });
  m.def("write_frame", &write_frame, pybind11::arg("fd"), pybind11::arg("frame_id"), pybind11::arg("kind"),
        pybind11::arg("message"), pybind11::arg("attachments"), pybind11::arg("fds"), pybind11::arg("stall"),
        pybind11::arg("describe") = false,
        "Sends a frame (length, Frame header, attachments, descriptors) without the GIL; returns the header's size.");
  m.def("encode_tensor_list", &distautograd::native::encode_tensor_list, pybind11::arg("items"),
        pybind11::arg("compact_zeros"),
        "(serialized Value, attachments) of a list of plain tensors and Nones; None when it is not one.");
  m.def("decode_tensor_list", &distautograd::native::decode_tensor_list, pybind11::arg("value"),
        pybind11::arg("attachments"), pybind11::arg("unsent_limit"),
        "The list of tensors and Nones a serialized Value describes; None when it is not the common case.");
  m.def("encode_value_tensors", &distautograd::native::encode_value_tensors, pybind11::arg("items"),
        pybind11::arg("compact_zeros"),
        "(serialized Value of the tensors' descriptions, attachments) for any value's tensors; None when one is not plain.");
  m.def("decode_value_tensors", &distautograd::native::decode_value_tensors, pybind11::arg("value"),
        pybind11::arg("attachments"), pybind11::arg("unsent_limit"),
        "The tensors of any serialized Value, in order, without their autograd bits; None when one is not plain.");
  m.def("encode_push_request", &distautograd::native::encode_push_request, pybind11::arg("context_id"),
        pybind11::arg("pass_id"), pybind11::arg("plan"), pybind11::arg("message_ids"), pybind11::arg("gradients"),
        pybind11::arg("root"), pybind11::arg("done"), pybind11::arg("compact_zeros"),
        "(serialized Request{push_gradients}, attachments) of a push; None when its gradients are not the common case.");
  m.def("plan_pass_graph", &distautograd::native::plan_pass_graph, pybind11::arg("sources"),
        pybind11::arg("leaf_type"), pybind11::arg("recv_types"),
        "(children, order, index, parents, bit, mask, reach, leaves) of a pass's graph over torch's Nodes, as "
        "engine/graph.py plans it; None when a node is not torch's.");
  distautograd::native::add_recv_node_type(m);
  distautograd::native::add_local_pass_type(m);
  distautograd::native::add_push_lane_type(m);
  m.def("make_recv_node", &distautograd::native::make_recv_node, pybind11::arg("tensors"), pybind11::arg("message_ids"),
        pybind11::arg("points"),
        "(the tensors as outputs of one new RecvNode, its anchor's AccumulateGrad); output i is points[i].");
  // wrapped as torch wraps its own: the C++ warnings of a backward (TORCH_WARN) become Python warnings
  m.def("run_wave", torch::wrap_pybind_function(&distautograd::native::run_wave), pybind11::arg("roots"),
        pybind11::arg("grads"), pybind11::arg("leaves"), pybind11::arg("anchors"), pybind11::arg("store"),
        pybind11::arg("lock"), pybind11::arg("retain_graph"),
        "Runs one wave through torch's engine, the leaves accumulating into store under lock; "
        "{message id: gradient or None} of the recv nodes it ran.");
  m.def("set_local_backward_error", &distautograd::native::set_local_backward_error, pybind11::arg("message"),
        "What a RecvNode raises when a backward runs it with no recording open.");
  pybind11::class_<distautograd::native::Recording>(m, "Recording",
                                                   "Gradients RecvNodes get on this thread while it is open.")
      .def(pybind11::init<>())
      .def("open", &distautograd::native::Recording::open, "Opens it on this thread (inside any open before).")
      .def("close", &distautograd::native::Recording::close, "Closes it; {message id: gradient or None}.");
  pybind11::class_<distautograd::native::WeakNode>(m, "WeakNode",
                                                  "A weak reference to an autograd node, which weakref cannot make.")
      .def(pybind11::init<const pybind11::handle&>(), pybind11::arg("grad_fn"))
      .def("__call__", &distautograd::native::WeakNode::operator(), "The node, or None once it is gone.");
  m.def("close_gil_at_exit", &distautograd::native::gil::close_at_exit,
        "For atexit (native/__init__.py registers it): from now on only this thread takes the GIL back in the core; "
        "threads already waiting for it get it first (gil.h).");
  m.def("gil_waiting", &distautograd::native::gil::waiting_now,
        "How many threads wait for the GIL in the core now (for tests: gil.h).");
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

  // Never deleted: its thread, once started, refers to it for the rest of the process.
  using distautograd::native::LentWatch;
  pybind11::class_<LentWatch, std::unique_ptr<LentWatch, pybind11::nodelete>>(
      m, "LentWatch", "Gives away the reading of connections whose call runs too long, taking the GIL only then.")
      .def(pybind11::init<double, double, pybind11::object>(), pybind11::arg("limit"), pybind11::arg("idle"),
           pybind11::arg("late"))
      .def("add", &LentWatch::add, pybind11::arg("role"), "role was lent just now: watched until forgotten.")
      .def("forget", &LentWatch::forget, pybind11::arg("role"), "role is no longer lent (nothing if unknown).")
      .def("lent", &LentWatch::lent, "How many roles are lent now.");
}
