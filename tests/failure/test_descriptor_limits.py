"""Limits on open file descriptors (RLIMIT_NOFILE) and what zpool holds open.

Shared-memory arrays (issue 16): a received array of 1 MiB or more is a
view on a mapped segment. Each used to keep a descriptor open for as long
as it lived, so a caller holding about as many result arrays as its
descriptor limit (1,024 by default) saw every later result and task fail
with a ``SerializationError``, and the data was lost. Now a mapping holds
no descriptor: the scripts below lower the limit in the child before the
pool starts (the engines inherit it) and hold more arrays than it allows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from zpool import _shm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20

HOLD_ARRAYS_SCRIPT = textwrap.dedent("""
    import faulthandler, os, resource, sys
    import numpy as np
    import zpool
    from tests._tasks import received_via

    faulthandler.dump_traceback_later({timeout}, exit=True)  # a hang shows where, then fails
    LIMIT, COUNT = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))  # before the pool: its processes inherit it

    def make(i):
        return np.full({mib} // 8, float(i))  # 1 MiB: through shared memory

    def checksum(arr):
        return float(arr[0]) + float(arr[-1])

    with zpool.Pool(2) as pool:
        half = COUNT // 2
        held = pool.map(make, range(half), chunksize=16)
        held += [r.get(60) for r in [pool.apply_async(make, (i,)) for i in range(half, COUNT)]]
        assert len(held) == COUNT
        for i, arr in enumerate(held):
            assert arr.nbytes == {mib} and arr[0] == i and arr[-1] == i and (arr == i).all(), i
            assert received_via(arr) == "shm", (i, received_via(arr))
        # Tasks still work while all of them are held: arrays sent back as arguments, and new results.
        assert pool.apply(checksum, (held[7],)) == 14.0
        assert pool.apply(make, (COUNT,))[-1] == COUNT
        fds = len(os.listdir("/proc/self/fd"))
        assert fds < LIMIT // 2, f"{{fds}} descriptors open while holding {{COUNT}} arrays"
    print("OK", fds)
""")


def run_holding(tmp_path, limit: int, count: int, timeout: float) -> None:
    """Run HOLD_ARRAYS_SCRIPT under RLIMIT_NOFILE `limit`, holding `count` result arrays of 1 MiB."""
    script = tmp_path / "hold_arrays.py"
    script.write_text(HOLD_ARRAYS_SCRIPT.format(timeout=timeout - 10, mib=MIB))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(
        [sys.executable, str(script), str(limit), str(count)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=str(tmp_path),
    )
    assert done.returncode == 0 and done.stdout.startswith("OK"), (
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    )


def need_shared_memory(nbytes: int) -> None:
    if not _shm.available():
        pytest.skip(f"no usable {_shm.DIRECTORY}: arrays travel through sockets, which hold no descriptor per array")
    free = shutil.disk_usage(_shm.DIRECTORY).free
    if free < nbytes:
        pytest.skip(f"{_shm.DIRECTORY} has {free / 2**30:.1f} GiB free; this test holds {nbytes / 2**30:.1f} GiB there")


@pytest.mark.timeout(150)
def test_holding_more_shared_memory_arrays_than_the_descriptor_limit(tmp_path):
    """1,000 result arrays of 1 MiB held under a limit of 256 descriptors (each used to hold one: failed past ~200)."""
    need_shared_memory(1100 * MIB)
    run_holding(tmp_path, limit=256, count=1000, timeout=120)


@pytest.mark.timeout(330)
def test_holding_5000_shared_memory_arrays_under_the_default_descriptor_limit(tmp_path):
    """Issue 16's figure: 5,000 result arrays of 1 MiB (5 GiB) held under the usual limit of 1,024."""
    need_shared_memory(5500 * MIB)
    run_holding(tmp_path, limit=1024, count=5000, timeout=300)
