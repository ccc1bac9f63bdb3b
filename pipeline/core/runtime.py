"""Process-wide settings that a library call may change only for its own duration (thread pools)."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside the block, restored after it."""
    import torch

    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


@contextlib.contextmanager
def numpy_blas_single_thread():
    """Run numpy's BLAS on one thread inside the block (FAISS's own threads are untouched).

    The tree works with many small matrix products (a node's few centroids, a k-means++
    step); a multi-threaded BLAS spends more on waking threads than on the product, 10-20x
    more on a busy machine. Big nodes get their parallelism from FAISS (OpenMP). Needs
    threadpoolctl (a scikit-learn dependency); without it this does nothing.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        yield
        return
    libs = [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and "numpy" in str(lib.filepath)]
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)
