"""Import layering: engines and the controller stay lean (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def loaded_after(statement: str, names: list[str]) -> dict[str, bool]:
    """Run `statement` in a fresh interpreter; report which of `names` are in sys.modules."""
    code = f"import json, sys\n{statement}\nprint(json.dumps({{n: n in sys.modules for n in {names!r}}}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement, present, absent",
    [
        (
            "import zpool.engine.worker",
            ["zpool.engine.worker", "zpool.serialize", "zmq"],
            ["zpool.client", "zpool.pool", "dill"],
        ),
        (
            "import zpool.controller.hub",
            ["zpool.controller.hub", "zpool.protocol", "zmq"],
            ["zpool.serialize", "zpool.client", "numpy"],
        ),
        (
            "import zpool",
            ["zpool"],
            ["zpool.pool", "zmq", "zpool.client"],
        ),
    ],
    ids=["engine", "controller", "package"],
)
def test_layering(statement, present, absent):
    loaded = loaded_after(statement, present + absent)
    assert {n: loaded[n] for n in present} == dict.fromkeys(present, True)
    assert {n: loaded[n] for n in absent} == dict.fromkeys(absent, False)


def test_error_classes_do_not_load_the_pool():
    loaded = loaded_after("from zpool import TimeoutError, EngineError", ["zpool.error", "zpool.pool", "zmq"])
    assert loaded == {"zpool.error": True, "zpool.pool": False, "zmq": False}
