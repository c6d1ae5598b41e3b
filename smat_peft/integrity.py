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
"""Integrity of saved SMAT adapters: checks before loading, checksums, and atomic saves.

Loading checks (`check_adapter`, run by `SmatConfig.from_pretrained`, i.e. inside `PeftModel.from_pretrained` and
`load_adapter` before the base model is touched, and by `smat_peft.load_compact`) turn every broken adapter into one
`AdapterIntegrityError` that names the file and says what to do, instead of a deep torch/safetensors trace or a
half-loaded model:

- `adapter_config.json` or the weights file missing (`AdapterFileNotFoundError`, also a `FileNotFoundError`);
- `adapter_config.json` that is not JSON, or was written in a newer `smat_format_version` than this release reads;
- a safetensors file that is truncated or corrupted: the 8-byte header length, the JSON header and the size of the
  data section are checked against each other (safetensors' own error does not name the file);
- a weights file whose SHA-256 differs from the `weights_sha256` recorded in `adapter_config.json` at save time
  (this catches corruption that keeps the file's size, and a save interrupted between its two files).

Saving (`install_atomic_save`, run on `import smat_peft`): `PeftModel.save_pretrained` of SMAT adapters writes into
a temporary sibling directory, records each weights file's SHA-256 in its config, then moves each file into place
with `os.replace` (weights first, config last). A save that fails half-way leaves the previous adapter untouched.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
from typing import Any, Optional

from huggingface_hub import hf_hub_download


CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
COMPACT_WEIGHTS_NAME = "smat_compact.safetensors"
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors refuses headers above 100 MB
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_REFETCH = "Save the adapter again, or download it again"


class AdapterIntegrityError(ValueError):
    """A saved SMAT adapter is missing a file, is corrupted, or cannot be read by this version of smat-peft."""


class AdapterFileNotFoundError(AdapterIntegrityError, FileNotFoundError):
    """A file a SMAT adapter needs (`adapter_config.json`, the weights) does not exist."""


# ----------------------------------------------------------------------------------------------------------------
# files
def file_sha256(path: str, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_adapter_config(path: str) -> dict[str, Any]:
    """Read an `adapter_config.json` as a dict, checking that it is a SMAT config this release can read.

    Raises:
        `AdapterFileNotFoundError` if the file is missing, `AdapterIntegrityError` if it is not a JSON object, not a
        SMAT config, or written in a newer `smat_format_version`.
    """
    from . import __version__
    from .config import SMAT_FORMAT_VERSION

    if not os.path.isfile(path):
        raise AdapterFileNotFoundError(
            f"{path} does not exist: a saved SMAT adapter is a directory holding {CONFIG_NAME} and its weights. "
            "Point to that directory (or save the adapter with `model.save_pretrained(directory)`)."
        )
    try:
        with open(path, encoding="utf-8") as f:
            attributes = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterIntegrityError(f"{path} is not valid JSON ({error}): the file is corrupted. {_REFETCH}.") from None
    if not isinstance(attributes, dict):
        raise AdapterIntegrityError(f"{path} must hold a JSON object, got {type(attributes).__name__}. {_REFETCH}.")
    if attributes.get("peft_type") != "SMAT":
        raise AdapterIntegrityError(
            f"{path} describes a {attributes.get('peft_type')!r} adapter, not a SMAT adapter; load it with peft's own "
            "classes (e.g. `PeftModel.from_pretrained`)."
        )
    version = attributes.get("smat_format_version", 1)
    if not isinstance(version, int) or version < 1:
        raise AdapterIntegrityError(f"{path}: `smat_format_version` must be a positive int, got {version!r}.")
    if version > SMAT_FORMAT_VERSION:
        raise AdapterIntegrityError(
            f"{path} was written in SMAT adapter format version {version}, but smat-peft {__version__} reads "
            f"versions up to {SMAT_FORMAT_VERSION}. Upgrade smat-peft (`pip install -U smat-peft`) to load it."
        )
    return attributes


def check_safetensors(path: str) -> dict[str, Any]:
    """Check that `path` is a complete safetensors file; return its header (tensor name → dtype, shape, offsets).

    Reads only the header: its length field, its JSON, and that every tensor's byte range fits its dtype and shape
    and the data section has exactly the size the header describes (so a truncated file is caught). Corruption that
    keeps the size needs the checksum (`weights_sha256`).

    Example:

    ```py
    >>> header = check_safetensors("adapter/adapter_model.safetensors")  # doctest: +SKIP
    ```
    """
    if not os.path.isfile(path):
        raise AdapterFileNotFoundError(f"{path} does not exist. {_REFETCH}.")
    size = os.path.getsize(path)
    broken = f"Corrupted SMAT adapter weights {path}"
    if size < 8:
        raise AdapterIntegrityError(
            f"{broken}: the file has {size} bytes, fewer than its 8-byte header length. {_REFETCH}."
        )
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        if header_size > min(size - 8, _HEADER_LIMIT):
            raise AdapterIntegrityError(
                f"{broken}: the header length field says {header_size} bytes but the file holds {size - 8} after it: "
                f"the file is truncated or not a safetensors file. {_REFETCH}."
            )
        raw = f.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterIntegrityError(f"{broken}: the header is not valid JSON. {_REFETCH}.") from None
    if not isinstance(header, dict):
        raise AdapterIntegrityError(f"{broken}: the header is not a JSON object. {_REFETCH}.")
    data_size = size - 8 - header_size
    described = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            numel = 1
            for dim in shape:
                numel *= int(dim)
            valid = 0 <= begin <= end and (dtype not in _DTYPE_SIZES or end - begin == numel * _DTYPE_SIZES[dtype])
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise AdapterIntegrityError(
                f"{broken}: the header entry of tensor {name!r} is invalid ({info!r}). {_REFETCH}."
            )
        described = max(described, end)
    if described != data_size:
        what = "truncated" if data_size < described else "longer than its header describes"
        raise AdapterIntegrityError(
            f"{broken}: the header describes {described} bytes of tensor data but the file holds {data_size}: the file "
            f"is {what}. {_REFETCH}."
        )
    return header


def check_weights_checksum(path: str, expected: Optional[str], config_path: str) -> None:
    """Compare a weights file's SHA-256 with the one recorded in its config (no-op when none was recorded)."""
    if not expected:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise AdapterIntegrityError(
            f"Corrupted SMAT adapter weights {path}: its SHA-256 is {actual}, but {config_path} records {expected}. "
            f"The file changed after it was saved (corruption, an interrupted copy, or an edit). {_REFETCH}; if you "
            f"changed the weights on purpose, delete `weights_sha256` from {config_path}."
        )


def check_adapter_dir(directory: str, allow_compact: bool = False) -> dict[str, Any]:
    """Check a local SMAT adapter directory before loading it; return its config as a dict.

    Args:
        directory (`str`): The directory `save_pretrained` (or `export_compact`) wrote.
        allow_compact (`bool`): Accept a compact inference export (checked as such); otherwise a compact export
            raises an error pointing to `smat_peft.load_compact`.

    Example:

    ```py
    >>> from smat_peft.integrity import check_adapter_dir
    >>> attributes = check_adapter_dir("path/to/adapter")  # doctest: +SKIP
    >>> attributes["num_experts"]  # doctest: +SKIP
    8
    ```
    """
    if not os.path.isdir(directory):
        kind = "a file" if os.path.exists(directory) else "missing"
        raise AdapterFileNotFoundError(
            f"SMAT adapter directory {directory} is {kind}: pass the directory that `save_pretrained` wrote."
        )
    recover_directory(directory)  # finish a save that a kill interrupted after it was complete
    config_path = os.path.join(directory, CONFIG_NAME)
    attributes = read_adapter_config(config_path)
    compact = attributes.get("compact")
    if compact and not allow_compact:
        raise AdapterIntegrityError(
            f"{directory} holds a compact SMAT export for inference ({COMPACT_WEIGHTS_NAME}), not a trainable "
            "adapter: load it with `smat_peft.load_compact(base_model, directory)`."
        )
    weights = _weights_file(directory, compact=bool(compact))
    if weights is None:
        expected = COMPACT_WEIGHTS_NAME if compact else SAFETENSORS_NAME
        raise AdapterFileNotFoundError(
            f"SMAT adapter weights are missing: {os.path.join(directory, expected)} does not exist (the directory has "
            f"{CONFIG_NAME} but no weights file). {_REFETCH}."
        )
    if weights.endswith(".safetensors"):
        check_safetensors(weights)
    check_weights_checksum(weights, attributes.get("weights_sha256"), config_path)
    return attributes


