// The GIL let go around blocking C++ work and taken back after it, safely while the interpreter shuts
// down: then Python ends any thread that asks for the GIL (pthread_exit), and ending a thread inside a
// C++ destructor (noexcept) aborts the whole process ("terminate called without an active
// exception"). So a thread that would take the GIL back during shutdown waits for the process to end
// instead, as Python would have ended it; and what only gives Python objects back is skipped.
#pragma once

#include <torch/extension.h>

#include <optional>

namespace distautograd::native::gil {

bool finalizing();

// Waits for the process to end.
[[noreturn]] void park();

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

// Runs `fn` holding the GIL, or not at all during shutdown: for deleters and callbacks that only
// release Python objects (left to the process's end then).
template <typename Fn>
void unless_finalizing(Fn&& fn) {
  if (finalizing()) return;
  pybind11::gil_scoped_acquire gil;
  fn();
}

}  // namespace distautograd::native::gil
