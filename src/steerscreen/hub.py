"""The Hugging Face Hub as every stage sees it: is it switched off, and did a call fail to reach it.

One implementation for models (``transformers``), SAEs (``huggingface_hub`` / SAELens) and
corpora (``datasets``), so that "offline" means the same thing everywhere. Nothing here imports
``huggingface_hub`` unless it is already loaded or a caller asks to switch it offline.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# What huggingface_hub itself reads (HF_HUB_OFFLINE, with TRANSFORMERS_OFFLINE as a fallback);
# `datasets` also honours HF_DATASETS_OFFLINE.
_HUB_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_DATASETS_FLAGS = ("HF_DATASETS_OFFLINE",)
_TRUE = frozenset({"1", "true", "yes", "on"})

# Parts of the class names (anywhere in the MRO) that httpx, requests, urllib3, aiohttp and
# huggingface_hub give a failure to reach a server, or a cache miss while offline
# (huggingface_hub's LocalEntryNotFoundError, OfflineModeIsEnabled).
_NETWORK_NAME_PARTS = ("Connect", "Timeout", "NameResolution", "NetworkError", "ProxyError",
                       "TransportError", "Offline", "LocalEntryNotFound")


def hub_offline(*, datasets: bool = False) -> bool:
    """Whether Hugging Face downloads are switched off.

    True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set in the environment now, or was set
    when huggingface_hub was imported (it reads the variable once); with ``datasets=True``
    HF_DATASETS_OFFLINE counts too.
    """
    flags = _HUB_FLAGS + (_DATASETS_FLAGS if datasets else ())
    if any(os.environ.get(k, "").strip().lower() in _TRUE for k in flags):
        return True
    constants = sys.modules.get("huggingface_hub.constants")  # never imported just to ask
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def is_network_error(e: BaseException) -> bool:
    """A failure to reach the hub (or a cache miss while offline), anywhere in the cause chain."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionError | TimeoutError | socket.gaierror) or any(
                part in c.__name__ for c in type(cur).__mro__ for part in _NETWORK_NAME_PARTS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


@contextmanager
def offline_mode(offline: bool = True) -> Iterator[None]:
    """While ``offline``, make huggingface_hub serve from its cache and never touch the network.

    huggingface_hub reads HF_HUB_OFFLINE only at import, so a variable set later is applied here
    by flipping its constant for the duration (and restoring it after).
    """
    import huggingface_hub.constants as hub_constants

    old = hub_constants.HF_HUB_OFFLINE
    if offline:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old