def _weights_file(directory: str, compact: bool) -> Optional[str]:
    names = (COMPACT_WEIGHTS_NAME,) if compact else (SAFETENSORS_NAME, PICKLE_NAME)
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    accepted = inspect.signature(hf_hub_download).parameters
    return {k: v for k, v in kwargs.items() if k in accepted and k not in ("repo_id", "filename", "subfolder")}


def download_adapter_file(repo_id: str, filename: str, subfolder: Optional[str] = None, **kwargs: Any) -> Optional[str]:
    """Download one file of a Hub adapter into the cache and return its local path, or `None` if the repo has no
    such file. Other failures (offline, no access) propagate as `huggingface_hub` errors; keyword arguments that
    `hf_hub_download` does not take are ignored.
    """
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, subfolder=subfolder, **_hub_kwargs(kwargs))
    except RemoteEntryNotFoundError:
        return None


def check_adapter(pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs: Any) -> None:
    """Check a SMAT adapter given as a local directory or a Hub repo id (what `from_pretrained` accepts).

    A local directory is checked in full (`check_adapter_dir`). For a Hub repo id the files are downloaded into the
    cache (as `from_pretrained` would; `revision`, `token`, `cache_dir`, ... are passed on) and checked the same way;
    when the download itself fails (offline, no access, no such repo), the check is skipped and peft reports the
    failure.

    Raises:
        AdapterIntegrityError: (or its subclass `AdapterFileNotFoundError`) naming the file and the problem.

    Example:

    ```py
    >>> from smat_peft.integrity import check_adapter
    >>> check_adapter("user/smat-vit", revision="v1")  # doctest: +SKIP
    ```
    """
    path = os.fspath(pretrained_model_name_or_path)
    local = os.path.join(path, subfolder) if subfolder else path
    if os.path.exists(local):
        check_adapter_dir(local)
        return
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1:
        raise AdapterFileNotFoundError(f"SMAT adapter directory {local} does not exist.")
    try:
        config_path = download_adapter_file(path, CONFIG_NAME, subfolder=subfolder, **kwargs)
        if config_path is None:
            return
        attributes = read_adapter_config(config_path)
        where = f"Hub repo {path}" + (f" (subfolder {subfolder})" if subfolder else "")
        if attributes.get("compact"):
            raise AdapterIntegrityError(
                f"{where} holds a compact SMAT export for inference, not a trainable adapter: load it with "
                "`smat_peft.load_compact(base_model, repo_id)`."
            )
        weights = download_adapter_file(path, SAFETENSORS_NAME, subfolder=subfolder, **kwargs)
        weights = weights or download_adapter_file(path, PICKLE_NAME, subfolder=subfolder, **kwargs)
    except AdapterIntegrityError:
        raise
    except Exception:  # noqa: BLE001 - unreachable Hub or no such repo: peft's own loading reports it
        return
    if weights is None:
        raise AdapterFileNotFoundError(
            f"SMAT adapter weights are missing: {where} has {CONFIG_NAME} but no {SAFETENSORS_NAME}. Push the "
            "adapter again (e.g. `smat-peft push ADAPTER_DIR REPO_ID`)."
        )
    if weights.endswith(".safetensors"):
        check_safetensors(weights)
    check_weights_checksum(weights, attributes.get("weights_sha256"), f"{CONFIG_NAME} of {where}")


# ----------------------------------------------------------------------------------------------------------------
# atomic saving
def _commit_order(relative_path: str) -> int:
    name = os.path.basename(relative_path)
    if name.endswith((".safetensors", ".bin")):
        return 0  # weights first
    return 2 if name == CONFIG_NAME else 1  # configs last: a config never points at weights not yet in place


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


