"""``python -m zpool``: the ``zpool`` command (:mod:`zpool.cli`)."""

from __future__ import annotations

import sys

from zpool.cli import main

if __name__ == "__main__":
    sys.exit(main())
