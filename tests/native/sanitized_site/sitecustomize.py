"""In a process of the sanitized tier (tests/native/test_sanitized_core.py): the core built with
AddressSanitizer, named by DISTAUTOGRAD_SANITIZED_CORE, stands in for distautograd._core. Python
imports this module at start-up because the tier puts this folder on PYTHONPATH, which the cluster's
worker processes inherit; anywhere else the variable is unset and it does nothing."""

import importlib.util
import os
import sys

_path = os.environ.get("DISTAUTOGRAD_SANITIZED_CORE")
if _path:
    import torch  # noqa: F401  (libtorch and libc10, which the core links against, before the core)

    _spec = importlib.util.spec_from_file_location("distautograd._core", _path)
    _core = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_core)
    sys.modules["distautograd._core"] = _core
