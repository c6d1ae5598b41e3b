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
"""Crash-safe writes of files and directories, and file checksums: what a reader sees if the process dies.

Every crash-safe write in smat-peft (adapter saves, exports, training checkpoints, the demo's results and caches)
goes through here, with one contract: **a reader, or the next run after a kill at any instant, sees the previous
content or the new one, never a mix**; whatever a killed writer leaves behind is recognisable by its name.

- One file (`atomic_write`, `atomic_write_text`): the content goes to the sibling `<name>.tmp-<pid>`, is synced,
  and replaces `<name>` in one `os.replace`. A kill leaves the old `<name>` and at most a `<name>.tmp-<pid>` of a
  dead process.
- A directory (`staging_directory`, then `commit_directory`): the new files are written into a fresh sibling
  `.<name>.tmp-<pid>-<random>` (same filesystem, so `os.replace` is atomic), then committed in this order:

  1. every staged file and folder is synced;
  2. the journal `<name>/.smat_commit.json` (the staging folder's name and its files) is written atomically and the
     directory synced: from here on the commit counts as done;
  3. each file replaces its previous version with `os.replace`, weights (`.safetensors`, `.bin`) first and
     `COMMITTED_LAST` (peft's adapter config, which points at the weights) last;
  4. the journal is removed, and the staging folder deleted.

  A kill before 2 leaves `<name>` as it was and a stale staging folder; a kill after 2 leaves a journal, and
  `recover_directory` (run by the next commit into `<name>` and by every loader) rolls the move forward; a kill
  during 2 leaves a `.smat_commit.json.tmp-<pid>`, which never counted and is dropped. `remove_stale_temporaries`
  deletes the staging folders of dead processes (a live pid is another writer at work: left alone).
- A cache folder (`staged_folder`): filled in a private sibling `.<name>.<random>` that replaces the whole folder at
  once, without a journal: a cache can be built again, and its manifest's checksums (`folder_checksums`, with
  `file_sha256`) reject a folder that a kill left half removed.

The names on disk are an interface: the trainer's clean-up of its output directory and the Hub upload filter
(`hub.py`) recognise `*.tmp-*` and `.smat_commit.json`, and old output directories must still be recovered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


# ----------------------------------------------------------------------------------------------------------------
# checksums
def file_sha256(path: str, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_checksums(folder: Path) -> dict[str, str]:
    """`{relative path: SHA-256}` of every file under `folder`, in path order (what a manifest records)."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------
# atomic saving
# `commit_directory` moves these last: peft's adapter config, which points at the weights moved before it.
COMMITTED_LAST = "adapter_config.json"


class InterruptedCommitError(ValueError):
    """A commit into a directory that a killed process interrupted cannot be finished (its journal is unreadable or
    names files outside the directory, or the files cannot be moved)."""


def _commit_order(relative_path: str) -> int:
    name = os.path.basename(relative_path)
    if name.endswith((".safetensors", ".bin")):
        return 0  # weights first
    return 2 if name == COMMITTED_LAST else 1  # configs last: a config never points at weights not yet in place


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


