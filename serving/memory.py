"""Keeping a service process's pages in memory (serving config `lock_memory`).

A page the service has not touched for a while may be taken back by the kernel: a file page
(the lexical index, memory-mapped; the code of onnxruntime, faiss and tantivy) is dropped from
the page cache under memory pressure, or sooner where a proactive reclaimer runs (DAMON's
`pageout` scheme, on this project's build VM: pages idle for a minute). The next search that
needs it waits on the disk: on the 1 M set such waits were /search's 80–290 ms stalls at one
request in flight. Search engines lock their memory for this reason (Elasticsearch's
`bootstrap.memory_lock`).

`lock()` calls mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT): every page this process has,
or touches later, stays resident until it is unmapped (an old version's files are unmapped
when it is swapped out, so they go). ONFAULT locks a page when it is first touched instead of
reading every mapping in at once: a process maps much it never reads (all of libtorch).

ONFAULT alone leaves a page the warm-up never read to be read from disk by the first search
that needs it, and a search reads scattered pages: the personal retriever ~1,000 random rows
of the 245 MB creator embeddings on the 1 M set, the lexical retriever the posting lists of
its words. `pin(folders)` reads in and locks every page this process maps from the served
version's files (embeddings, lexical index, name completion, the feature store's arrays:
~540 MB on the 1 M set, shared by the workers through the page cache).

It needs CAP_IPC_LOCK or a memlock limit (`ulimit -l`) above the process's size; without
either the call fails, the service runs unlocked, and /readyz says why (`memory_lock`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4  # <sys/mman.h> on Linux
status: dict = {"locked": False, "why": "not asked (serving config lock_memory: false)"}
"""This process's lock, as /readyz reports it."""


def lock() -> dict:
    """Lock this process's pages, present and future, as they are touched; the `status`."""
    global status
    if not sys.platform.startswith("linux"):
        status = {"locked": False, "why": f"mlockall is Linux's; this is {sys.platform}"}
        return status
    if _libc().mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
        status = {"locked": True, "why": None}
        log.info("process %d: pages locked in memory as they are touched", os.getpid())
        return status
    err = ctypes.get_errno()
    status = {"locked": False, "why": f"mlockall: {os.strerror(err)}; needs CAP_IPC_LOCK or a "
              f"memlock limit (ulimit -l) above the process's size"}  # fmt: skip
    log.warning("process %d runs unlocked: %s", os.getpid(), status["why"])
    return status


def pin(folders) -> dict:
    """Read in and lock every page this process maps from files under `folders` (mlock on
    each mapping, /proc/self/maps), when `lock` took; what was pinned."""
    if not status["locked"]:
        return {"pinned_bytes": 0, "mappings": 0}
    roots = tuple(str(os.path.realpath(f)).rstrip("/") + "/" for f in folders)
    libc = _libc()
    pinned, mappings = 0, 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].strip().startswith(roots):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if libc.mlock(start, end - start) == 0:
                pinned, mappings = pinned + end - start, mappings + 1
            else:
                why = os.strerror(ctypes.get_errno())
                log.warning("could not pin %s: %s", parts[5].strip(), why)
    log.info("process %d: %d MB of %d mappings pinned", os.getpid(), pinned >> 20, mappings)
    status["pinned_mb"] = round(pinned / 2**20, 1)
    return {"pinned_bytes": pinned, "mappings": mappings}


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc
