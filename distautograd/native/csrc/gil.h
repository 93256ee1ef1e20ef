// The GIL let go around blocking C++ work and taken back after it, safely while the interpreter shuts
// down: then Python ends any thread that asks for the GIL (pthread_exit), and ending a thread inside a
// C++ destructor (noexcept) aborts the whole process ("terminate called without an active
// exception"). So a thread that would take the GIL back during shutdown waits for the process to end
// instead, as Python would have ended it; and what only gives Python objects back is skipped.
// Looking before taking is not enough: a thread that looked just before shutdown began and waits for
// the GIL is ended when it gets it. So the core's exit handler (`close_at_exit`, which Python's atexit
// runs just before shutdown begins) stops new takers and lets those already waiting get the GIL first.
#pragma once

#include <torch/extension.h>

#include <optional>

namespace distautograd::native::gil {

bool finalizing();

// Waits for the process to end.
[[noreturn]] void park();

// From now on only the calling thread (the one that runs Python's exit handlers, and then its shutdown)
// takes the GIL through this file; threads already waiting for it get it before this returns (it lets
// the GIL go meanwhile, for up to a second). Called holding the GIL, from atexit.
void close_at_exit();

// pybind11::gil_scoped_release, except that it parks rather than take the GIL back during shutdown.
class Released {
 public:
  Released();
  ~Released();
  Released(const Released&) = delete;
  Released& operator=(const Released&) = delete;

 private:
  PyThreadState* state_;
};

// pybind11::gil_scoped_acquire for a thread that let the GIL go (inside Released), except that it
// parks rather than take it during shutdown.
class Taken {
 public:
  Taken();
  Taken(const Taken&) = delete;
  Taken& operator=(const Taken&) = delete;

 private:
  std::optional<pybind11::gil_scoped_acquire> gil_;
};

// Whether this thread may wait for the GIL now; if so it is counted as waiting until `taken()`.
bool may_take();
void taken();
// How many threads wait for the GIL through this file now (for tests).
int waiting_now();

// Runs `fn` holding the GIL, or not at all during shutdown: for deleters and callbacks that only
// release Python objects (left to the process's end then).
template <typename Fn>
void unless_finalizing(Fn&& fn) {
  if (!may_take()) return;
  pybind11::gil_scoped_acquire gil;
  taken();
  fn();
}

}  // namespace distautograd::native::gil