JOURNAL_NAME = ".smat_commit.json"
_STAGING_NAME = re.compile(r"^\.(?P<base>.+)\.tmp-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Write the file `path` through `write(tmp)`, which creates the temporary sibling `tmp` (`<path>.tmp-<pid>`);
    `tmp` is then synced and replaces `path` in one `os.replace`: a reader or a crash sees the old file or the new
    one, never a partial write. If `write` raises, `tmp` is removed and `path` is left as it was.

    Example:

    ```py
    >>> from safetensors.torch import save_file
    >>> atomic_write("activations.safetensors", lambda tmp: save_file(tensors, tmp))  # doctest: +SKIP
    ```
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` with [`atomic_write`]."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def recover_directory(target: str) -> bool:
    """Finish a commit into `target` that a killed process left half done; return whether there was one.

    [`commit_directory`] writes a journal (`.smat_commit.json`: the staging directory and its files) into `target`
    before it moves the first file and removes it after the last, so a journal on disk means "the staging directory
    is complete, roll forward": the files still in staging are moved into place. Run by every save into `target` and
    by every SMAT loader before it checks `target`.
    """
    journal = os.path.join(target, JOURNAL_NAME)
    if os.path.isdir(target):  # a journal that a kill left half written never counted: drop it
        for name in os.listdir(target):
            pid = name[len(JOURNAL_NAME) + len(".tmp-"):]
            if name.startswith(f"{JOURNAL_NAME}.tmp-") and pid.isdigit() and not process_alive(int(pid)):
                try:
                    os.remove(os.path.join(target, name))
                except OSError:
                    pass
    if not os.path.isfile(journal):
        return False
    try:
        with open(journal, encoding="utf-8") as f:
            record = json.load(f)
        staging_name, files = record["staging"], list(record["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InterruptedCommitError(
            f"{journal} records an interrupted save but cannot be read ({error}). Save the adapter again."
        ) from None
    safe = isinstance(staging_name, str) and _STAGING_NAME.match(staging_name) and all(
        isinstance(rel, str) and not os.path.isabs(rel) and ".." not in rel.replace("\\", "/").split("/")
        for rel in files
    )
    if not safe:
        raise InterruptedCommitError(f"{journal} names files outside the adapter directory; delete it and save again.")
    staging = os.path.join(os.path.dirname(os.path.realpath(target)), staging_name)
    try:
        for rel in files:
            source = os.path.join(staging, rel)
            if os.path.isfile(source):
                os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
                os.replace(source, os.path.join(target, rel))
        _fsync(target)
        os.remove(journal)
        _fsync(target)
    except OSError as error:
        raise InterruptedCommitError(
            f"A save into {target} was interrupted and cannot be completed here ({error}): the complete new files "
            f"are in {staging}. Run the load once with write access to {target}, or save the adapter again."
        ) from None
    shutil.rmtree(staging, ignore_errors=True)
    return True


def commit_directory(staging: str, target: str) -> list[str]:
    """Move every file of `staging` into `target` (same relative paths), so that a kill at any instant leaves
    either the previous files or the new ones loadable; returns the relative paths moved.

    The files are made durable, then a journal naming `staging` and its files is written into `target` (one atomic
    `os.replace`): from that instant the save counts as done, and [`recover_directory`] (run by the next save and by
    every SMAT loader) finishes a move that a kill interrupted. Then each file replaces its previous version with
    `os.replace` (weights first, configs last), the journal is removed and `staging` deleted. Other files in
    `target` are left alone. `staging` must be a sibling of `target` made by [`staging_directory`].
    """
    target = os.path.realpath(target)
    files = []
    for root, _, names in os.walk(staging):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), staging))
    files.sort(key=lambda rel: (_commit_order(rel), rel))
    os.makedirs(target, exist_ok=True)
    recover_directory(target)
    for rel in files:
        _fsync(os.path.join(staging, rel))
    for root, _, _ in os.walk(staging):
        _fsync(root)
    journal = os.path.join(target, JOURNAL_NAME)
    atomic_write_text(journal, json.dumps({"staging": os.path.basename(os.path.normpath(staging)), "files": files}))
    _fsync(target)
    for rel in files:
        destination = os.path.join(target, rel)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.replace(os.path.join(staging, rel), destination)
    _fsync(target)
    os.remove(journal)
    _fsync(target)
    shutil.rmtree(staging, ignore_errors=True)
    return files


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a temporary named after a dead one is stale)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, AttributeError):
        return True
    return True


def remove_stale_temporaries(target: str) -> list[str]:
    """Delete the staging directories that killed saves into `target` left beside it; return their paths.

    A staging directory `.<name>.tmp-<pid>-<random>` is stale when process `<pid>` no longer runs and no journal in
    `target` still needs it (see [`recover_directory`]).
    """
    target = os.path.realpath(target)
    parent, base = os.path.dirname(target), os.path.basename(target)
    if os.path.isdir(target):
        recover_directory(target)
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = _STAGING_NAME.match(name)
        if match and match.group("base") == base and not process_alive(int(match.group("pid"))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
    return removed


def discard_staging(staging: str, target: str) -> None:
    """Delete `staging` after a failed or finished save, unless a journal in `target` still needs its files."""
    journal = os.path.join(os.path.realpath(target), JOURNAL_NAME)
    if os.path.isfile(journal):
        try:
            with open(journal, encoding="utf-8") as f:
                if json.load(f).get("staging") == os.path.basename(os.path.normpath(staging)):
                    return
        except (OSError, ValueError, AttributeError):
            return
    shutil.rmtree(staging, ignore_errors=True)


def staging_directory(target: str) -> str:
    """A new empty temporary directory next to `target` (same filesystem, so `os.replace` is atomic), after
    finishing an interrupted commit into `target` and removing stale temporaries of killed saves."""
    target = os.path.realpath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(target)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-{os.getpid()}-", dir=parent)


# ----------------------------------------------------------------------------------------------------------------
# a whole folder, replaced at once (caches)
def _make_readable(folder: Path) -> None:
    """Give a finished temporary folder (created private by `mkdtemp`) the usual permissions under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A private temporary sibling of `target` to fill; when the block ends it is made readable and replaces
    `target` in one `os.replace` (a reader sees the old folder or the new one, never half of one); if the block
    raises, it is removed and `target` is left as it was.

    For caches (the demo assets), not for what must stay loadable: unlike [`commit_directory`] it replaces the whole
    folder (files only the old one had are gone) and keeps no journal, because a cache can always be built again: a
    kill while the old folder is being removed leaves part of it, which the cache's loaders reject through the
    checksums of its manifest (see `folder_checksums`), and a kill before the rename leaves no folder (built again).
    Its temporary is `.<name>.<random>`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        _make_readable(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
