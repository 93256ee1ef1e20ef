// The recv points of one message's tensors as a C++ autograd Node (torch's RecvRpcBackward, which
// engine/nodes.py also makes as a Python autograd.Function on the Python path): torch's engine runs
// it without the GIL, and it hands each output's gradient to the recording open on its thread.
#pragma once

#include <torch/extension.h>

#include <torch/csrc/autograd/function.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace distautograd::native {

// A message's id as the protocol carries it (uint64: the sender's rank in its top 16 bits).
using MessageId = uint64_t;

// The gradients recv nodes got on this thread while it was open: (message id, gradient, undefined
// where none reached it). Opened and closed on one thread; recordings nest.
class Recording {
 public:
  Recording() = default;
  ~Recording();
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;

  void open();
  // Closes it (the one open before is again) and gives {message id: gradient or None}.
  pybind11::dict close();
  // Closes it and gives what it got, (message id, gradient or undefined) in the order the nodes ran.
  std::vector<std::pair<MessageId, at::Tensor>> take();

  std::vector<std::pair<MessageId, at::Tensor>> got;

 private:
  Recording* previous_ = nullptr;
  bool open_ = false;
};

// What a recording took, as {message id: gradient or None} (a later gradient for an id replaces one before).
pybind11::dict as_dict(std::vector<std::pair<MessageId, at::Tensor>> got);

class RecvNode : public torch::autograd::Node {
 public:
  // `points`: a Python list, one recv point per output, which `node.points` gives back.
  RecvNode(std::vector<MessageId> message_ids, PyObject* points);
  ~RecvNode() override;

  // Lets the points go as soon as the last strong reference does: a WeakNode (which the points
  // themselves hold) keeps the node's memory, and would keep its points, until it goes.
  void release_resources() override;

  std::string name() const override;
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override;

  const std::vector<MessageId>& message_ids() const { return message_ids_; }

  // The points (a Python list). Only a live node's Python object asks, and it holds a strong
  // reference, so they are never released yet.
  PyObject* points() const { return points_; }

 private:
  std::vector<MessageId> message_ids_;
  PyObject* points_;  // owned until release_resources, which drops it holding the GIL
};

// What a backward run with no recording open raises (engine/nodes.py's LOCAL_BACKWARD_ERROR).
void set_local_backward_error(std::string message);

// `tensors` as the outputs of one new RecvNode, output i being `message_ids[i]` / `points[i]`, its one
// next edge a new anchor's (an empty leaf): returns (outputs, the anchor's AccumulateGrad).
pybind11::tuple make_recv_node(const std::vector<at::Tensor>& tensors, const std::vector<MessageId>& message_ids,
                               const pybind11::list& points);

// Registers the Python type of RecvNode's objects as `module.RecvNode`.
void add_recv_node_type(pybind11::module_& module);

// A weak reference to a node that weakref cannot make (torch's C++ nodes' Python objects refuse it):
// calling it gives the node's Python object, or None once the graph let the node go.
class WeakNode {
 public:
  explicit WeakNode(const pybind11::handle& grad_fn);
  pybind11::object operator()() const;

 private:
  c10::weak_intrusive_ptr<torch::autograd::Node> node_;
};

}  // namespace distautograd::native
