# Copyright 2026-present the smat-peft authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The parallel map of the domain recipes (rendering is CPU-bound): worker processes with a progress bar."""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm.auto import tqdm


def workers() -> int:
    """How many worker processes: `$SMAT_PEFT_ASSET_WORKERS`, else `min(8, cpu_count)`."""
    env = os.environ.get("SMAT_PEFT_ASSET_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *, desc: str, progress: bool) -> list[Any]:
    """`[fn(x) for x in items]` over worker processes (fork where available), with a progress bar."""
    count = min(workers(), len(items))
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    try:
        if count <= 1:
            out = []
            for item in items:
                out.append(fn(item))
                bar.update()
            return out
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
            out = []
            for result in pool.map(fn, items, chunksize=1):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()


def parallel_concat(fn: Callable[[Any], Sequence[Any]], items: Sequence[Any], *, desc: str, progress: bool) -> list[Any]:
    """The concatenation, in order, of the lists `fn(x)` for `x` in `items` ([`parallel_map`]): a recipe's rows."""
    return [row for part in parallel_map(fn, items, desc=desc, progress=progress) for row in part]


def chunks(items: Sequence[Any], count: int) -> list[list[Any]]:
    """`items` split into about `count` consecutive lists (fewer, larger jobs for the worker processes)."""
    size = max(1, math.ceil(len(items) / max(1, count)))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
