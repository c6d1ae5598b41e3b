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

Loading checks (`check_adapter`, run from peft's `PeftConfig._get_peft_type`, the first thing
`PeftModel.from_pretrained` and `load_adapter` read, so before the base model is touched, and by
`smat_peft.load_compact`) turn every broken adapter into one `AdapterIntegrityError` that names the file and says
what to do, instead of a deep torch/safetensors trace or a half-loaded model:

- `adapter_config.json` or the weights file missing (`AdapterFileNotFoundError`, also a `FileNotFoundError`);
- `adapter_config.json` that is not JSON, or was written in a newer `smat_format_version` than this release reads;
- a safetensors file that is truncated or corrupted: the 8-byte header length, the JSON header and the size of the
  data section are checked against each other (safetensors' own error does not name the file);
- a weights file whose SHA-256 differs from the `weights_sha256` recorded in `adapter_config.json` at save time
  (this catches corruption that keeps the file's size);
- weights that disagree with the config (`num_experts`), a `peft_type` relabelled away from SMAT, and (after
  loading, rolled back on failure) base weights other than the ones recorded in `base_weights_fingerprint`
  (`install_checked_load`).

Saving (`install_atomic_save`, run on `import smat_peft`): `PeftModel.save_pretrained` of SMAT adapters writes into
a temporary sibling directory, records each weights file's SHA-256 and the base-weights fingerprint in its config,
then commits it with a journal (`commit_directory`): a kill at any instant leaves the previous or the new adapter
loadable, and the next save or load finishes an interrupted commit and removes stale temporaries.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
from typing import Any, Optional

from huggingface_hub import hf_hub_download

from .atomic_io import (
    InterruptedCommitError,
    commit_directory,
    discard_staging,
    file_sha256,
    recover_directory,
    staging_directory,
)
from .constants import SMAT_FORMAT_VERSION, __version__


CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
COMPACT_WEIGHTS_NAME = "smat_compact.safetensors"
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors refuses headers above 100 MB
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "F8_E8M0": 1, "C64": 8,
}
_REFETCH = "Save the adapter again, or download it again"


class AdapterIntegrityError(ValueError):
    """A saved SMAT adapter is missing a file, is corrupted, or cannot be read by this version of smat-peft."""


class AdapterFileNotFoundError(AdapterIntegrityError, FileNotFoundError):
    """A file a SMAT adapter needs (`adapter_config.json`, the weights) does not exist."""


# ----------------------------------------------------------------------------------------------------------------
# files
def read_adapter_config(path: str) -> dict[str, Any]:
    """Read an `adapter_config.json` as a dict, checking that it is a SMAT config this release can read.

    Raises:
        `AdapterFileNotFoundError` if the file is missing, `AdapterIntegrityError` if it is not a JSON object, not a
        SMAT config, or written in a newer `smat_format_version`.
    """
    if not os.path.isfile(path):
        raise AdapterFileNotFoundError(
            f"{path} does not exist: a saved SMAT adapter is a directory holding {CONFIG_NAME} and its weights. "
            "Point to that directory (or save the adapter with `model.save_pretrained(directory)`)."
        )
    attributes = _read_json_object(path)
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
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            numel = 1
            for dim in shape:
                numel *= int(dim)
            known = dtype in _DTYPE_SIZES
            valid = known and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
            valid = valid and end - begin == numel * _DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            known, valid = True, False
        if not known:
            raise AdapterIntegrityError(
                f"{broken}: tensor {name!r} has the unknown dtype {dtype!r} (known: {', '.join(_DTYPE_SIZES)}). The "
                f"file is corrupted or was written by a newer safetensors. {_REFETCH}."
            )
        if not valid:
            raise AdapterIntegrityError(
                f"{broken}: the header entry of tensor {name!r} is invalid ({info!r}). {_REFETCH}."
            )
        ranges.append((begin, end, name))
        described = max(described, end)
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise AdapterIntegrityError(
                f"{broken}: the byte range [{begin}, {end}) of tensor {name!r} {what} (expected it to start at "
                f"{position}). {_REFETCH}."
            )
        position = end
    if described != data_size:
        what = "truncated" if data_size < described else "longer than its header describes"
        raise AdapterIntegrityError(
            f"{broken}: the header describes {described} bytes of tensor data but the file holds {data_size}: the file "
            f"is {what}. {_REFETCH}."
        )
    return header


def check_weights_match_config(
    header: dict[str, Any], attributes: dict[str, Any], weights: str, config_path: str
) -> None:
    """Check that the weights file holds as many experts as its config says (an edited `num_experts` would
    otherwise fail deep inside torch, after the base model was modified)."""
    experts = attributes.get("num_experts")
    for name, info in header.items():
        if ".smat_log_alpha." not in name or not isinstance(info, dict):
            continue
        shape = info.get("shape") or [None]
        if shape[0] != experts:
            raise AdapterIntegrityError(
                f"{config_path} says num_experts={experts!r}, but {weights} holds {shape[0]} experts ({name} has shape "
                f"{shape}): the config was edited or belongs to other weights. Set num_experts to {shape[0]} again, "
                "or save the adapter again."
            )


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
    recover_adapter_directory(directory)
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
        header = check_safetensors(weights)
        if not compact:
            check_weights_match_config(header, attributes, weights, config_path)
    check_weights_checksum(weights, attributes.get("weights_sha256"), config_path)
    return attributes


def recover_adapter_directory(directory: str) -> None:
    """Finish a save into an adapter directory that a kill interrupted after it was complete
    ([`recover_directory`]); one that cannot be finished raises `AdapterIntegrityError`."""
    try:
        recover_directory(directory)
    except InterruptedCommitError as error:
        raise AdapterIntegrityError(str(error)) from None


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
        check_weights_match_config(check_safetensors(weights), attributes, weights, f"{CONFIG_NAME} of {where}")
    check_weights_checksum(weights, attributes.get("weights_sha256"), f"{CONFIG_NAME} of {where}")


# ----------------------------------------------------------------------------------------------------------------
# atomic saving
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
    peft updates it as usual); each weights file's SHA-256 and the base-weights fingerprint are recorded in its
    `adapter_config.json`; then the directory is committed into `save_directory` by [`commit_directory`] (journal,
    then `os.replace` of each file). A kill at any instant leaves the previous or the new adapter loadable; the next
    save removes the `.<name>.tmp-*` directories of killed saves. Other peft methods, `is_main_process=False` and
    non-directory targets go straight to peft. Run on `import smat_peft`.

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
            for name in selected:  # which base weights the adapter was trained on, checked at load
                configs[name].base_weights_fingerprint = base_weights_fingerprint(self, name)
            original(self, staging, *args, **kwargs)
            for name in selected:
                record_weights_checksum(staging if name == "default" else os.path.join(staging, name))
            commit_directory(staging, target)
        finally:
            discard_staging(staging, target)

    save_pretrained._smat_atomic = True
    PeftModel.save_pretrained = save_pretrained


# ----------------------------------------------------------------------------------------------------------------
# which base weights an adapter was trained on
class BaseWeightsMismatchError(AdapterIntegrityError):
    """A SMAT adapter is being loaded onto base weights other than the ones it was trained on."""


_FINGERPRINT_LAYERS = 8  # sampled adapted base parameters
_FINGERPRINT_VALUES = 8  # sampled values per parameter (evenly spaced over the flattened tensor)
_FINGERPRINT_RTOL = 1e-2  # tolerant of loading the base model in bf16 / fp16


def _base_parameter_name(name: str) -> str:
    """A parameter's name in the plain base model, from its name inside a `PeftModel` / `SmatModel`."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".")


def _sample(param: Any) -> list[float]:
    import torch

    flat = param.detach().reshape(-1)
    index = torch.linspace(0, flat.numel() - 1, min(_FINGERPRINT_VALUES, flat.numel())).round().long()
    return [float(f"{v:.6g}") for v in flat[index.to(flat.device)].float().cpu().tolist()]


def base_weights_fingerprint(model: Any, adapter_name: str) -> Optional[dict[str, Any]]:
    """A cheap fingerprint of the base weights under a SMAT adapter: a few values at fixed positions of a fixed
    sample of the adapted base parameters (names of the plain base model). Recorded at save in
    `base_weights_fingerprint`; `None` when the adapter is merged into the base weights.

    Example:

    ```py
    >>> from smat_peft.integrity import base_weights_fingerprint
    >>> sorted(base_weights_fingerprint(model, "default")["parameters"])[:1]  # doctest: +SKIP
    ['encoder.layer.0.attention.attention.query.weight']
    ```
    """
    from .layer import SmatLayer

    layers = sorted(
        (name, module) for name, module in model.named_modules()
        if isinstance(module, SmatLayer) and adapter_name in module.smat_delta and module.param_names
    )
    if not layers or any(getattr(module, "merged", False) for _, module in layers):
        return None
    step = max(1, len(layers) // _FINGERPRINT_LAYERS)
    parameters = {}
    for name, module in layers[::step][:_FINGERPRINT_LAYERS]:
        param_name = module.param_names[0]
        param = dict(module.get_base_layer().named_parameters())[param_name]
        parameters[_base_parameter_name(f"{name}.{param_name}")] = _sample(param)
    return {"version": 1, "parameters": parameters}


def verify_base_weights(model: Any, fingerprint: Optional[dict[str, Any]], where: str) -> None:
    """Compare the base weights under a loaded SMAT adapter with the fingerprint recorded at save.

    Raises:
        BaseWeightsMismatchError: naming the differing parameters and the override.
    """
    import torch

    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("parameters"), dict):
        return
    params = {_base_parameter_name(name): p for name, p in model.named_parameters()}
    params.update({_base_parameter_name(name): p for name, p in model.named_buffers()})
    differing = []
    for name, expected in fingerprint["parameters"].items():
        param = params.get(name)
        if param is None:
            differing.append(f"{name} (not in the base model)")
            continue
        actual, expected_t = torch.tensor(_sample(param)), torch.tensor(expected, dtype=torch.float32)
        same = actual.shape == expected_t.shape
        same = same and torch.allclose(actual, expected_t, rtol=_FINGERPRINT_RTOL, atol=1e-4)
        if not same:
            differing.append(f"{name} (sampled values {expected[:3]} at save, {actual[:3].tolist()} now)")
    if differing:
        raise BaseWeightsMismatchError(
            f"The SMAT adapter {where} was trained on other base weights: {len(differing)} of "
            f"{len(fingerprint['parameters'])} sampled base parameters differ, e.g. {differing[0]}. The base model is "
            "probably another checkpoint of the same architecture: load the checkpoint the adapter was trained on "
            "(its `base_model_name_or_path`). If the base weights changed on purpose (e.g. you fine-tuned them), pass "
            "`check_base_weights=False` to `PeftModel.from_pretrained` / `load_adapter` / `load_compact`."
        )


# ----------------------------------------------------------------------------------------------------------------
# peft's loading entry points, checked
def _peft_type_of(attributes: dict[str, Any], path: str) -> str:
    peft_type = attributes.get("peft_type")
    if peft_type != "SMAT" and any(key in attributes for key in ("smat_format_version", "smat_version")):
        raise AdapterIntegrityError(
            f"{path} says peft_type={peft_type!r} but holds a SMAT adapter (it records smat_format_version / "
            "smat_version): the file was edited or damaged, and loading it as another method would silently do "
            f"nothing. Set \"peft_type\": \"SMAT\" again, or {_REFETCH[0].lower()}{_REFETCH[1:]}."
        )
    if not isinstance(peft_type, str):
        raise AdapterIntegrityError(f"{path} has no `peft_type`: it is not a peft adapter config. {_REFETCH}.")
    return peft_type


def _read_json_object(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            attributes = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterIntegrityError(f"{path} is not valid JSON ({error}): the file is corrupted. {_REFETCH}.") from None
    if not isinstance(attributes, dict):
        raise AdapterIntegrityError(f"{path} must hold a JSON object, got {type(attributes).__name__}. {_REFETCH}.")
    return attributes


def _download_config(model_id: str, **kwargs: Any) -> str:
    """`hf_hub_download` of an adapter config, with errors that say what went wrong and what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"Hub repo {model_id}" + (f" (subfolder {kwargs['subfolder']})" if kwargs.get("subfolder") else "")
    accepted = inspect.signature(hf_hub_download).parameters
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k in accepted}
    try:
        return hf_hub_download(model_id, CONFIG_NAME, **kwargs)
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise AdapterFileNotFoundError(
            f"{where} does not exist or you have no access to it ({type(error).__name__}). Check the repo id, and "
            "pass `token=...` (or `huggingface-cli login`) for a private repo; a local directory must exist."
        ) from None
    except RevisionNotFoundError:
        raise AdapterFileNotFoundError(f"{where} has no revision {kwargs.get('revision')!r}.") from None
    except LocalEntryNotFoundError as error:  # a subclass of EntryNotFoundError: test it first
        raise AdapterFileNotFoundError(
            f"Cannot reach the Hub to download {CONFIG_NAME} of {where}, and it is not in the local cache ({error}). "
            "Check your connection (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 after downloading it once."
        ) from None
    except EntryNotFoundError:
        raise AdapterFileNotFoundError(f"{where} has no {CONFIG_NAME}: it holds no peft adapter.") from None
    except (OSError, ValueError) as error:  # HTTP errors (an OSError), bad token values, ...
        raise AdapterFileNotFoundError(f"Cannot download {CONFIG_NAME} of {where}: {error}") from None


def install_checked_load() -> None:
    """Make every peft load path run SMAT's checks and leave the caller's model unchanged when a load fails.

    - `PeftConfig._get_peft_type` (the first thing `PeftModel.from_pretrained` and `load_adapter` read): an
      `adapter_config.json` that is not JSON names its file; a config that records SMAT but says another `peft_type`
      is refused (it would load as an adapter that does nothing); Hub failures (offline, no such repo, no access)
      say so; a SMAT adapter's files are checked (`check_adapter`). This is the one place SMAT's load checks touch
      peft, so the adapter core (`config.py`) never imports this module.
    - `PeftModel.from_pretrained` and `load_adapter`: a failed load removes what it injected (the base model, or the
      `PeftModel`, is as before); a SMAT adapter's recorded base-weights fingerprint is compared with the base model
      (`check_base_weights=False` skips it).
    - `PeftModel.save_pretrained` of SMAT adapters records that fingerprint (see `install_atomic_save`).

    Run on `import smat_peft`.
    """
    from peft import PeftModel
    from peft.config import PeftConfigMixin

    from .config import SmatConfig

    original_type = PeftConfigMixin.__dict__["_get_peft_type"].__func__
    if not getattr(original_type, "_smat_checked", False):

        @functools.wraps(original_type)
        def _get_peft_type(cls, model_id: str, **hf_hub_download_kwargs: Any) -> str:
            subfolder = hf_hub_download_kwargs.get("subfolder")
            path = os.path.join(os.fspath(model_id), subfolder) if subfolder else os.fspath(model_id)
            config_file = os.path.join(path, CONFIG_NAME)
            if not os.path.isfile(config_file):
                if os.path.isdir(path) or os.path.isabs(path) or os.fspath(model_id).startswith((".", "~")):
                    raise AdapterFileNotFoundError(
                        f"{config_file} does not exist: pass the directory that `save_pretrained` wrote."
                    )
                config_file = _download_config(os.fspath(model_id), **hf_hub_download_kwargs)
            peft_type = _peft_type_of(_read_json_object(config_file), config_file)
            if peft_type == "SMAT":  # before peft builds the config and touches the model
                check_adapter(model_id, **hf_hub_download_kwargs)
            return peft_type

        _get_peft_type._smat_checked = True
        PeftConfigMixin._get_peft_type = classmethod(_get_peft_type)

    import contextvars

    checked_by_caller = contextvars.ContextVar("smat_checked_by_caller", default=False)
    from_pretrained = PeftModel.__dict__["from_pretrained"].__func__
    if not getattr(from_pretrained, "_smat_checked", False):

        @functools.wraps(from_pretrained)
        def checked_from_pretrained(cls, model: Any, model_id: Any, *args: Any, check_base_weights: bool = True,
                                    **kwargs: Any):
            from .layer import SmatLayer, strip_smat_layers

            fresh = not any(isinstance(m, SmatLayer) for m in model.modules())
            token = checked_by_caller.set(True)
            try:
                try:
                    loaded = from_pretrained(cls, model, model_id, *args, **kwargs)
                finally:
                    checked_by_caller.reset(token)
                for name, config in loaded.peft_config.items():
                    if isinstance(config, SmatConfig) and check_base_weights:
                        verify_base_weights(loaded, config.base_weights_fingerprint, os.fspath(model_id))
                return loaded
            except BaseException:
                if fresh and any(isinstance(m, SmatLayer) for m in model.modules()):  # a SMAT load failed
                    strip_smat_layers(model)
                raise

        checked_from_pretrained._smat_checked = True
        PeftModel.from_pretrained = classmethod(checked_from_pretrained)

    load_adapter = PeftModel.load_adapter
    if not getattr(load_adapter, "_smat_checked", False):
        signature = inspect.signature(load_adapter)

        @functools.wraps(load_adapter)
        def checked_load_adapter(self, *args: Any, check_base_weights: bool = True, **kwargs: Any):
            bound = signature.bind(self, *args, **kwargs)
            adapter_name = bound.arguments.get("adapter_name")
            existed = adapter_name in self.peft_config
            try:
                result = load_adapter(self, *args, **kwargs)
                config = self.peft_config.get(adapter_name)
                if isinstance(config, SmatConfig) and check_base_weights and not checked_by_caller.get():
                    verify_base_weights(
                        self, config.base_weights_fingerprint, os.fspath(bound.arguments.get("model_id"))
                    )
                return result
            except BaseException:
                if not existed and adapter_name in self.peft_config:
                    try:
                        self.delete_adapter(adapter_name)
                    except Exception:  # noqa: BLE001 - the original error is the one to report
                        pass
                raise

        checked_load_adapter._smat_checked = True
        PeftModel.load_adapter = checked_load_adapter
