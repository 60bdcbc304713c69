"""Functions sent by value are pickled again only when what they capture changed (serialize._dumps_function)."""

from __future__ import annotations

import gc

import pytest

from zpool import serialize
from zpool.serialize import dumps, loads


@pytest.fixture
def dill_calls(monkeypatch):
    """Count dill's by-value pickles (the expensive step the cache saves)."""
    calls = []
    real = serialize._dumps_dill

    def counting(obj):
        calls.append(obj)
        return real(obj)

    monkeypatch.setattr(serialize, "_dumps_dill", counting)
    return calls


def main_namespace(source: str) -> dict:
    """Run `source` as if it were the caller's script (its functions then travel by value)."""
    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


def sent(func, *args):
    """Serialize `func` as a call would, rebuild it, and call it."""
    return loads(dumps(func))(*args)


def test_an_unchanged_function_is_pickled_once(dill_calls):
    ns = main_namespace("import math\nFACTOR = 3\ndef f(x):\n    return math.floor(FACTOR * x)\n")
    assert [sent(ns["f"], 2) for _ in range(5)] == [6] * 5
    assert len(dill_calls) == 1
    assert dumps(ns["f"])[0] == dumps(ns["f"])[0]


def test_a_rebound_global_is_sent_again(dill_calls):
    ns = main_namespace("FACTOR = 3\ndef f(x):\n    return FACTOR * x\n")
    assert sent(ns["f"], 2) == 6
    ns["FACTOR"] = 4
    assert sent(ns["f"], 2) == 8
    ns["FACTOR"] = 4.0  # equal to 4, but another object: not mistaken for it
    assert type(sent(ns["f"], 2)) is float
    assert len(dill_calls) == 3


def test_a_global_defined_later_is_seen(dill_calls):
    ns = main_namespace("def f(x):\n    return len(x)\n")
    assert sent(ns["f"], "abc") == 3
    ns["len"] = lambda x: -1  # shadows the builtin from now on
    assert sent(ns["f"], "abc") == -1


def test_functions_reading_mutable_globals_are_pickled_every_time(dill_calls):
    ns = main_namespace("SEEN = []\nTABLE = ([1],)\ndef f():\n    return len(SEEN)\ndef g():\n    return TABLE[0][0]\n")
    assert sent(ns["f"]) == 0
    ns["SEEN"].append(1)  # changed in place: no new object to notice
    assert sent(ns["f"]) == 1
    assert sent(ns["g"]) == 1
    ns["TABLE"][0][0] = 2  # a list inside a tuple
    assert sent(ns["g"]) == 2
    assert len(dill_calls) == 4
    assert ns["f"] not in serialize._BY_VALUE and ns["g"] not in serialize._BY_VALUE


def test_closure_cells_and_defaults_count():
    def make():
        step = 1

        def add(x, extra=0):
            return x + step + extra

        def bump():
            nonlocal step
            step += 10

        return add, bump

    add, bump = make()
    assert sent(add, 1) == 2
    bump()
    assert sent(add, 1) == 12
    add.__defaults__ = (100,)
    assert sent(add, 1) == 112


def test_a_redefined_helper_is_sent_again(dill_calls):
    ns = main_namespace("def helper(x):\n    return x + 1\ndef f(x):\n    return helper(x) * 2\n")
    assert sent(ns["f"], 1) == 4
    assert sent(ns["f"], 1) == 4
    assert len(dill_calls) == 1
    exec("def helper(x):\n    return x + 100\n", ns)
    assert sent(ns["f"], 1) == 202
    ns["LIMIT"] = 5
    exec("def helper(x):\n    return min(x, LIMIT)\n", ns)  # the helper's own globals count too
    assert sent(ns["f"], 9) == 10
    ns["LIMIT"] = 7
    assert sent(ns["f"], 9) == 14


def test_recursive_functions_are_cached(dill_calls):
    ns = main_namespace("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n")
    assert [sent(ns["fact"], 5) for _ in range(3)] == [120] * 3
    assert len(dill_calls) == 1


def test_cached_pickles_do_not_keep_functions_alive():
    gc.collect()
    before = len(serialize._BY_VALUE)
    for i in range(200):
        dumps(lambda x, i=i: x + i)
    ns = main_namespace("def me(n):\n    return n and me(n - 1)\n")  # refers to itself, through its globals
    dumps(ns["me"])
    assert ns["me"] in serialize._BY_VALUE
    del ns
    gc.collect()
    assert len(serialize._BY_VALUE) <= before


def test_functions_with_attributes_or_annotations_are_not_cached(dill_calls):
    ns = main_namespace("def f(x: int) -> int:\n    return x\ndef g(x):\n    return x\ng.tag = 1\n")
    for _ in range(2):
        assert sent(ns["f"], 1) == 1 and sent(ns["g"], 1) == 1
    assert len(dill_calls) == 4


def test_bound_builtin_methods_are_not_trusted(dill_calls):
    ns = main_namespace("SEEN = []\npush = SEEN.append\ndef f():\n    return push.__self__\n")  # reads push only
    assert sent(ns["f"]) == []
    ns["SEEN"].append(2)  # the bound method's list changed in place
    assert sent(ns["f"]) == [2]
    assert ns["f"] not in serialize._BY_VALUE


def test_a_global_rebound_to_another_builtin_of_the_same_module_is_sent_again(dill_calls):
    ns = main_namespace("import math\nround_it = math.floor\ndef f(x):\n    return round_it(x)\n")
    assert sent(ns["f"], 2.5) == 2
    ns["round_it"] = ns["math"].ceil
    assert sent(ns["f"], 2.5) == 3
    assert sent(ns["f"], 2.5) == 3
    assert len(dill_calls) == 2
