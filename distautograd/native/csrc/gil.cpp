// See gil.h. Python 3.11 and 3.12 call it _Py_IsFinalizing; 3.13 made it public as Py_IsFinalizing.
#include "gil.h"

#include <unistd.h>

namespace distautograd::native::gil {

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

Taken::Taken() {
  if (finalizing()) park();
  gil_.emplace();
}

Released::Released() : state_(PyEval_SaveThread()) {}

Released::~Released() {
  if (finalizing()) park();
  PyEval_RestoreThread(state_);
}

}  // namespace distautograd::native::gil
