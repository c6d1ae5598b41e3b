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
"""The package's format constants: its version, the on-disk adapter format version and the storage dtypes.

A leaf module (it imports only torch), so every other module can read these without importing upward.

Example:

```py
>>> from smat_peft.constants import DTYPES, SMAT_FORMAT_VERSION
>>> sorted(DTYPES), SMAT_FORMAT_VERSION
(['bfloat16', 'float16', 'float32'], 1)
```
"""

import torch


__version__ = "0.1.0"

# Version of the on-disk adapter format this release writes and the newest it reads (`smat_format_version`).
SMAT_FORMAT_VERSION = 1

# The storage dtypes a setting may name (`SmatConfig.mask_dtype`, the compact export's `delta_dtype`).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
