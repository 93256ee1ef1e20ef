// See local_pass.h. Each method mirrors the LocalPass method of the same name; the comments say only
// where C++ does it another way.
#include "local_pass.h"

#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <string>

#include "collectable.h"
#include "recv_node.h"
#include "wave_run.h"

namespace distautograd::native {

namespace py = pybind11;

namespace {

constexpr MessageId kRoots = 0;  // engine/graph.py's ROOTS
constexpr double kRootKey = std::numeric_limits<double>::infinity();

double now_us() {
  using namespace std::chrono;
  return static_cast<double>(duration_cast<nanoseconds>(system_clock::now().time_since_epoch()).count()) / 1000.0;
}

// The exception in flight as the Python exception it would be raised as, for `finish`, with its
// traceback (a hook's frames): pybind's own as pybind raises them, torch's (and any other) as torch does.
py::object raised_now() {
  try {
    try {
      throw;
    } catch (py::error_already_set&) {
      throw;
    } catch (py::builtin_exception& error) {
      error.set_error();
    } catch (...) {
      torch::translate_exception_to_python(std::current_exception());
    }
    throw py::error_already_set();
  } catch (py::error_already_set& error) {
    py::object value = error.value();
    if (error.trace()) PyException_SetTraceback(value.ptr(), error.trace().ptr());
    return value;
  }
}

}  // namespace

LocalPass::LocalPass(const PlannedGraph& plan, const py::dict& sources, const py::dict& keys, py::dict store,
                     py::object lock, py::object send, py::object finish, py::object run_node, py::object observe,
                     py::object unknown, bool retain_graph)
    : store_(std::move(store)), lock_(std::move(lock)), send_(std::move(send)), finish_(std::move(finish)),
      run_node_(std::move(run_node)), observe_(std::move(observe)), unknown_(std::move(unknown)),
      retain_graph_(retain_graph) {
  // The plan's nodes in its order, with their children; a node's parents follow from them as PassGraph
  // derives its parents, and how many sources it waits for from its bits as PassGraph's reach.
  std::vector<size_t> place(plan.nodes.size());  // a planned node's place in the order
  for (size_t i = 0; i < plan.order.size(); ++i) place[plan.order[i]] = i;
  nodes_.resize(plan.order.size());
  for (size_t i = 0; i < plan.order.size(); ++i) {
    const PlannedNode& planned = plan.nodes[plan.order[i]];
    Vertex& vertex = nodes_[i];
    vertex.object = planned.object;
    vertex.node = planned.node;
    vertex.leaf = dynamic_cast<torch::autograd::AccumulateGrad*>(vertex.node.get()) != nullptr;
    vertex.recv = dynamic_cast<RecvNode*>(vertex.node.get()) != nullptr;
    if (vertex.recv && vertex.node->next_edges().empty()) throw py::value_error("a recv node without its anchor");
    for (size_t j = 0; j < planned.children.size(); ++j) {
      vertex.children.push_back({place[planned.children[j]], planned.next[j].slot, planned.next[j].index});
    }
  }
  for (size_t i = 0; i < nodes_.size(); ++i) {
    for (const Child& child : nodes_[i].children) nodes_[child.node].parents.push_back({i, child.slot});
  }
  std::vector<std::vector<size_t>> reached = plan.reach();
  std::unordered_map<MessageId, double> sorting;  // as LocalPass's keys: a source arrives only if it has one
  for (const auto& [key, value] : keys) sorting[key.cast<MessageId>()] = value.cast<double>();
  sorting[kRoots] = kRootKey;
  size_t k = 0;
  for (const auto& [key, edges] : sources) {
    const std::vector<std::optional<size_t>>& planned = plan.sources[k];
    std::vector<size_t>& reach = reached[k++];
    for (size_t node : reach) ++nodes_[node].remaining;
    auto known = sorting.find(key.cast<MessageId>());
    if (known == sorting.end()) continue;  // arriving, it is refused as unknown (LocalPass: the same)
    Source& source = sources_[known->first];
    source.key = known->second;
    size_t e = 0;
    for (const auto& edge : edges) {  // GradientEdge(node or None, output_nr)
      std::optional<size_t> node = planned[e++];
      source.edges.emplace_back(node ? std::optional<size_t>(place[*node]) : std::nullopt,
                                edge.cast<py::tuple>()[1].cast<uint32_t>());
    }
    source.reach = std::move(reach);
  }
  ready_.assign(nodes_.size(), false);
  if (!PyExceptionClass_Check(unknown_.ptr())) throw py::type_error("LocalPass's `unknown` must be an exception class");
  if (nodes_.empty()) closed_ = true;
}

py::object LocalPass::plan(const py::dict& sources, const py::dict& keys, py::dict store, py::object lock,
                           py::object send, py::object finish, py::object run_node, py::object observe,
                           py::object unknown, bool retain_graph, const py::handle& leaf_type,
                           const py::tuple& recv_types, const py::handle& python_recv) {
  std::vector<PyObject*> recvs;
  for (const auto& type : recv_types) recvs.push_back(type.ptr());
  std::vector<std::vector<py::handle>> nodes;
  for (const auto& [key, edges] : sources) {
    nodes.emplace_back();
    for (const auto& edge : edges) nodes.back().push_back(edge.cast<py::tuple>()[0]);
  }
  std::optional<PlannedGraph> planned = plan_graph(nodes, leaf_type.ptr(), recvs);
  if (!planned) return py::none();
  for (const PlannedNode& node : planned->nodes) {
    if (Py_TYPE(node.object.ptr()) == reinterpret_cast<PyTypeObject*>(python_recv.ptr())) return py::none();
  }
  return py::cast(std::make_unique<LocalPass>(*planned, sources, keys, std::move(store), std::move(lock),
                                              std::move(send), std::move(finish), std::move(run_node),
                                              std::move(observe), std::move(unknown), retain_graph));
}

py::list LocalPass::order() const {
  py::list order;
  for (const Vertex& vertex : nodes_) order.append(vertex.object);
  return order;
}

void LocalPass::close() {
  closed_ = true;
  for (Vertex& vertex : nodes_) vertex.stash.clear();  // nothing runs any more: let its gradients go now
}

int LocalPass::traverse(visitproc visit, void* arg) const {
  for (const py::object* object : {&store_, &lock_, &send_, &finish_, &run_node_, &observe_, &unknown_}) {
    Py_VISIT(object->ptr());
  }
  for (const Vertex& vertex : nodes_) Py_VISIT(vertex.object.ptr());
  return 0;
}

void LocalPass::clear() {
  for (py::object* object : {&store_, &lock_, &send_, &finish_, &run_node_, &observe_}) *object = py::none();
  for (Vertex& vertex : nodes_) vertex.object = py::none();
  closed_ = true;
}

void LocalPass::start_if_empty() {
  if (nodes_.empty()) finish_(py::none());
}

void LocalPass::arrive(const py::handle& key, const std::vector<std::optional<at::Tensor>>& grads) {
  std::optional<MessageId> id;  // none for what is no id of 64 bits: no source of this part either
  if (PyLong_Check(key.ptr())) {
    MessageId value = PyLong_AsUnsignedLongLong(key.ptr());
    if (PyErr_Occurred()) {
      PyErr_Clear();
    } else {
      id = value;
    }
  }
  auto found = id ? sources_.find(*id) : sources_.end();
  if (found == sources_.end()) {
    std::string message = "gradient arrived for send point " + py::str(key).cast<std::string>() +
                          ", which takes no part in this pass here";
    PyErr_SetObject(unknown_.ptr(), py::str(message).ptr());
    throw py::error_already_set();
  }
  Source& source = found->second;
  if (closed_ || source.arrived) return;  // a retried push: it already counted
  source.arrived = true;
  ++arrived_;
  for (size_t i = 0; i < source.edges.size() && i < grads.size(); ++i) {
    const auto& [node, slot] = source.edges[i];
    if (grads[i] && node) nodes_[*node].stash[slot].push_back({source.key, *grads[i]});
  }
  for (size_t node : source.reach) {
    if (--nodes_[node].remaining == 0) {
      ready_[node] = true;
      ++ready_count_;
    }
  }
  if (draining_) return;
  draining_ = true;
  drain();
}

void LocalPass::drain() {
  bool finished = false;
  try {
    while (true) {
      if (closed_ || ready_count_ == 0) {
        draining_ = false;
        finished = !closed_ && done();
        if (finished) closed_ = true;
        break;
      }
      std::vector<size_t> wave;  // in the plan's order, as sorted(ready, key=index)
      for (size_t node = 0; node < ready_.size(); ++node) {
        if (ready_[node]) wave.push_back(node);
      }
      std::fill(ready_.begin(), ready_.end(), false);
      ready_count_ = 0;
      bool whole = runs_whole(wave);
      bool last = executed_ + wave.size() == nodes_.size();
      double began = observe_.is_none() ? 0.0 : now_us();
      if (whole) {
        run_whole(wave, last);
      } else {
        run_node_by_node(wave);
      }
      if (!observe_.is_none()) observe_(began, now_us(), wave.size(), whole);
      executed_ += wave.size();
      ++waves;
    }
  } catch (...) {
    bool already = closed_;
    closed_ = true;
    draining_ = false;
    py::object error = raised_now();
    if (!already) finish_(error);
    return;
  }
  if (finished) finish_(py::none());
}

bool LocalPass::runs_whole(const std::vector<size_t>& wave) const {
  std::vector<bool> members(nodes_.size(), false);
  for (size_t node : wave) members[node] = true;
  for (size_t node : wave) {
    for (const Child& child : nodes_[node].children) {
      if (!members[child.node]) return false;
    }
  }
  for (size_t node : wave) {
    const Vertex& vertex = nodes_[node];
    std::map<uint32_t, double> latest_inside;  // slot -> the latest-made parent in the wave feeding it
    std::map<uint32_t, size_t> count_inside;
    for (const Parent& parent : vertex.parents) {
      if (!members[parent.node]) continue;
      double seq = static_cast<double>(nodes_[parent.node].node->sequence_nr());
      auto [at, fresh] = latest_inside.emplace(parent.slot, seq);
      if (!fresh) at->second = std::max(at->second, seq);
      ++count_inside[parent.slot];
    }
    for (const auto& [slot, latest] : latest_inside) {
      auto early = vertex.stash.find(slot);
      if (early == vertex.stash.end() || early->second.empty()) continue;
      double first = early->second.front().key;
      for (const Entry& entry : early->second) first = std::min(first, entry.key);
      if (early->second.size() + count_inside[slot] >= 3 && first < latest) return false;
    }
  }
  return true;
}

std::vector<std::pair<size_t, std::vector<LocalPass::Entry>>> LocalPass::take(size_t node) {
  std::vector<std::pair<size_t, std::vector<Entry>>> taken;
  for (auto& [slot, entries] : nodes_[node].stash) {
    // latest first, as a local backward sums them; stable, so ties keep arrival order
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.key > b.key; });
    taken.emplace_back(slot, std::move(entries));
  }
  nodes_[node].stash.clear();
  return taken;
}

py::dict LocalPass::recv_gradients(const std::vector<size_t>& recvs,
                                   const std::vector<std::pair<MessageId, at::Tensor>>& got) const {
  py::dict gradients;
  for (size_t node : recvs) {
    for (MessageId message_id : static_cast<RecvNode*>(nodes_[node].node.get())->message_ids()) {
      gradients[py::int_(message_id)] = py::none();
    }
  }
  for (const auto& [message_id, grad] : got) {  // in the order they ran: a later one replaces one before
    py::int_ key(message_id);
    if (gradients.contains(key)) gradients[key] = grad.defined() ? py::cast(grad) : py::none();
  }
  return gradients;
}

void LocalPass::run_whole(const std::vector<size_t>& wave, bool last) {
  torch::autograd::edge_list roots;
  std::vector<at::Tensor> grads;
  std::vector<NodePtr> leaves, anchors;
  std::vector<size_t> recvs;
  for (size_t node : wave) {
    for (auto& [slot, entries] : take(node)) {
      for (Entry& entry : entries) {
        roots.emplace_back(nodes_[node].node, static_cast<uint32_t>(slot));
        grads.push_back(std::move(entry.grad));
      }
    }
    if (nodes_[node].leaf) leaves.push_back(nodes_[node].node);
    if (nodes_[node].recv) {
      recvs.push_back(node);
      anchors.push_back(nodes_[node].node->next_edge(0).function);
    }
  }
  std::vector<std::pair<MessageId, at::Tensor>> got;
  if (!roots.empty() && (!leaves.empty() || !recvs.empty())) {
    got = run_wave_nodes(roots, grads, leaves, anchors, store_, lock_, retain_graph_);
  }
  if (!roots.empty()) leaves_reached += static_cast<int64_t>(leaves.size());
  py::dict gradients = recv_gradients(recvs, got);
  if (!gradients.empty()) send_(gradients, last);
}

