"""Functions and classes defined in a script's ``__main__`` work as with the stdlib.

They travel by value (the engines do not import the caller's script), and
classes come back as the caller's own: ``isinstance`` and ``except`` work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import zpool

    class Point:
        def __init__(self, x):
            self.x = x

    class MyError(Exception):
        pass

    class Outer:
        class Error(Exception):
            pass

    def nested_boom():
        raise Outer.Error("nested")

    SCALE = 10

    def make(x):
        return Point(x * SCALE)

    def boom(msg):
        raise MyError(msg)

    if __name__ == "__main__":
        with zpool.Pool(2) as pool:
            p = pool.apply(make, (3,))
            assert type(p) is Point and p.x == 30, p
            points = pool.map(make, range(4))
            assert all(isinstance(q, Point) for q in points)
            assert pool.apply(Point, (7,)).x == 7
            try:
                pool.apply(boom, ("mine",))
            except MyError as exc:
                assert str(exc) == "mine"
                assert "in boom" in str(exc.__cause__)
            else:
                raise AssertionError("MyError was not raised")
            try:
                pool.apply(nested_boom)
            except Outer.Error as exc:
                assert str(exc) == "nested"
            else:
                raise AssertionError("Outer.Error was not raised")

            # Lambdas and __main__ functions serialized from several threads at once
            # (dill briefly swaps sys.stdout while it inspects them) leave stdout alone.
            import sys, threading
            real = sys.stdout

            def submit_many():
                for _ in range(10):
                    for j in range(20):
                        pool.apply_async(make, (j,))
                    pool.map(make, range(30), chunksize=3)

            threads = [threading.Thread(target=submit_many) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sys.stdout is real, sys.stdout
        print("ok")
    """
)


def test_main_module_functions_and_classes(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
