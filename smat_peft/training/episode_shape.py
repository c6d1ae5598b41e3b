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
"""`EpisodeShape`: how many classes and images an episode holds, declared once.

[`EpisodeSampler`] takes one; [`MetaTrainingArguments`] has the same values as flat command-line flags and gives
them as `args.episode_shape`. A leaf module (no torch), so the arguments can read its defaults and help strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpisodeShape:
    """The shape of few-shot episodes: fixed N-way K-shot, or Meta-Dataset's variable-way variable-shot.

    Fixed episodes use `ways`, `shots` and `queries`; variable ones (`variable=True`) use `ways` as the least number
    of ways and the `max_*` caps (the sampling rules are in the docstring of `smat_peft.training.episodes`).

    Args:
        ways (`int`): Classes per episode; for variable episodes, the least number of ways (Meta-Dataset: 5).
        shots (`int`): Support images per class (fixed episodes).
        queries (`int`): Query images per class (fixed episodes).
        variable (`bool`): Meta-Dataset's variable-way variable-shot episodes instead of fixed N-way K-shot.
        max_ways (`int`): Largest number of ways of variable episodes.
        max_support (`int`): Largest support set of variable episodes.
        max_support_per_class (`int`): Largest number of support images of one class in variable episodes.
        max_queries (`int`): Largest number of queries per class of variable episodes.

    Example:

    ```py
    >>> EpisodeShape(ways=5, shots=1, queries=15).to_dict()
    {'ways': 5, 'shots': 1, 'queries': 15}
    >>> EpisodeShape(variable=True, max_ways=10).max_ways
    10
    >>> EpisodeShape(variable=True, ways=5, max_ways=3)
    Traceback (most recent call last):
    ...
    ValueError: Variable episodes draw between `ways`=5 and `max_ways`=3 classes: raise `max_ways` or lower `ways`.
    ```
    """

    ways: int = field(
        default=5,
        metadata={"help": "Classes per episode; for variable episodes, the least number of ways (Meta-Dataset: 5)."},
    )
    shots: int = field(default=5, metadata={"help": "Support images per class (fixed-shot episodes)."})
    queries: int = field(default=15, metadata={"help": "Query images per class (fixed-shot episodes)."})
    variable: bool = field(
        default=False,
        metadata={"help": "Meta-Dataset's variable-way variable-shot episodes instead of fixed N-way K-shot."},
    )
    max_ways: int = field(default=50, metadata={"help": "Largest number of ways of variable episodes."})
    max_support: int = field(default=500, metadata={"help": "Largest support set of variable episodes."})
    max_support_per_class: int = field(
        default=100, metadata={"help": "Largest number of support images of one class in variable episodes."}
    )
    max_queries: int = field(default=10, metadata={"help": "Largest number of queries per class of variable episodes."})

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name == "variable":
                object.__setattr__(self, spec.name, bool(value))
            elif int(value) < 1:
                raise ValueError(f"`{spec.name}` must be a positive integer, got {value}.")
            else:
                object.__setattr__(self, spec.name, int(value))
        if self.variable and self.max_ways < self.ways:
            raise ValueError(
                f"Variable episodes draw between `ways`={self.ways} and `max_ways`={self.max_ways} classes: raise "
                "`max_ways` or lower `ways`."
            )

    def to_dict(self) -> dict[str, Any]:
        """The values the episodes depend on: `ways`, `shots`, `queries` of fixed episodes; `variable=True`, `ways`
        and the `max_*` caps of variable ones."""
        values = dataclasses.asdict(self)
        if not self.variable:
            return {name: values[name] for name in ("ways", "shots", "queries")}
        return {"variable": True, **{k: v for k, v in values.items() if k not in ("variable", "shots", "queries")}}
