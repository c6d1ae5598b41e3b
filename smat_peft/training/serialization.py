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
"""Training state without pickle: any nested dict / list / tuple of tensors and JSON scalars, as safetensors + JSON.

`save_state(state, directory, stem)` writes `stem.safetensors` (every tensor, under its flattened path such as
`optimizers/delta/state/0/momentum_buffer`) and `stem.json` (the rest of the tree, with a placeholder where each
tensor was, the safetensors file's SHA-256 and the tree's own SHA-256). `load_state(directory, stem)` checks both
checksums before it rebuilds the tree. Nothing is unpickled, so a crafted checkpoint cannot run code on resume.

What the tree may hold: `torch.Tensor` (any dtype safetensors stores), numpy arrays, `dict` (keys `str`, `int`,
`float`, `bool` or `None`; optimizer state_dicts key their state by int), `list`, `tuple`, `str`, `int`, `float`
(also inf / nan), `bool` and `None`. Optimizer, scheduler and module state_dicts, RNG states and new entries added
later need no change here.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..atomic_io import file_sha256


FORMAT_VERSION = 1
_TENSOR, _NUMPY, _TUPLE, _DICT = "__tensor__", "__numpy__", "__tuple__", "__dict__"


class TrainingStateError(ValueError):
    """A saved training state is missing, corrupted, or holds something that cannot be stored without pickle."""


def _canonical(tree: Any) -> bytes:
    return json.dumps(tree, sort_keys=True, separators=(",", ":")).encode("utf-8")


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `state` into a JSON-able tree (tensors replaced by placeholders) and a flat `{path: tensor}` dict."""
    import numpy as np

    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def add(tensor: torch.Tensor, path: str) -> str:
        tensor = tensor.detach().cpu().contiguous()
        if tensor.numel():
            if tensor.untyped_storage().data_ptr() in storages:
                tensor = tensor.clone()  # safetensors refuses tensors that share memory
            storages.add(tensor.untyped_storage().data_ptr())
        tensors[path] = tensor
        return path

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            return {_TENSOR: add(value, path)}
        if isinstance(value, np.ndarray):
            return {_NUMPY: add(torch.from_numpy(np.ascontiguousarray(value)), path)}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v, f"{path}/{k}") for k, v in value.items()}
            for k in value:
                if not (k is None or isinstance(k, (str, int, float, bool))):
                    raise TrainingStateError(
                        f"Cannot store the training state entry {path or '/'}: its key {k!r} is a "
                        f"{type(k).__name__}; keys must be str, int, float, bool or None."
                    )
            return {_DICT: [[k, walk(v, f"{path}/{k}")] for k, v in value.items()]}
        raise TrainingStateError(
            f"Cannot store the training state entry {path or '/'} of type {type(value).__name__} without pickle: "
            "training state may hold only tensors, numpy arrays, dicts, lists, tuples, str, int, float, bool and "
            "None. Convert it (e.g. to a tensor or a dict) in the state_dict that produces it."
        )

    return walk(state, ""), tensors


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor], where: str = "training state") -> Any:
    """Inverse of [`flatten_state`]."""

    def tensor(path: Any) -> torch.Tensor:
        if path not in tensors:
            raise TrainingStateError(f"{where}: tensor {path!r} is missing from the tensors file.")
        return tensors[path]

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        if _TENSOR in value:
            return tensor(value[_TENSOR])
        if _NUMPY in value:
            return tensor(value[_NUMPY]).numpy()
        if _TUPLE in value:
            return tuple(walk(v) for v in value[_TUPLE])
        if _DICT in value:
            return {k: walk(v) for k, v in value[_DICT]}
        return {k: walk(v) for k, v in value.items()}

    return walk(tree)


def save_state(state: Any, directory: str, stem: str = "training_state") -> list[str]:
    """Write `state` to `directory/stem.safetensors` and `directory/stem.json`; return both paths.

    Example:

    ```py
    >>> import tempfile, torch
    >>> from smat_peft.training.serialization import load_state, save_state
    >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_state({"optimizer": opt.state_dict(), "step": 3}, d)
    ...     load_state(d)["step"]
    3
    ```
    """
    tree, tensors = flatten_state(state)
    os.makedirs(directory, exist_ok=True)
    tensors_path = os.path.join(directory, f"{stem}.safetensors")
    json_path = os.path.join(directory, f"{stem}.json")
    save_file(tensors, tensors_path, metadata={"format": "pt", "smat_state_format": str(FORMAT_VERSION)})
    record = {
        "format_version": FORMAT_VERSION,
        "tensors_file": os.path.basename(tensors_path),
        "tensors_sha256": file_sha256(tensors_path),
        "tree_sha256": hashlib.sha256(_canonical(tree)).hexdigest(),
        "tree": tree,
    }
    with open(json_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1, sort_keys=True))
    return [tensors_path, json_path]


def load_state(directory: str, stem: str = "training_state", map_location: str = "cpu") -> Any:
    """Read what [`save_state`] wrote, after checking both files' checksums; no pickle involved.

    Raises:
        TrainingStateError: naming the file, when a file is missing, truncated, edited or corrupted.
    """
    json_path = os.path.join(directory, f"{stem}.json")
    tensors_path = os.path.join(directory, f"{stem}.safetensors")
    for path in (json_path, tensors_path):
        if not os.path.isfile(path):
            raise TrainingStateError(f"{path} does not exist: the checkpoint is incomplete.")
    try:
        with open(json_path, encoding="utf-8") as f:
            record = json.load(f)
        tree, expected_tree, expected_tensors = record["tree"], record["tree_sha256"], record["tensors_sha256"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise TrainingStateError(f"{json_path} is not a valid training state record ({error}).") from None
    if record.get("format_version", 1) > FORMAT_VERSION:
        raise TrainingStateError(
            f"{json_path} is in training state format {record['format_version']}, newer than this smat-peft reads "
            f"({FORMAT_VERSION}). Upgrade smat-peft (`pip install -U smat-peft`)."
        )
    if hashlib.sha256(_canonical(tree)).hexdigest() != expected_tree:
        raise TrainingStateError(f"{json_path} was changed after it was saved: its content does not match its SHA-256.")
    actual = file_sha256(tensors_path)
    if actual != expected_tensors:
        raise TrainingStateError(
            f"{tensors_path} is corrupted: its SHA-256 is {actual}, but {json_path} records {expected_tensors}."
        )
    try:
        tensors = load_file(tensors_path, device=map_location)
    except Exception as error:  # noqa: BLE001 - safetensors' own errors name no file
        raise TrainingStateError(f"{tensors_path} cannot be read ({error}).") from None
    return unflatten_state(tree, tensors, where=json_path)
