// torch's Python futures carry errors two ways: as an exception value unwrapped on wait() (all
// Python code can set), or as a C++ error (what torch's RPC sets). Only the second ends
// torch.futures.wait_all early, so the runtime fails its futures here. The error is torch's
// python_error holding the exception object, which torch restores each time wait() rethrows it
// (a future may be waited for many times), so the caller gets the original exception.
#include "futures.h"

#include "gil.h"

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/jit/python/pybind_utils.h>

namespace distautograd::native {

void fail_future(const pybind11::handle& future, const pybind11::object& exception) {
  if (!PyExceptionInstance_Check(exception.ptr())) {
    throw pybind11::type_error("fail_future needs an exception instance");
  }
  c10::IValue value = torch::jit::toIValue(future, c10::FutureType::create(c10::PyObjectType::get()));
  c10::intrusive_ptr<c10::ivalue::Future> fut = value.toFuture();
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception.ptr())), exception.ptr());
  python_error held;
  held.persist();  // takes the error just set
  std::exception_ptr error = std::make_exception_ptr(std::move(held));
  gil::Released released;  // callbacks of the future may take the GIL themselves
  fut->setErrorIfNeeded(std::move(error));
}

}  // namespace distautograd::native
