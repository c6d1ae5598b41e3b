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
"""What the `meta-train` and `evaluate` commands need besides [`MetaTrainingArguments`]: the model and the data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class ModelArguments:
    """The backbone, and the SMAT adapter to create or load.

    Example:

    ```py
    >>> ModelArguments(model_name_or_path="facebook/dinov2-small", method="pmf").method
    'pmf'
    ```
    """

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Backbone: a local transformers model directory or a Hub id (required)."}
    )
    method: Literal["smat", "pmf", "pretrained"] = field(
        default="smat",
        metadata={"help": "'smat' (sparse interpolated experts), 'pmf' (dense meta-training baseline) or "
                  "'pretrained' (evaluate the frozen backbone)."},
    )
    adapter_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "An existing SMAT adapter to continue training or to evaluate."}
    )
    num_experts: int = field(default=8, metadata={"help": "Experts M of a new SMAT adapter."})
    sparsity: float = field(default=0.9, metadata={"help": "Target sparsity τ of a new SMAT adapter."})
    target_all_parameters: bool = field(
        default=False, metadata={"help": "Adapt every parameter (LayerNorms, embeddings too), as the paper does."}
    )
    smat_config: Optional[str] = field(
        default=None,
        metadata={"help": "A JSON or YAML file of SmatConfig fields for a new adapter (target_modules, "
                  "layers_to_transform, mask_dtype, ...); --num_experts, --sparsity and --target_all_parameters "
                  "override it where given away from their defaults."},
    )

    def __post_init__(self) -> None:
        if self.method not in ("smat", "pmf", "pretrained"):
            raise ValueError(f"`method` must be 'smat', 'pmf' or 'pretrained', got {self.method!r}.")


@dataclass
class DataArguments:
    """Domains as `name=path` pairs; a path is a `save_to_disk` directory or a Hub dataset id."""

    train_datasets: list[str] = field(
        default_factory=list, metadata={"help": "Training domains, e.g. emoji=/data/emoji cards=/data/cards."}
    )
    eval_datasets: list[str] = field(
        default_factory=list, metadata={"help": "Out-of-domain test domains (never trained on), name=path."}
    )


def load_domains(specs: list[str]) -> dict[str, Any]:
    """`["name=path", ...]` → `{name: datasets.Dataset}`; `save_to_disk` directories are memory-mapped."""
    import datasets

    domains = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"Dataset {spec!r} is not of the form name=path (e.g. emoji=/data/emoji).")
        if os.path.isdir(path):
            dataset = datasets.load_from_disk(path)
        else:
            dataset = datasets.load_dataset(path)
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise ValueError(f"Dataset {path!r} has splits {list(dataset)}; save the split to use as one dataset.")
            dataset = dataset["train"]
        domains[name] = dataset
    return domains
