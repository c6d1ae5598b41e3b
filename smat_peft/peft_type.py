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
"""SMAT's peft type and its registration with peft, without forking peft.

peft's `PeftType` is a closed enum, but every dispatch in peft is a dict lookup keyed by `config.peft_type`; a
`str` enum member whose value is `"SMAT"` hashes and compares equal to the string stored in `adapter_config.json`,
so writing it into peft's mapping dicts is enough (the approach suggested in huggingface/peft#2634).
"""

from __future__ import annotations

import enum


class SmatPeftType(str, enum.Enum):
    """The peft type of SMAT adapters (`"SMAT"` in `adapter_config.json`)."""

    SMAT = "SMAT"


PREFIX = "smat_"


def register_with_peft(config_cls: type, model_cls: type) -> None:
    """Register SMAT in peft's type → config / tuner / prefix mappings.

    Idempotent for the same classes; raises if another method already uses the name or the prefix.
    """
    from peft import mapping

    key = SmatPeftType.SMAT
    tables = {
        "config": (mapping.PEFT_TYPE_TO_CONFIG_MAPPING, config_cls),
        "tuner": (mapping.PEFT_TYPE_TO_TUNER_MAPPING, model_cls),
        "prefix": (mapping.PEFT_TYPE_TO_PREFIX_MAPPING, PREFIX),
    }
    for what, (table, value) in tables.items():
        existing = table.get(key)
        if existing is not None and existing is not value and existing != value:
            raise ValueError(f"peft already has a {what} registered for the peft type 'SMAT': {existing!r}.")
    for other_type, other_prefix in mapping.PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if other_prefix == PREFIX and other_type != key:
            raise ValueError(f"The adapter prefix {PREFIX!r} is already used by the peft type {other_type!r}.")
    if model_cls.prefix != PREFIX:
        raise ValueError(f"{model_cls.__name__}.prefix must be {PREFIX!r}, got {model_cls.prefix!r}.")
    for table, value in tables.values():
        table[key] = value
