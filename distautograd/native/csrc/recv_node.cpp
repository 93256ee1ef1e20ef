// See recv_node.h. The Python type mirrors torch's own C++ nodes' (python_cpp_function.h), plus
// `points`, and its own `_set_sequence_nr` (torch does not export the one its types use, nor declare
// its default properties' getters inside its namespace, so they are listed here).
#include "recv_node.h"

#include <torch/csrc/autograd/python_cpp_function.h>
#include <torch/csrc/autograd/variable.h>

#include "gil.h"
#include "torch_nodes.h"

namespace distautograd::native {
namespace {

namespace py = pybind11;
using torch::autograd::THPCppFunction;

constexpr const char* kRecvNodeName = "torch::distributed::autograd::RecvRpcBackward";  // torch's name

thread_local Recording* open_recording = nullptr;
std::string local_backward_error = "a recv node's backward ran outside a distributed backward pass";

PyTypeObject recv_node_type;

RecvNode* recv_node_of(PyObject* self) {
  return static_cast<RecvNode*>(reinterpret_cast<THPCppFunction*>(self)->cdata.get());
}

PyObject* points_of(PyObject* self, void* /*unused*/) {
  PyObject* points = recv_node_of(self)->points();
  Py_INCREF(points);
  return points;
}

PyObject* set_sequence_nr(PyObject* self, PyObject* number) {
  uint64_t value = PyLong_AsUnsignedLongLong(number);
  if (PyErr_Occurred()) return nullptr;
  reinterpret_cast<THPCppFunction*>(self)->cdata->set_sequence_nr(value);
  Py_RETURN_NONE;
}

PyGetSetDef recv_node_properties[] = {
    {"next_functions", torch::autograd::THPCppFunction_next_functions, nullptr, nullptr, nullptr},
    {"requires_grad", torch::autograd::THPCppFunction_requires_grad, nullptr, nullptr, nullptr},
    {"metadata", torch::autograd::THPCppFunction_metadata, nullptr, nullptr, nullptr},
    {"_input_metadata", torch::autograd::THPCppFunction_input_metadata, nullptr, nullptr, nullptr},
    {"points", points_of, nullptr, "The recv points of the outputs, in order.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMethodDef recv_node_methods[] = {
    {"_register_hook_dict", torch::autograd::THPCppFunction_register_hook_dict, METH_O, nullptr},
    {"register_hook", torch::autograd::THPCppFunction_register_hook, METH_O, nullptr},
    {"register_prehook", torch::autograd::THPCppFunction_register_prehook, METH_O, nullptr},
    {"name", torch::autograd::THPCppFunction_name, METH_NOARGS, nullptr},
    {"_sequence_nr", torch::autograd::THPCppFunction_sequence_nr, METH_NOARGS, nullptr},
    {"_set_sequence_nr", set_sequence_nr, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

Recording::~Recording() {
  if (open_ && open_recording == this) open_recording = previous_;
}

void Recording::open() {
  if (open_) throw py::value_error("this recording is open already");
  previous_ = open_recording;
  open_recording = this;
  open_ = true;
}

std::vector<std::pair<MessageId, at::Tensor>> Recording::take() {
  if (open_recording == this) open_recording = previous_;
  open_ = false;
  return std::move(got);
}

py::dict Recording::close() { return as_dict(take()); }

py::dict as_dict(std::vector<std::pair<MessageId, at::Tensor>> got) {
  py::dict gradients;
  for (auto& [message_id, grad] : got) {
    gradients[py::int_(message_id)] = grad.defined() ? py::cast(std::move(grad)) : py::none();
  }
  return gradients;
}

RecvNode::RecvNode(std::vector<MessageId> message_ids, PyObject* points)
    : message_ids_(std::move(message_ids)), points_(points) {
  Py_INCREF(points_);
}

RecvNode::~RecvNode() { RecvNode::release_resources(); }

void RecvNode::release_resources() {
  PyObject* points = points_;
  points_ = nullptr;
  if (points != nullptr) gil::unless_finalizing([points] { Py_DECREF(points); });
  torch::autograd::Node::release_resources();
}

std::string RecvNode::name() const { return kRecvNodeName; }

torch::autograd::variable_list RecvNode::apply(torch::autograd::variable_list&& grads) {
  Recording* recording = open_recording;
  TORCH_CHECK(recording != nullptr, local_backward_error);
  for (size_t i = 0; i < grads.size() && i < message_ids_.size(); ++i) {
    recording->got.emplace_back(message_ids_[i], std::move(grads[i]));
  }
  return torch::autograd::variable_list(num_outputs());  // nothing flows on to the anchor
}

void set_local_backward_error(std::string message) { local_backward_error = std::move(message); }

py::tuple make_recv_node(const std::vector<at::Tensor>& tensors, const std::vector<MessageId>& message_ids,
                         const py::list& points) {
  if (tensors.size() != message_ids.size() || tensors.size() != points.size()) {
    throw py::value_error("make_recv_node takes one message id and one point per tensor");
  }
  at::Tensor anchor = torch::empty({0}, torch::TensorOptions().requires_grad(true));
  auto node = c10::make_intrusive<RecvNode>(message_ids, points.ptr());
  node->add_next_edge(torch::autograd::impl::gradient_edge(anchor));
  py::tuple outputs(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    at::Tensor output = tensors[i].detach();  // a view of the arrived bytes, but not one autograd tracks
    uint32_t input_nr = node->add_input_metadata(output);
    torch::autograd::impl::set_gradient_edge(output, torch::autograd::Edge(node, input_nr));
    outputs[i] = py::cast(output);
  }
  return py::make_tuple(outputs, object_of(node->next_edge(0).function));
}

void add_recv_node_type(py::module_& module) {
  torch::autograd::_initFunctionPyTypeObject(recv_node_type, kRecvNodeName, recv_node_properties,
                                             recv_node_methods);
  torch::autograd::registerCppFunction(typeid(RecvNode), &recv_node_type);
  module.attr("RecvNode") = py::handle(reinterpret_cast<PyObject*>(&recv_node_type));
}

WeakNode::WeakNode(const py::handle& grad_fn) : node_(node_or_raise(grad_fn, "WeakNode's argument")) {}

py::object WeakNode::operator()() const {
  NodePtr node = node_.lock();
  return node ? object_of(node) : py::none();
}

}  // namespace distautograd::native
