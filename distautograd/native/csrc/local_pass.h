// One worker's part of a pass, its bookkeeping in C++ (engine/local_pass.py's LocalPass, step for step,
// which stays the reference and the path for a capture, a graph made or a Python recv node): which
// nodes are complete, what reached them and in what order it is summed, and each whole wave run by
// one call of torch's engine (wave_run.h) without going back to Python between arrival and send.
// Its state is touched only with the GIL held (every method is called from Python), so the GIL is its
// lock: the engine runs without it, and an arrival on another thread meanwhile adds what it brought
// and leaves the running to the thread already at it, as LocalPass's lock and flag do.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pass_graph.h"
#include "recv_node.h"
#include "torch_nodes.h"

namespace distautograd::native {

class __attribute__((visibility("hidden"))) LocalPass {  // hidden: it holds Python objects
 public:
  // `plan`: the part's graph as pass_graph.h plans it from `sources` ({key: [GradientEdge, ...]}, as
  // PassGraph takes them); `keys`: {send point: where its gradient sorts}; `store` and `lock`: the
  // context's gradients and slots.LOCK; `send(grads, last)`, `finish(error)`, `observe(began µs, ended
  // µs, nodes, whole)` (or None) and `unknown` (the error for a source not in the part) as LocalPass
  // takes them; `run_node(node, [(slot, grad), ...])`: runs one node alone (execution.run_node), giving
  // (produced or None, {message id: gradient}). The caller sees that every recv node is the core's (a
  // Python one would run as any other node here, and fail the wave): `plan` below does.
  LocalPass(const PlannedGraph& plan, const pybind11::dict& sources, const pybind11::dict& keys,
            pybind11::dict store, pybind11::object lock, pybind11::object send, pybind11::object finish,
            pybind11::object run_node, pybind11::object observe, pybind11::object unknown, bool retain_graph);

  // The part planned and made in one call (local_pass.start): the arguments above without `plan`, then
  // what the walk stops at (`leaf_type`, `recv_types`); None where the core cannot run the part -- a
  // node torch did not make, or one of type `python_recv` (engine/local_pass.py's LocalPass runs it).
  static pybind11::object plan(const pybind11::dict& sources, const pybind11::dict& keys, pybind11::dict store,
                               pybind11::object lock, pybind11::object send, pybind11::object finish,
                               pybind11::object run_node, pybind11::object observe, pybind11::object unknown,
                               bool retain_graph, const pybind11::handle& leaf_type,
                               const pybind11::tuple& recv_types, const pybind11::handle& python_recv);

  // Source `key` delivers, one gradient (or None) per edge of the source; runs what became complete.
  // A key that is no source of the part (or no id at all) raises `unknown`.
  void arrive(const pybind11::handle& key, const std::vector<std::optional<at::Tensor>>& grads);
  // Nothing more runs or is sent (the pass was aborted); what reached the nodes goes.
  void close();
  void start_if_empty();

  // For the garbage collector (its callbacks close over the Part that holds it): every Python object
  // it holds, and letting them go.
  int traverse(visitproc visit, void* arg) const;
  void clear();

  bool done() const { return executed_ == nodes_.size(); }
  size_t arrived() const { return arrived_; }
  // The part's nodes in the plan's order (PassGraph's `order`).
  pybind11::list order() const;
  int64_t leaves_reached = 0;
  int64_t waves = 0;

 private:
  struct Child {
    size_t node;
    uint32_t slot;  // the child's input the gradient goes to
    size_t index;   // among the parent's next edges: where the parent's output is
  };
  struct Parent {
    size_t node;
    uint32_t slot;
  };
  struct Entry {
    double key;
    at::Tensor grad;
  };
  struct Vertex {
    NodePtr node;
    pybind11::object object;
    int64_t remaining = 0;  // sources still to deliver
    bool leaf = false;
    bool recv = false;
    std::vector<Child> children;
    std::vector<Parent> parents;
    std::map<uint32_t, std::vector<Entry>> stash;  // slot -> what reached it before the node runs
  };
  struct Source {
    double key;
    std::vector<std::pair<std::optional<size_t>, uint32_t>> edges;  // (node, slot), none where no node
    std::vector<size_t> reach;
    bool arrived = false;
  };

  void drain();
  bool runs_whole(const std::vector<size_t>& wave) const;
  std::vector<std::pair<size_t, std::vector<Entry>>> take(size_t node);  // (slot, entries in summing order)
  void run_whole(const std::vector<size_t>& wave, bool last);
  void run_node_by_node(const std::vector<size_t>& wave);
  pybind11::dict recv_gradients(const std::vector<size_t>& recvs,
                                const std::vector<std::pair<MessageId, at::Tensor>>& got) const;

  pybind11::object store_, lock_, send_, finish_, run_node_, observe_, unknown_;
  bool retain_graph_;
  std::vector<Vertex> nodes_;  // in the plan's order
  std::unordered_map<MessageId, Source> sources_;
  std::vector<bool> ready_;
  size_t ready_count_ = 0;
  size_t executed_ = 0;
  size_t arrived_ = 0;  // sources that delivered
  bool draining_ = false;
  bool closed_ = false;
};

// `local.arrive(key, grads)` as Python calls it, wrapped as torch wraps its own: the C++ warnings of a
// backward (TORCH_WARN) become Python warnings, its errors Python errors (pybind11::error_already_set).
void arrive_as_python(LocalPass& local, const pybind11::handle& key,
                      const std::vector<std::optional<at::Tensor>>& grads);

void add_local_pass_type(pybind11::module_& module);

}  // namespace distautograd::native
