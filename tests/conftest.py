import os

import pytest
import torch

os.environ.setdefault("KDNB_PLOT", "0")  # unit tests run without the live chart unless a test turns it on
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
