"""Functions and classes sent by value are pickled again only when what they capture changed (serialize)."""

from __future__ import annotations

import gc
import weakref

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
    assert ns["f"].__code__ not in serialize._BY_VALUE and ns["g"].__code__ not in serialize._BY_VALUE


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
    lambdas = [lambda x, i=i: x + i for i in range(200)]
    alive = [weakref.ref(f) for f in lambdas]
    for f in lambdas:
        dumps(f)
    # One code object: its newest few variants are kept, by what they captured (never the function).
    assert len(serialize._BY_VALUE[lambdas[0].__code__]) == serialize._BY_VALUE_VARIANTS
    del lambdas, f
    gc.collect()
    assert not any(ref() for ref in alive)
    ns = main_namespace("def me(n):\n    return n and me(n - 1)\n")  # refers to itself, through its globals
    dumps(ns["me"])
    assert ns["me"].__code__ in serialize._BY_VALUE
    del ns
    gc.collect()
    assert len(serialize._BY_VALUE) <= before + 1  # (the lambdas' code lives as long as this test's)


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
    assert ns["f"].__code__ not in serialize._BY_VALUE


def test_a_global_rebound_to_another_builtin_of_the_same_module_is_sent_again(dill_calls):
    ns = main_namespace("import math\nround_it = math.floor\ndef f(x):\n    return round_it(x)\n")
    assert sent(ns["f"], 2.5) == 2
    ns["round_it"] = ns["math"].ceil
    assert sent(ns["f"], 2.5) == 3
    assert sent(ns["f"], 2.5) == 3
    assert len(dill_calls) == 2


def test_a_function_made_again_with_the_same_code_and_values_is_not_pickled_again(dill_calls):
    ns = main_namespace("def make(n):\n    return lambda x: x + n\n")
    assert [sent(ns["make"](5), 1) for _ in range(3)] == [6] * 3  # a new closure each time
    assert [sent(lambda x: x * 2, 3) for _ in range(3)] == [6] * 3  # a lambda written in a loop
    assert len(dill_calls) == 2
    assert sent(ns["make"](7), 1) == 8  # another captured value: pickled, and kept beside the first
    assert sent(ns["make"](5), 1) == 6
    assert len(dill_calls) == 3


CLASS_SOURCE = '''
import math
SCALE = 2
class Base:
    def scale(self):
        return SCALE
class Problem(Base):
    """A __main__ class, as pymoo users subclass its Problem."""
    n_var = 3
    def __init__(self, k):
        self.k = k
    def evaluate(self, x):
        return math.floor(x * self.k * self.scale())
    @property
    def twice(self):
        return 2 * self.k
    @staticmethod
    def unit():
        return 1
    @classmethod
    def make(cls, k):
        return cls(k)
'''


def test_an_unchanged_class_is_pickled_once(dill_calls):
    ns = main_namespace(CLASS_SOURCE)
    for k in range(4):
        obj = loads(dumps(ns["Problem"](k)))
        assert (obj.evaluate(1.5), obj.twice, obj.unit(), obj.make(1).k, obj.n_var) == (3 * k, 2 * k, 1, 1, 3)
    assert len(dill_calls) == 1  # dill takes the base along


def test_a_changed_class_is_sent_again(dill_calls):
    ns = main_namespace(CLASS_SOURCE)
    assert loads(dumps(ns["Problem"](1))).evaluate(2) == 4
    ns["SCALE"] = 10  # a global a method of its base reads
    assert loads(dumps(ns["Problem"](1))).evaluate(2) == 20
    ns["Problem"].n_var = 5  # a class attribute rebound
    assert loads(dumps(ns["Problem"](1))).n_var == 5
    exec("def evaluate(self, x):\n    return -x\n", ns)
    ns["Problem"].evaluate = ns["evaluate"]  # a method replaced
    assert loads(dumps(ns["Problem"](1))).evaluate(2) == -2
    assert loads(dumps(ns["Problem"](1))).evaluate(2) == -2
    assert len(dill_calls) == 4


def test_classes_with_mutable_attributes_are_pickled_every_time(dill_calls):
    ns = main_namespace("class Registry:\n    items = []\n    def count(self):\n        return len(self.items)\n")
    assert loads(dumps(ns["Registry"]())).count() == 0
    ns["Registry"].items.append(1)  # changed in place: no new object to notice
    assert loads(dumps(ns["Registry"]())).count() == 1
    assert len(dill_calls) == 2 and ns["Registry"] not in serialize._BY_VALUE


def test_a_function_using_a_main_class_is_cached_with_it(dill_calls):
    ns = main_namespace(CLASS_SOURCE + "def run(k):\n    return Problem(k).evaluate(1)\n")
    assert [sent(ns["run"], 2) for _ in range(3)] == [4] * 3
    assert len(dill_calls) == 1
    ns["Problem"].scale = lambda self: 100  # the class it reads changed
    assert sent(ns["run"], 2) == 200