void LocalPass::run_node_by_node(const std::vector<size_t>& wave) {
  for (size_t node : wave) {
    if (closed_) return;
    Vertex& vertex = nodes_[node];
    py::list contributions;
    for (auto& [slot, entries] : take(node)) {
      for (Entry& entry : entries) contributions.append(py::make_tuple(slot, std::move(entry.grad)));
    }
    if (contributions.empty()) {
      if (vertex.recv) send_(recv_gradients({node}, {}), false);
      continue;
    }
    py::tuple ran = run_node_(vertex.object, contributions);  // (produced or None, {message id: gradient})
    py::object produced = ran[0];
    py::dict got = ran[1];
    if (vertex.leaf) ++leaves_reached;
    if (!got.empty()) send_(got, false);
    if (produced.is_none()) continue;
    py::tuple outputs = produced.cast<py::tuple>();
    for (const Child& child : vertex.children) {
      if (child.index >= outputs.size() || outputs[child.index].is_none()) continue;
      double key = static_cast<double>(vertex.node->sequence_nr());
      nodes_[child.node].stash[child.slot].push_back({key, outputs[child.index].cast<at::Tensor>()});
    }
  }
}

void arrive_as_python(LocalPass& local, const py::handle& key, const std::vector<std::optional<at::Tensor>>& grads) {
  static const auto wrapped = torch::wrap_pybind_function(
      [](LocalPass& local, const py::handle& key, const std::vector<std::optional<at::Tensor>>& grads) {
        local.arrive(key, grads);
      });
  wrapped(local, key, grads);
}

