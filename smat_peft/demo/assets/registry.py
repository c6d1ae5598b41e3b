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
"""The domain registry: name → [`DomainSource`], the recipe that builds one image domain.

Each module of `domains/` describes its domains and calls [`register`] on import; `build.build` looks them up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .dataset_io import Row
from .sources import SourceArchive


@dataclass(frozen=True)
class DomainSource:
    """How to build one domain: what it is, where it comes from, its licence, and its row builder.

    `rows(downloads_dir, progress)` returns the domain's rows, the verified archives it used and the licence files to
    ship with the dataset (`name → bytes`).
    """

    name: str
    title: str
    description: str
    registry: str
    packages: tuple[str, ...]
    license_id: str
    license_text: str
    rows: Callable[[Path, bool], tuple[list[Row], list[SourceArchive], dict[str, bytes]]]
    max_images_per_class: int | None = None
    image_size: str = ""


DOMAIN_SOURCES: dict[str, DomainSource] = {}
"""Every registered domain: name → recipe (`domains.DOMAINS` gives the build order)."""


def register(source: DomainSource) -> DomainSource:
    """Add a domain's recipe to [`DOMAIN_SOURCES`] under its name (a name is registered once)."""
    if source.name in DOMAIN_SOURCES:
        raise ValueError(f"domain {source.name!r} is already registered")
    DOMAIN_SOURCES[source.name] = source
    return source
