"""A caller with (almost) no file descriptors left still gets its blocking calls answered.

A blocking ``apply`` normally goes out on a socket of the calling thread's
own (``Connection.call_now``), made on first use. With no descriptor left
for it, libzmq cannot connect it and retries in the background, silently:
the call must take the I/O thread's socket, connected long before, instead
of waiting forever on a message that never leaves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 60

SCRIPT = textwrap.dedent("""
    import faulthandler, os, resource, sys
    import zpool

    faulthandler.dump_traceback_later({timeout}, exit=True)  # a hang shows where, then fails
    FREE = int(sys.argv[1])

    def exhaust(keep_free):
        '''Open /dev/null until no descriptor is left, then close `keep_free` of them.'''
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for _ in range(keep_free):
            os.close(held.pop())
        return held

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
    with zpool.Pool(2) as pool:
        assert pool.apply_async(abs, (-1,)).get(30) == 1  # the pool is up; no blocking call yet
        held = exhaust(FREE)
        assert pool.apply(abs, (-2,)) == 2
        assert pool.apply(divmod, (7, 2)) == (3, 1)
        assert pool.map(abs, [-3, -4]) == [3, 4]
        for fd in held:
            os.close(fd)
        assert [pool.apply(abs, (-i,)) for i in range(20)] == list(range(20))  # and once there are some again
    print("OK")
""")


@pytest.mark.timeout(T + 30)
@pytest.mark.parametrize("free", [0, 1, 2])
def test_blocking_calls_with_no_descriptor_for_their_own_socket(tmp_path, free):
    """0 free: the socket cannot be made; 1 or 2: it is made but can never connect (EMFILE)."""
    script = tmp_path / "no_fds.py"
    script.write_text(SCRIPT.format(timeout=T - 10))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(
        [sys.executable, str(script), str(free)], capture_output=True, text=True, env=env, timeout=T, cwd=str(tmp_path)
    )
    assert done.returncode == 0 and done.stdout.strip() == "OK", f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
