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
"""The image domains, one module per family; importing this package registers them all.

To add a domain: write its recipe (a `registry.DomainSource` whose `rows(downloads_dir, progress)` returns the rows,
the verified archives and the licence files), `register` it at the end of its family's module, import that module
here and add its name to [`DOMAINS`]. Each saved domain is a memory-mapped `datasets.Dataset` with the columns
`image`, `label` (`ClassLabel`), `class_name`, `domain` and `instance` (what varies inside a class).
"""

from __future__ import annotations

from . import cards, clipart, emoji, glyphs, icons, mnist  # noqa: F401  (importing a family registers its domains)


DOMAINS: tuple[str, ...] = (
    "emoji_google",
    "emoji_twitter",
    "mnist",
    "animal_mnist",
    "glyphs",
    "cards",
    "icons",
    "clipart",
)
"""All image domains, in build order (each registered in `registry.DOMAIN_SOURCES` by its family's module)."""
