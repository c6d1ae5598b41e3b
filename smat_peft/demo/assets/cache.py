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
"""The asset cache: where built assets live, and how a finished folder and its checksums enter it.

`$SMAT_PEFT_CACHE` (default `~/.cache/smat_peft`) holds `backbones/<name>/`, `datasets/<domain>-v<FORMAT_VERSION>/`,
`activations/` (the demo's frozen-prefix cache) and, while a build runs, `downloads/<domain>/`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...atomic_io import file_sha256 as sha256_file  # the package's one file hash, re-exported for the assets


CACHE_ENV: str = "SMAT_PEFT_CACHE"
"""Environment variable naming the cache directory (default `~/.cache/smat_peft`)."""


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache directory of the demo assets: `cache` when given, else `$SMAT_PEFT_CACHE`, else
    `~/.cache/smat_peft` (created if missing).

    Example:
        >>> import os
        >>> os.environ["SMAT_PEFT_CACHE"] = "/tmp/smat_cache"
        >>> str(cache_dir())
        '/tmp/smat_cache'
        >>> str(cache_dir("/tmp/other_cache"))
        '/tmp/other_cache'
    """
    if cache is None:
        root = os.environ.get(CACHE_ENV)
        path = Path(root).expanduser() if root else Path.home() / ".cache" / "smat_peft"
    else:
        path = Path(cache).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_readable(folder: Path) -> None:
    """Give a finished temporary folder (created private by `mkdtemp`) the usual permissions under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def folder_checksums(folder: Path) -> dict[str, str]:
    """`{relative path: SHA-256}` of every file under `folder`, in path order (what a manifest records)."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A private temporary sibling of `target` to fill; when the block ends it is made readable and replaces
    `target` in one `os.replace` (a reader sees the old folder or the new one, never half of one); if the block
    raises, it is removed and `target` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        make_readable(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_downloads(folder: Path) -> None:
    """Delete a domain's download folder, and the `downloads` folder above it once it is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass
