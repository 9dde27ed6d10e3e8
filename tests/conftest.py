import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# One thread: the tiny models are launch-bound, and OpenMP spin-waits badly when another
# process shares the two cores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep saved layer sets (and anything else skipspec caches) out of the user's real cache.

    Offline models and their conversions are large and immutable (a conversion is keyed by the
    file's content and the library versions), so their folders are shared with the real cache.
    """
    from skipspec import gguf_cache, offline_models

    root = tmp_path_factory.mktemp("skipspec-cache")
    for real in (offline_models.cache_dir(), gguf_cache.cache_dir()):
        real.mkdir(parents=True, exist_ok=True)
        (root / real.name).symlink_to(real, target_is_directory=True)
    old = os.environ.get(offline_models.CACHE_ENV)
    os.environ[offline_models.CACHE_ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(offline_models.CACHE_ENV, None)
    else:
        os.environ[offline_models.CACHE_ENV] = old
