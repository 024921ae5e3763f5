"""Fault injection for the engine tests, in one place: `WORKBENCH_TEST_DIE_<POINT>=<value>` ends the process
with `os._exit(1)` (as an OOM kill or a lost node would: no cleanup, no exception) when the code passes
`die_for_tests(POINT, value)`. Points: AFTER_EPOCH (epoch N's checkpoint and log row are on disk) and
IN_TEST_SHARD (shard S has written its first chunk of test maps, not its marker)."""

from __future__ import annotations

import os

__all__ = ["die_for_tests"]


def die_for_tests(point: str, value: int) -> None:
    if os.environ.get(f"WORKBENCH_TEST_DIE_{point}") == str(value):
        os._exit(1)
