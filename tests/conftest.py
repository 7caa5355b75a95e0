import os

import pytest
import torch

# Tiny models on a small shared CPU run fastest, and identically, on one thread.
torch.set_num_threads(1)
# device="auto" means CPU in tests, so results compare across machines; CUDA tests ask for "cuda".
os.environ["KDNB_DEVICE"] = "cpu"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
