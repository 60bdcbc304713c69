"""zpool in a real Jupyter kernel (ipykernel), driven by jupyter_client as a notebook is.

In a kernel, ``__main__`` is IPython's user module and cells are compiled
from strings: functions, lambdas and classes defined in cells must travel by
value, loop variables and redefinitions must reach the engines, and the
initializer pattern must work as in a script.
"""

from __future__ import annotations

import os
import re

# jupyter_core 5 warns on import unless told to use the standard platform directories.
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

from jupyter_client.manager import start_new_kernel  # a test extra, with ipykernel

from tests.integration.test_main_module import REPO

CELLS = [
    ("from zpool import Pool\npool = Pool(2)", ""),
    ("OFFSET = 10\ndef shift(x):\n    return x + OFFSET", ""),
    ("print(pool.map(shift, range(3)))", "[10, 11, 12]"),
    ("for k in range(3):\n    print(k, pool.map(lambda x: x * k, [1, 2]))", "0 [0, 0]\n1 [1, 2]\n2 [2, 4]"),
    ("def shift(x):\n    return x - OFFSET\nprint(pool.map(shift, range(3)))", "[-10, -9, -8]"),
    (
        "class Point:\n    def __init__(self, v):\n        self.v = v\n"
        "r = pool.apply(Point, (5,))\nprint(type(r) is Point, r.v)",
        "True 5",
    ),
    (
        "model = None\ndef init(name):\n    global model\n    model = name\n"
        "def predict(x):\n    return model, x\n"
        "with Pool(1, initializer=init, initargs=('resnet',)) as p2:\n    print(p2.map(predict, [1, 2]))",
        "[('resnet', 1), ('resnet', 2)]",
    ),
    ("print(list(pool.imap_unordered(shift, range(3))) != [])", "True"),
    (
        "try:\n    pool.apply(lambda: 1 / 0)\n"
        "except ZeroDivisionError as exc:\n    print('caught', type(exc).__name__)",
        "caught ZeroDivisionError",
    ),
    # What a task prints shows in the cell that ran it, prefixed with its engine, before the result.
    (
        "def talk(x):\n    print('said', x)\n    return x\nprint(pool.apply(talk, (4,)))",
        re.compile(r"\[engine \d+\] said 4\n4"),
    ),
    ("pool.terminate()\npool.join()", ""),
]


def test_cells_in_a_jupyter_kernel(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path)
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        for source, expected in CELLS:
            out: list[str] = []

            def hook(msg, out=out):
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

            reply = kc.execute_interactive(source, timeout=60, output_hook=hook)
            assert reply["content"]["status"] == "ok", (source, "".join(out))
            if isinstance(expected, re.Pattern):
                assert expected.fullmatch("".join(out).strip()), (source, "".join(out))
            else:
                assert "".join(out).strip() == expected, source
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
