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
"""The asset cache: where built assets live (a finished folder enters it with `atomic_io.staged_folder`).

`$SMAT_PEFT_CACHE` (default `~/.cache/smat_peft`) holds `backbones/<name>/`, `datasets/<domain>-v<FORMAT_VERSION>/`,
`activations/` (the demo's frozen-prefix cache) and, while a build runs, `downloads/<domain>/`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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


def remove_downloads(folder: Path) -> None:
    """Delete a domain's download folder, and the `downloads` folder above it once it is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass
