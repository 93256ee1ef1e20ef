// See wave_run.h. The engine call is torch's own Python entry's (python_engine.cpp's run_backward with
// accumulate_grad and the wave's ends as inputs): roots and gradients checked by the engine against the
// nodes, so a wrong gradient from a peer fails with torch's message.
#include "wave_run.h"

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/engine.h>

#include <exception>
#include <optional>
#include <utility>

#include "gil.h"
#include "leaf_slots.h"
#include "recv_node.h"
#include "torch_nodes.h"

namespace distautograd::native {

namespace py = pybind11;
using torch::autograd::edge_list;

namespace {

std::vector<NodePtr> nodes_of(const py::list& objects, const char* what) {
  std::vector<NodePtr> nodes;
  nodes.reserve(objects.size());
  for (const auto& object : objects) nodes.push_back(node_or_raise(object, what));
  return nodes;
}

// Holds a Python lock (acquire/release) for the scope; the GIL is held when it is made and let go.
class Held {
 public:
  explicit Held(const py::object& lock) : lock_(lock) { lock_.attr("acquire")(); }
  ~Held() {
    try {
      lock_.attr("release")();
    } catch (py::error_already_set& error) {
      error.discard_as_unraisable("releasing slots.LOCK after a wave");
    }
  }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;

 private:
  py::object lock_;
};

// The wave's engine call with the leaves' slots swapped in and the recv nodes recorded.
std::vector<std::pair<MessageId, at::Tensor>> run_engine(const edge_list& roots, const std::vector<at::Tensor>& grads,
                                                         const std::vector<NodePtr>& leaves,
                                                         const std::vector<NodePtr>& anchors, const py::dict& store,
                                                         const py::object& lock, bool retain_graph) {
  edge_list ends;
  ends.reserve(leaves.size() + anchors.size());
  for (const NodePtr& leaf : leaves) ends.emplace_back(leaf, 0);
  for (const NodePtr& anchor : anchors) ends.emplace_back(anchor, 0);

  std::optional<Held> held;  // as slots.swapped: only a wave with leaves waits for (and holds) the lock
  if (!leaves.empty()) held.emplace(lock);
  SwappedSlots slots(leaves, store);
  Recording recording;
  recording.open();
  std::exception_ptr failed;
  {
    gil::Released released;
    try {
      torch::autograd::Engine::get_default_engine().execute(roots, grads, retain_graph,
                                                            /*create_graph=*/false, /*accumulate_grad=*/true, ends);
    } catch (...) {
      failed = std::current_exception();
    }
  }
  std::optional<py::error_already_set> raised;
  if (failed) {
    // A Python hook's own exception (its indicator may still be set here), or torch's as torch raises it;
    // taken out of the indicator now, since putting the slots back calls into Python.
    torch::translate_exception_to_python(failed);
    raised.emplace();
  }
  std::vector<std::pair<MessageId, at::Tensor>> got = recording.take();
  slots.restore();
  if (raised) throw *raised;
  return got;
}

}  // namespace

std::vector<std::pair<MessageId, at::Tensor>> run_wave_nodes(const edge_list& roots, const std::vector<at::Tensor>& grads,
                                                             const std::vector<NodePtr>& leaves,
                                                             const std::vector<NodePtr>& anchors, const py::dict& store,
                                                             const py::object& lock, bool retain_graph) {
  torch::PyWarningHandler warnings;  // as torch's HANDLE_TH_ERRORS: flushed (or raised, under -W error) at the end
  try {
    return run_engine(roots, grads, leaves, anchors, store, lock, retain_graph);
  } catch (...) {
    warnings.set_in_exception();
    throw;
  }
}

py::dict run_wave(const py::list& roots, const std::vector<at::Tensor>& grads, const py::list& leaves,
                  const py::list& anchors, const py::dict& store, const py::object& lock, bool retain_graph) {
  if (roots.size() != grads.size()) throw py::value_error("run_wave takes one gradient per root");
  edge_list root_edges;
  root_edges.reserve(roots.size());
  for (const auto& root : roots) {
    py::tuple edge = root.cast<py::tuple>();  // a GradientEdge: (node, output_nr)
    root_edges.emplace_back(node_or_raise(edge[0], "a root's node"), edge[1].cast<uint32_t>());
  }
  return as_dict(run_wave_nodes(root_edges, grads, nodes_of(leaves, "a leaf"), nodes_of(anchors, "an anchor"), store,
                                lock, retain_graph));
}

}  // namespace distautograd::native
