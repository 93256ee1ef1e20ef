// See lent_watch.h. The watchdog's thread is started by the first add and never ends (as Python's
// daemon thread did not); the one watch of a process is never destroyed.
#include "lent_watch.h"

#include <stdexcept>
#include <vector>

#include "gil.h"

namespace distautograd::native {

namespace {

LentWatch::Clock::duration seconds(double s) {
  return std::chrono::duration_cast<LentWatch::Clock::duration>(std::chrono::duration<double>(s));
}

}  // namespace

LentWatch::LentWatch(double limit, double idle, pybind11::object late)
    : limit_(seconds(limit)), idle_(seconds(idle)), late_(std::move(late)) {
  if (!(limit > 0) || !(idle > 0)) throw std::invalid_argument("LentWatch: limit and idle must be positive seconds");
  if (!PyCallable_Check(late_.ptr())) throw std::invalid_argument("LentWatch: late must be callable");
}

void LentWatch::add(const pybind11::object& role) {
  Clock::time_point now = Clock::now();
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto [entry, inserted] = lent_.try_emplace(role.ptr(), now);
    if (inserted) {
      role.inc_ref();
    } else {
      entry->second = now;
    }
    last_added_ = now;
    if (!started_) {
      std::thread([this] { run(); }).detach();  // first: if it cannot start, the next add tries again
      started_ = polling_ = true;  // the thread waits for the mutex, held here, before it reads them
    } else if (!polling_) {
      polling_ = wake = true;
    }
  }
  if (wake) wake_.notify_one();
}

void LentWatch::forget(const pybind11::handle& role) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (lent_.erase(role.ptr()) == 0) return;
  }
  role.dec_ref();  // outside the mutex: a role's end may run Python that comes back here
}

size_t LentWatch::lent() {
  std::lock_guard<std::mutex> lock(mutex_);
  return lent_.size();
}

void LentWatch::run() {
  std::vector<PyObject*> late;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return polling_; });
    lock.unlock();
    std::this_thread::sleep_for(limit_);
    lock.lock();
    Clock::time_point now = Clock::now();
    for (auto it = lent_.begin(); it != lent_.end();) {
      if (now - it->second >= limit_) {
        late.push_back(it->first);  // its reference goes with it
        it = lent_.erase(it);
      } else {
        ++it;
      }
    }
    if (lent_.empty() && now - last_added_ > idle_) polling_ = false;
    if (late.empty()) continue;
    lock.unlock();
    gil::unless_finalizing([this, &late] {
      for (PyObject* role : late) {
        pybind11::object owned = pybind11::reinterpret_steal<pybind11::object>(role);
        try {
          late_(owned);
        } catch (pybind11::error_already_set& error) {  // `late` says its own failures: this is a last resort
          error.discard_as_unraisable("distautograd's watchdog giving a late call's reading away");
        }
      }
    });
    late.clear();
    lock.lock();
  }
}

}  // namespace distautograd::native
