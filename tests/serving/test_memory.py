"""A service process asked to lock its memory (serving config `lock_memory`) keeps every page it
has or touches later resident (mlockall), or runs unlocked and says why when it may not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

PROBE = """
import json
from serving import memory
status = memory.lock()
def locked_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmLck"))
before = locked_kb()
block = bytearray(64 << 20)  # a new mapping, touched
print(json.dumps({**status, "before": before, "after": locked_kb()}))
"""


def probe(*prefix: str) -> dict:
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mlockall is Linux's")
def test_a_locked_process_keeps_what_it_touches_later_locked_too():
    got = probe()
    if not got["locked"]:  # a machine that gives neither CAP_IPC_LOCK nor a memlock limit
        assert "CAP_IPC_LOCK" in got["why"] and got["after"] == 0
        return
    assert got["why"] is None and got["before"] > 0
    assert got["after"] - got["before"] >= 64 << 10  # kB: the new 64 MiB block is locked


@pytest.mark.skipif(not (shutil.which("prlimit") and shutil.which("setpriv")),
                    reason="needs util-linux's prlimit and setpriv")  # fmt: skip
def test_a_process_that_may_not_lock_runs_unlocked_and_says_why():
    got = probe("prlimit", "--memlock=0", "setpriv", "--bounding-set=-ipc_lock")
    assert not got["locked"] and got["after"] == 0
    assert got["why"].startswith("mlockall: Operation not permitted; needs CAP_IPC_LOCK")


PIN = """
import json, sys
import numpy as np
from serving import memory
memory.lock()
arrays = np.load(sys.argv[1], mmap_mode="r")  # mapped, not one page read yet
def locked_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmLck"))
def resident_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssFile"))
before = resident_kb()
pinned = memory.pin([sys.argv[2]])
read_in = resident_kb() - before
print(json.dumps({**pinned, "locked": memory.status["locked"], "read_in_kb": read_in}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mlockall is Linux's")
def test_pin_reads_in_every_page_mapped_from_the_version(tmp_path):
    folder = tmp_path / "version"
    folder.mkdir()
    import numpy as np

    np.save(folder / "embeddings.npy", np.ones((4096, 1024), np.float32))  # 16 MiB
    out = subprocess.run([sys.executable, "-c", PIN, str(folder / "embeddings.npy"), str(folder)],
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if not got["locked"]:  # not allowed to lock here: nothing is pinned either
        assert got["pinned_bytes"] == 0
        return
    assert got["mappings"] == 1 and got["pinned_bytes"] >= 16 << 20
    assert got["read_in_kb"] >= 15 << 10  # the pages are resident now, not at first search
