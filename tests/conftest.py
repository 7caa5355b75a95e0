import atexit
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


@pytest.fixture(autouse=True, scope="session")
def _close_ipython_shells():
    """Close every IPython shell the tests made when the suite ends, instead of at interpreter exit.

    Each ``InteractiveShell`` registers an atexit hook (a namespace reset and ``gc.collect()`` through
    its display hook, plus %%script's) and keeps a history thread: with one shell per test, the suite printed its result
    and then stalled ~18 s at exit. Here each shell's history is closed (stopping its thread) and its
    hook unregistered; the process then exits at once, freeing the namespaces with everything else.
    """
    try:
        from IPython.core.interactiveshell import InteractiveShell
    except ImportError:
        yield
        return
    shells = []
    init = InteractiveShell.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        shells.append(self)

    InteractiveShell.__init__ = recording_init
    yield
    InteractiveShell.__init__ = init
    for shell in shells:
        atexit.unregister(shell.atexit_operations)
        script_magics = shell.magics_manager.registry.get("ScriptMagics")
        if script_magics is not None:  # its own atexit hook, to kill %%script processes: none were started
            atexit.unregister(script_magics.kill_bg_processes)
        if shell.history_manager is not None:
            shell.history_manager.end_session()
            shell.history_manager.close()
            shell.history_manager = None
