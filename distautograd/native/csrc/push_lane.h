// A push run by the call that read it. A push the core read (push_reading.h) has its gradients decoded
// here, inside the reader's call, and goes straight to the pass protocol without the Python hand-over
// between (the transport's loop, the link, the peers' join wait, the dispatcher, the codec): into its
// part, with no Python at all, where the part runs on the core (local_pass.h) and runtime/backward.py
// registered it here; to the protocol's `take` otherwise. What the core does not decode, a push under
// torch's profiler, and one `take` declines go the Python way, which stays the reference. Its state is
// touched only with the GIL held (registrations come from Python, the reader holds it to run a push),
// so the GIL is its lock.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <unordered_map>
#include <utility>

#include "push_reading.h"

namespace distautograd::native {

class __attribute__((visibility("hidden"))) PushLane {  // hidden: it holds Python objects
 public:
  // `take(src, context id, pass id, root, message ids, [(rank, leaves)], plan or None, gradients)`: runs a
  // push (decoded) whose part is not registered; False to leave it to the Python path. `lend()` and
  // `reclaim(role)`: the reading thread's role, as transport/reading.py lends it around a call; `stamps`:
  // an object with `ON`, `arrived()` and `received(key)` (transport/hops.py), asked at every push;
  // `unsent_limit`: as decode_tensor_list takes it.
  PushLane(pybind11::object take, pybind11::object lend, pybind11::object reclaim, pybind11::object stamps,
           uint64_t unsent_limit);

  // Pushes of pass (context_id, pass_id) arrive at `local` (a core LocalPass) from now on; `learn(done)`
  // hears of the parts a push says are done ([(rank, leaves)]), `failed(error)` of what the part raised.
  void add(uint64_t context_id, uint64_t pass_id, pybind11::object local, pybind11::object learn,
           pybind11::object failed);
  // Nothing more of that pass goes this way (its part ended, or closed).
  void drop(uint64_t context_id, uint64_t pass_id);
  size_t size() const { return parts_.size(); }

  // Runs `push` from peer `src` (its attachments read as the frame's streamed buffers): into its part if
  // registered, else through `take`. False where the Python path is to run it instead (nothing was done
  // but the hop's arrival stamped).
  bool run(const PushRead& push, const pybind11::list& attachments, int64_t src);

  // For the garbage collector (the callbacks close over the Part, which reaches the lane's owner).
  int traverse(visitproc visit, void* arg) const;
  void clear();

 private:
  struct Entry {
    pybind11::object local, learn, failed;
  };
  struct KeyHash {
    size_t operator()(const std::pair<uint64_t, uint64_t>& key) const {
      return std::hash<uint64_t>()(key.first * 0x9E3779B97F4A7C15ULL ^ key.second);
    }
  };

  bool run_registered(const Entry& entry, const PushRead& push, const pybind11::list& grads);

  pybind11::object take_, lend_, reclaim_, stamps_;
  uint64_t unsent_limit_;
  std::unordered_map<std::pair<uint64_t, uint64_t>, Entry, KeyHash> parts_;
};

// A push's message ids, and the parts it says are done as [(rank, leaves)], as Python takes them.
pybind11::list message_ids_as_list(const PushRead& push);
pybind11::list done_as_list(const PushRead& push);

void add_push_lane_type(pybind11::module_& module);

}  // namespace distautograd::native
