// The watchdog of lent reading (transport/reading.py) without the GIL. A reading thread that runs a
// call it read is "lent"; one whose call runs longer than a limit must give its connection's reading
// away. Python's watchdog (the fallback) takes the GIL at every look while calls keep coming (every
// 2 ms, in between a busy worker's calls); this one keeps the lent roles and their start times under
// its own mutex, looks on a thread of its own, and takes the GIL only to hand a late role to `late`.
#pragma once

#include <torch/extension.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace distautograd::native {

class LentWatch {
 public:
  using Clock = std::chrono::steady_clock;

  // `limit`: the seconds a role may stay lent before `late(role)` is called (to give it away, and say
  // so if that fails); `idle`: the seconds with nothing lent after which the thread stops looking until
  // the next add.
  LentWatch(double limit, double idle, pybind11::object late);
  LentWatch(const LentWatch&) = delete;
  LentWatch& operator=(const LentWatch&) = delete;

  // With the GIL: `role` was lent just now; the watch holds a reference to it until it is forgotten
  // or given away.
  void add(const pybind11::object& role);
  // With the GIL: `role` is no longer lent (taken back, or given away); nothing if it was not known.
  void forget(const pybind11::handle& role);
  // How many roles are lent now.
  size_t lent();

 private:
  void run();

  const Clock::duration limit_;
  const Clock::duration idle_;
  pybind11::object late_;  // never released: the watch lives as long as the process
  std::mutex mutex_;
  std::condition_variable wake_;
  std::unordered_map<PyObject*, Clock::time_point> lent_;  // each key holds one reference
  Clock::time_point last_added_;
  bool polling_ = false;  // the thread polls; otherwise it waits for an add
  bool started_ = false;
};

}  // namespace distautograd::native
