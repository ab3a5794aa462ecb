"""The example recipes the tests run as modules: ``examples/fencing.py``, loaded once.

``examples/`` is not a package, so the file is loaded by path; the tests of every backend
share the one module object (its guards hold no state of their own between calls).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@functools.cache
def fencing_recipe() -> ModuleType:
    """``examples/fencing.py`` as a module, loaded on the first call and kept."""
    spec = importlib.util.spec_from_file_location("fencing_recipe", EXAMPLES / "fencing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
