"""How many threads torch may use in this process: set once, before any torch work."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_applied: int | None = None


def set_torch_threads(threads: int) -> int:
    """Cap torch's intra-op and inter-op thread pools at `threads`; return the cap in force.

    Torch accepts the inter-op count only once per process and only before its first parallel
    work, so the first call wins: a later one (another app built in the same process, as tests
    do) keeps the first cap and logs that it did.
    """
    global _applied
    import torch

    with _lock:
        if _applied is not None:
            if _applied != threads:
                log.warning("torch.threads.kept threads=%d asked=%d", _applied, threads)
            return _applied
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # parallel work already ran in this process: intra-op still holds
            log.warning("torch.threads.interop_unchanged threads=%d", threads)
        _applied = threads
        log.info("torch.threads.set threads=%d", threads)
        return threads
