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


def _run(argv, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=120, cwd=cwd)


INITIALIZER_SCRIPT = textwrap.dedent(
    """
    import multiprocessing
    from zpool import Pool

    connection = None  # set per worker by the initializer, as stdlib users do
    seen = None        # a per-worker cache a task creates on first use

    def init(address):
        global connection
        connection = f"connected to {address}"

    def task(x):
        global seen
        if seen is None:
            seen = {}
        seen[x] = True
        return connection, len(seen)

    if __name__ == "__main__":
        multiprocessing.set_start_method("forkserver")  # whatever the user chose: zpool does not care
        with Pool(1, initializer=init, initargs=("db:5432",)) as pool:
            out = pool.map(task, range(4), chunksize=1)
            assert out == [("connected to db:5432", n) for n in range(1, 5)], out
        print("ok")
    """
)


def test_stdlib_initializer_pattern_in_main(tmp_path):
    script = tmp_path / "init_script.py"
    script.write_text(INITIALIZER_SCRIPT)
    done = _run([sys.executable, str(script)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_script_without_main_guard(tmp_path):
    # The stdlib needs `if __name__ == "__main__":` under spawn and forkserver (its
    # workers import the script); zpool's engines never import it.
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            from zpool import Pool

            def double(x):
                return 2 * x

            with Pool(2) as pool:
                print(pool.map(double, range(5)))
            """
        )
    )
    done = _run([sys.executable, str(script)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 2, 4, 6, 8]"


REPL_SESSION = """\
from zpool import Pool
pool = Pool(2)
def cube(x):
    return x ** 3

print("result", pool.map(cube, range(5)))
print("lambda", pool.apply(lambda: sum(pool_size for pool_size in [2])))
pool.close(); pool.join()
"""


def test_interactive_interpreter(tmp_path):
    # `python -i` with a piped stdin runs the statements one by one as the REPL does:
    # the functions have no source file and live in the interpreter's __main__.
    done = _run([sys.executable, "-i", "-q"], stdin=REPL_SESSION, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "result [0, 1, 8, 27, 64]" in done.stdout
    assert "lambda 2" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr


NOTEBOOK_CELLS = [
    "from zpool import Pool\npool = Pool(2)",
    "OFFSET = 10\ndef shift(x):\n    return x + OFFSET",
    "print('cell', pool.map(shift, range(3)))",
    "for k in range(3):\n    print('loop', k, pool.map(lambda x: x * k, [1, 2]))",
    "OFFSET = 20\nprint('changed', pool.map(shift, range(3)))",
    "def shift(x):\n    return x - OFFSET\nprint('redefined', pool.map(shift, range(3)))",
    "pool.terminate()",
]

NOTEBOOK_DRIVER = textwrap.dedent(
    """
    # Runs cells the way an IPython kernel does: in a module object standing in
    # for __main__ (sys.modules['__main__'] is replaced), code compiled from
    # strings with no file behind it.
    import sys, types, json
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    for i, cell in enumerate(json.loads(sys.stdin.read())):
        exec(compile(cell, f"<ipython-input-{i}-0123456789ab>", "exec"), main.__dict__)
    """
)


def test_notebook_like_kernel():
    import json

    done = _run([sys.executable, "-c", NOTEBOOK_DRIVER], stdin=json.dumps(NOTEBOOK_CELLS))
    assert done.returncode == 0, done.stderr
    assert "cell [10, 11, 12]" in done.stdout
    # Engines always see the caller's current globals: a loop variable, a changed
    # constant, a redefined function.
    assert "loop 0 [0, 0]" in done.stdout and "loop 2 [2, 4]" in done.stdout
    assert "changed [20, 21, 22]" in done.stdout
    assert "redefined [-20, -19, -18]" in done.stdout
