"""The GPU tier: every test in this folder needs a CUDA device (`pytest -m gpu` on a GPU machine).

Each test here is marked ``gpu`` (so `make test` and `make test-all` deselect it, while still importing
the modules) and skipped, with its reason, where no CUDA device is present.
"""

import pytest
import torch

_HERE = __file__.rsplit("/", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark every test of this folder ``gpu`` and skip it without CUDA, before ``-m`` selects."""
    for item in items:
        if str(item.path).startswith(_HERE + "/"):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="no CUDA device"))
