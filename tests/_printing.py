"""Tasks that print, for tests/integration/test_output.py (importable by the engines)."""

from __future__ import annotations

import logging
import os
import sys
import time


def say(x):
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x


def lines(task, n):
    for j in range(n):
        print(f"t{task} {j}")
    return task


def log_at_levels(x):
    logging.getLogger("user.code").info("info %s", x)
    logging.getLogger("user.code").warning("warning %s", x)
    return x


def shout(n_bytes):
    sys.stdout.write("x" * n_bytes + "\n")
    return n_bytes


def no_newline(x):
    print(f"partial {x}", end="")
    return x


def print_then_sleep(text, seconds):
    print(text, flush=True)
    time.sleep(seconds)
    return text


def print_then_die(text):
    print(text)
    print(f"{text} on stderr", file=sys.stderr)
    os._exit(7)


def below_python(text):
    os.write(1, f"{text}\n".encode())
    return text