void add_local_pass_type(py::module_& module) {
  // The callbacks it holds close over the Part that holds it: the garbage collector must see both sides.
  py::class_<LocalPass>(module, "LocalPass",
                        "One worker's part of a pass, run as engine/local_pass.py's LocalPass runs it.",
                        collectable<LocalPass>())
      .def_static("plan", &LocalPass::plan, py::arg("sources"), py::arg("keys"), py::arg("store"), py::arg("lock"),
                  py::arg("send"), py::arg("finish"), py::arg("run_node"), py::arg("observe"), py::arg("unknown"),
                  py::arg("retain_graph"), py::arg("leaf_type"), py::arg("recv_types"), py::arg("python_recv"),
                  "The part planned from its sources and made, or None where the core cannot run it.")
      .def("arrive", &arrive_as_python, py::arg("key"), py::arg("grads"))
      .def("close", &LocalPass::close)
      .def("start_if_empty", &LocalPass::start_if_empty)
      .def_property_readonly("done", &LocalPass::done)
      .def_property_readonly("arrived", &LocalPass::arrived)
      .def_property_readonly("order", &LocalPass::order)
      .def_readonly("leaves_reached", &LocalPass::leaves_reached)
      .def_readonly("waves", &LocalPass::waves);
}

}  // namespace distautograd::native
