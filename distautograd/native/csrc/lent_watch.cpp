// See lent_watch.h. The watchdog's thread is started by the first add and never ends (as Python's
// daemon thread did not); the one watch of a process is never destroyed.
#include "lent_watch.h"

#include <vector>

#include "gil.h"

namespace distautograd::native {

namespace {

LentWatch::Clock::duration seconds(double s) {
  return std::chrono::duration_cast<LentWatch::Clock::duration>(std::chrono::duration<double>(s));
}

}  // namespace

LentWatch::LentWatch(double limit, double idle) : limit_(seconds(limit)), idle_(seconds(idle)) {
  if (!(limit > 0) || !(idle > 0)) throw std::invalid_argument("LentWatch: limit and idle must be positive seconds");
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
      started_ = true;
      polling_ = true;
      std::thread([this] { run(); }).detach();
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
    gil::unless_finalizing([&late] {
      for (PyObject* role : late) {
        pybind11::object owned = pybind11::reinterpret_steal<pybind11::object>(role);
        try {
          owned.attr("give_away")();
        } catch (pybind11::error_already_set& error) {
          error.discard_as_unraisable("distautograd's watchdog giving a late call's reading away");
        }
      }
    });
    late.clear();
    lock.lock();
  }
}

}  // namespace distautograd::native
