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

    Offline models are large and immutable, so their folder is shared with the real cache.
    """
    from skipspec import offline_models

    real_models = offline_models.cache_dir()
    root = tmp_path_factory.mktemp("skipspec-cache")
    real_models.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(real_models, target_is_directory=True)
    old = os.environ.get(offline_models.CACHE_ENV)
    os.environ[offline_models.CACHE_ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(offline_models.CACHE_ENV, None)
    else:
        os.environ[offline_models.CACHE_ENV] = old