def _write_json_durably(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(value))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recover_directory(target: str) -> bool:
    """Finish a commit into `target` that a killed process left half done; return whether there was one.

    [`commit_directory`] writes a journal (`.smat_commit.json`: the staging directory and its files) into `target`
    before it moves the first file and removes it after the last, so a journal on disk means "the staging directory
    is complete, roll forward": the files still in staging are moved into place. Run by every save into `target` and
    by every SMAT loader before it checks `target`.
    """
    journal = os.path.join(target, JOURNAL_NAME)
    if not os.path.isfile(journal):
        return False
    try:
        with open(journal, encoding="utf-8") as f:
            record = json.load(f)
        staging_name, files = record["staging"], list(record["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AdapterIntegrityError(
            f"{journal} records an interrupted save but cannot be read ({error}). Save the adapter again."
        ) from None
    safe = isinstance(staging_name, str) and _STAGING_NAME.match(staging_name) and all(
        isinstance(rel, str) and not os.path.isabs(rel) and ".." not in rel.replace("\\", "/").split("/")
        for rel in files
    )
    if not safe:
        raise AdapterIntegrityError(f"{journal} names files outside the adapter directory; delete it and save again.")
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
        raise AdapterIntegrityError(
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
    _write_json_durably(journal, {"staging": os.path.basename(os.path.normpath(staging)), "files": files})
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


def _pid_alive(pid: int) -> bool:
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
        if match and match.group("base") == base and not _pid_alive(int(match.group("pid"))):
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


def record_weights_checksum(directory: str) -> Optional[str]:
    """Write the SHA-256 of the weights file of `directory` into its `adapter_config.json`; return it."""
    config_path = os.path.join(directory, CONFIG_NAME)
    weights = _weights_file(directory, compact=False) or _weights_file(directory, compact=True)
    if weights is None or not os.path.isfile(config_path):
        return None
    with open(config_path, encoding="utf-8") as f:
        attributes = json.load(f)
    attributes["weights_sha256"] = file_sha256(weights)
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(attributes, indent=2, sort_keys=True))
    return attributes["weights_sha256"]


def install_atomic_save() -> None:
    """Make `PeftModel.save_pretrained` atomic and checksummed for models whose saved adapters are all SMAT.

    The adapters are saved by peft into a temporary sibling directory (an existing README.md is copied in first, so
    peft updates it as usual); each weights file's SHA-256 is recorded in its `adapter_config.json`; then the files
    are moved into `save_directory` with `os.replace`, weights first and configs last. If anything fails before the
    move, `save_directory` is untouched; a process killed mid-save may leave a `.<name>.tmp-*` directory behind,
    which is safe to delete. Other peft methods, `is_main_process=False` and non-directory targets go straight to
    peft. Run on `import smat_peft`.

    Example:

    ```py
    >>> import smat_peft  # installs it
    >>> model.save_pretrained("adapter")  # doctest: +SKIP
    ```
    """
    from peft import PeftModel

    from .config import SmatConfig

    original = PeftModel.save_pretrained
    if getattr(original, "_smat_atomic", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def save_pretrained(self, save_directory: str, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, save_directory, *args, **kwargs)
        bound.apply_defaults()
        configs = getattr(self, "peft_config", {})
        selected = bound.arguments.get("selected_adapters") or list(configs)
        atomic = (
            bool(selected)
            and all(isinstance(configs.get(name), SmatConfig) for name in selected)
            and bound.arguments.get("is_main_process", True)
            and not os.path.isfile(save_directory)
        )
        if not atomic:
            return original(self, save_directory, *args, **kwargs)
        target = os.path.realpath(os.fspath(save_directory))
        staging = staging_directory(target)
        try:
            readme = os.path.join(target, "README.md")
            if os.path.isfile(readme):
                shutil.copy2(readme, os.path.join(staging, "README.md"))
            original(self, staging, *args, **kwargs)
            for name in selected:
                record_weights_checksum(staging if name == "default" else os.path.join(staging, name))
            commit_directory(staging, target)
        finally:
            discard_staging(staging, target)

    save_pretrained._smat_atomic = True
    PeftModel.save_pretrained = save_pretrained
