// See gil.h. Python 3.11 and 3.12 call it _Py_IsFinalizing; 3.13 made it public as Py_IsFinalizing.
// The count of threads waiting and the closed flag are sequentially consistent atomics: a taker counts
// itself before it reads the flag, and close_at_exit sets the flag before it reads the count, so at
// least one of the two sees the other. A child made by fork has only the thread that forked, which held
// the GIL: none of its threads waits for it, whatever the parent's count said when it forked.
#include "gil.h"

#include <pthread.h>
#include <pythread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace distautograd::native::gil {

namespace {

std::atomic<bool> closed{false};
std::atomic<int> waiting{0};
std::atomic<unsigned long> exiting_thread{0};

constexpr auto kWaitersLimit = std::chrono::seconds(1);

const int forked_children_count_none = pthread_atfork(nullptr, nullptr, [] { waiting.store(0); });

}  // namespace

bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

void park() {
  for (;;) ::pause();
}

bool may_take() {
  waiting.fetch_add(1);
  if ((closed.load() || finalizing()) && PyThread_get_thread_ident() != exiting_thread.load()) {
    waiting.fetch_sub(1);
    return false;
  }
  return true;
}

void taken() { waiting.fetch_sub(1); }

int waiting_now() { return waiting.load(); }

void close_at_exit() {
  exiting_thread.store(PyThread_get_thread_ident());
  closed.store(true);
  if (waiting.load() == 0) return;
  Py_BEGIN_ALLOW_THREADS
  auto until = std::chrono::steady_clock::now() + kWaitersLimit;
  while (waiting.load() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  Py_END_ALLOW_THREADS
}

Taken::Taken() {
  if (!may_take()) park();
  gil_.emplace();
  taken();
}

Released::Released() : state_(PyEval_SaveThread()) {}

Released::~Released() {
  if (!may_take()) park();
  PyEval_RestoreThread(state_);
  taken();
}

}  // namespace distautograd::native::gil
