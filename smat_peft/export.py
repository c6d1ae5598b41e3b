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
"""Compact export of a meta-trained SMAT adapter for inference: bit-packed binary masks and a sparse delta.

A trained adapter stores, per adapted parameter, a dense delta `δ` and `M` mask logits `log α` (fp32: `(M + 1) × 4`
bytes per element, 36 for M = 8). Inference only needs what the eval masks make of them. The export keeps:

- **masks**, binarised at the eval threshold `z > 0.5`, where `z = clamp(σ(log α)·(ζ − γ) + γ, 0, 1)` is the eval
  mask; with γ = −0.1, ζ = 1.1 this is `log α > 0`. Trained masks are binary already (log α saturates at ±clip), so
  this changes nothing for them; fractional masks are rounded.
- the **union** of the M masks (one bit per mask element), and each expert's bits only where the union is set;
- **δ only where the union is set** (elsewhere every merged mask is 0, so δ has no effect), in fp16 (default),
  bf16 or fp32;
- the **router**, LoRA factors and `modules_to_save` in full (they are small). `log α` and optimizer state are not
  stored.

Bits are packed 8 per byte in little bit order (bit `j` of byte `k` is element `8k + j`, like
`numpy.packbits(..., bitorder="little")`), one row per expert. The directory holds `adapter_config.json` (the
`SmatConfig` plus a `compact` block: format version, threshold, delta dtype; and the file's SHA-256) and one
`smat_compact.safetensors`, whose metadata lists every packed parameter's shapes.

`load_compact` rebuilds an ordinary SMAT `PeftModel` whose `log α` is ±clip where the bits say 1/0 (so the eval masks
are exactly those bits) and whose `δ` is scattered back (zeros elsewhere). In eval mode inside `model.task(...)` it
reproduces the trained adapter exactly when the trained masks were binary and δ was exported in fp32, and closely
with fp16/bf16 δ.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic_io import commit_directory, discard_staging, file_sha256, staging_directory
from .config import SmatConfig
from .constants import DTYPES
from .integrity import (
    COMPACT_WEIGHTS_NAME,
    CONFIG_NAME,
    AdapterFileNotFoundError,
    AdapterIntegrityError,
    base_weights_fingerprint,
    check_adapter_dir,
    check_safetensors,
    check_weights_checksum,
    download_adapter_file,
    read_adapter_config,
    recover_adapter_directory,
    verify_base_weights,
)
from .layer import SmatLayer, strip_smat_layers
from .masks import HardConcrete


COMPACT_FORMAT_VERSION = 1
# A mask element is on in the export iff its eval mask is above this value (log α > 0 for γ = −0.1, ζ = 1.1).
MASK_THRESHOLD = 0.5
_METADATA_KEY = "smat_compact"
_DELTA_KEY = re.compile(r"^(?P<module>.+)\.smat_delta\.(?P<index>\d+)$")
_LOG_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.smat_log_alpha\.(?P<index>\d+)$")
_COMPACT_STEM = re.compile(r"^(?P<module>.+)\.smat_compact\.(?P<index>\d+)$")
_BASE_PREFIX = "base_model.model."


# ----------------------------------------------------------------------------------------------------------------
# bits
def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack booleans `[..., n]` into `uint8` `[..., ceil(n / 8)]`, 8 per byte, little bit order."""
    return torch.from_numpy(np.packbits(bits.cpu().numpy(), axis=-1, bitorder="little"))


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: booleans `[..., n]` from `uint8` `[..., ceil(n / 8)]`."""
    if packed.dtype != torch.uint8 or packed.shape[-1] != (n + 7) // 8:
        raise ValueError(f"expected uint8 [..., {(n + 7) // 8}] for {n} bits, got {packed.dtype} {list(packed.shape)}")
    bits = np.unpackbits(packed.cpu().numpy(), axis=-1, count=n, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_))


def threshold_logit(config: SmatConfig) -> float:
    """The `log α` above which the eval mask exceeds `MASK_THRESHOLD`: `logit((0.5 − γ)/(ζ − γ))` (0 by default)."""
    return HardConcrete.from_config(config).eval_logit(MASK_THRESHOLD)


def binary_masks(log_alpha: torch.Tensor, config: SmatConfig) -> torch.Tensor:
    """The exported masks `[M, *mask_shape]`: eval mask `> MASK_THRESHOLD`, i.e. `log α > threshold_logit(config)`."""
    return log_alpha > threshold_logit(config)


def saturated_logit(config: SmatConfig) -> float:
    """The `log α` magnitude `load_compact` writes: `mask_logit_clip`, or more if the eval mask is not exactly 0/1
    there (it is from `|log α| ≥ log(11) ≈ 2.4` with the default γ, ζ)."""
    return max(config.mask_logit_clip, HardConcrete.from_config(config).eval_saturation_logit + 1.0)


# ----------------------------------------------------------------------------------------------------------------
# encoding
def compact_state_dict(
    state_dict: dict[str, torch.Tensor], config: SmatConfig, delta_dtype: str = "float16"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encode a SMAT adapter's peft state dict (keys without the adapter name, as in `adapter_model.safetensors`).

    Each `(…smat_delta.i, …smat_log_alpha.i)` pair becomes `…smat_compact.i.{union,masks,delta}`; other entries
    (router, LoRA factors, modules_to_save) are kept as they are. Returns the tensors and the index stored in the
    file's metadata (per packed parameter: `shape` of δ and `mask_shape`).
    """
    if delta_dtype not in DTYPES:
        raise ValueError(f"`delta_dtype` must be one of {sorted(DTYPES)}, got {delta_dtype!r}.")
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict[str, list[int]]] = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if _LOG_ALPHA_KEY.match(key):
            delta_key = key.replace(".smat_log_alpha.", ".smat_delta.")
            if delta_key not in state_dict:
                raise ValueError(f"The adapter state has mask logits {key!r} but no delta {delta_key!r}.")
            continue
        match = _DELTA_KEY.match(key)
        if match is None:
            tensors[key] = value.clone().contiguous()
            continue
        log_alpha_key = f"{match['module']}.smat_log_alpha.{match['index']}"
        if log_alpha_key not in state_dict:
            raise ValueError(f"The adapter state has a delta {key!r} but no mask logits {log_alpha_key!r}.")
        with torch.no_grad():
            log_alpha = state_dict[log_alpha_key].detach().cpu()  # [M, *mask_shape]
            masks = binary_masks(log_alpha, config)
            union = binary_masks(log_alpha.amax(0), config)  # some expert's mask is on
            union_index = union.flatten().nonzero().squeeze(1)
            if union.shape == value.shape:
                delta_index = union_index
            else:  # structured masks: one mask value covers a column / channel of the parameter
                delta_index = union.expand(value.shape).flatten().nonzero().squeeze(1)
            stem = f"{match['module']}.smat_compact.{match['index']}"
            tensors[f"{stem}.union"] = pack_bits(union.flatten())
            tensors[f"{stem}.masks"] = pack_bits(masks.flatten(1).index_select(1, union_index))
            delta = value.reshape(-1).index_select(0, delta_index)
            tensors[f"{stem}.delta"] = delta.to(DTYPES[delta_dtype])
        index[stem] = {"shape": list(value.shape), "mask_shape": list(masks.shape[1:])}
    return tensors, index


def _adapter_state(model: Any) -> tuple[dict[str, torch.Tensor], SmatConfig]:
    from peft import PeftModel, get_peft_model_state_dict

    if not isinstance(model, PeftModel):
        raise TypeError(
            f"`model` must be a peft.PeftModel with a SMAT adapter or the directory of a saved one, got "
            f"{type(model).__name__}."
        )
    adapter_name = model.active_adapter
    config = model.peft_config.get(adapter_name)
    if not isinstance(config, SmatConfig):
        raise TypeError(
            f"The active adapter {adapter_name!r} is not a SMAT adapter ({type(config).__name__}); select one with "
            "`model.set_adapter(...)`."
        )
    config = copy.deepcopy(config)
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = model.base_model.model.__dict__.get("name_or_path") or None
    config.base_weights_fingerprint = base_weights_fingerprint(model, adapter_name)
    return get_peft_model_state_dict(model, adapter_name=adapter_name), config


def _saved_adapter_state(directory: str) -> tuple[dict[str, torch.Tensor], SmatConfig]:
    attributes = check_adapter_dir(directory)
    safetensors_path = os.path.join(directory, "adapter_model.safetensors")
    if os.path.isfile(safetensors_path):
        state = load_file(safetensors_path)
    else:
        state = torch.load(os.path.join(directory, "adapter_model.bin"), map_location="cpu", weights_only=True)
    return state, SmatConfig.from_peft_type(**attributes)


def export_compact(
    model: Union[Any, str, os.PathLike], save_directory: Union[str, os.PathLike], delta_dtype: str = "float16"
) -> str:
    """Write a compact, inference-only copy of a SMAT adapter (see the module docstring for the format).

    This is a function rather than `model.save_pretrained(d, compact=True)`: peft's `save_pretrained` takes no
    such option and always writes the full, trainable adapter, which a compact export is not (no `log α`, δ only
    where a mask is on).

    Args:
        model (`peft.PeftModel` or path): A `PeftModel` whose active adapter is a SMAT adapter, or the directory of
            a saved SMAT adapter (converted from its files; no base model needed).
        save_directory (`str`): Where to write `adapter_config.json` and `smat_compact.safetensors`. Written
            atomically: a failed export leaves a previous export there intact.
        delta_dtype (`str`): `"float16"` (default), `"bfloat16"` or `"float32"` (exact).

    Returns:
        `str`: the path of the weights file written.

    Example:

    ```py
    >>> from smat_peft import export_compact, load_compact
    >>> export_compact(model, "smat-compact")  # doctest: +SKIP
    >>> inference_model = load_compact(base_model, "smat-compact")  # doctest: +SKIP
    >>> with inference_model.task(support_pixel_values, support_labels):  # doctest: +SKIP
    ...     logits = inference_model(pixel_values=query_pixel_values).logits
    ```
    """
    if isinstance(model, (str, os.PathLike)):
        state, config = _saved_adapter_state(os.fspath(model))
    else:
        state, config = _adapter_state(model)
    tensors, index = compact_state_dict(state, config, delta_dtype)
    del state
    index_json = json.dumps({"format_version": COMPACT_FORMAT_VERSION, "parameters": index}, sort_keys=True)
    metadata = {"format": "pt", _METADATA_KEY: index_json}

    target = os.path.realpath(os.fspath(save_directory))
    if os.path.isfile(target):
        raise ValueError(f"`save_directory` {target} is a file; pass a directory.")
    staging = staging_directory(target)
    try:
        weights = os.path.join(staging, COMPACT_WEIGHTS_NAME)
        save_file(tensors, weights, metadata=metadata)
        config.inference_mode = True
        config.compact = {
            "format_version": COMPACT_FORMAT_VERSION,
            "mask_threshold": MASK_THRESHOLD,
            "mask_rule": "eval mask > mask_threshold (log α > 0 for γ = −0.1, ζ = 1.1)",
            "delta_dtype": delta_dtype,
            "weights": COMPACT_WEIGHTS_NAME,
        }
        config.weights_sha256 = file_sha256(weights)
        config.save_pretrained(staging)
        commit_directory(staging, target)
    finally:
        discard_staging(staging, target)
    return os.path.join(target, COMPACT_WEIGHTS_NAME)


# ----------------------------------------------------------------------------------------------------------------
# loading
def _compact_files(source: str, subfolder: Optional[str], **kwargs: Any) -> tuple[str, Optional[str], str]:
    """Local paths of a compact export's config and weights (downloaded for a Hub repo id), and a display name."""
    local = os.path.join(source, subfolder) if subfolder else source
    if os.path.isdir(local):
        recover_adapter_directory(local)  # finish an export that a kill interrupted after it was complete
        weights = os.path.join(local, COMPACT_WEIGHTS_NAME)
        return os.path.join(local, CONFIG_NAME), weights if os.path.isfile(weights) else None, local
    if os.path.exists(local) or os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1:
        raise AdapterFileNotFoundError(f"Compact SMAT export directory {local} does not exist.")
    where = f"Hub repo {source}" + (f" (subfolder {subfolder})" if subfolder else "")
    config_path = download_adapter_file(source, CONFIG_NAME, subfolder=subfolder, **kwargs)
    if config_path is None:
        raise AdapterFileNotFoundError(f"{where} has no {CONFIG_NAME}: it holds no SMAT export.")
    return config_path, download_adapter_file(source, COMPACT_WEIGHTS_NAME, subfolder=subfolder, **kwargs), where


def _check_compact(config_path: str, weights: Optional[str], where: str) -> dict[str, Any]:
    attributes = read_adapter_config(config_path)
    compact = attributes.get("compact")
    if not compact:
        raise AdapterIntegrityError(
            f"{where} holds a full SMAT adapter, not a compact export: load it with "
            "`peft.PeftModel.from_pretrained(base_model, path)`, or export it first with `smat_peft.export_compact`."
        )
    version = compact.get("format_version") if isinstance(compact, dict) else None
    if not isinstance(version, int) or version < 1:
        raise AdapterIntegrityError(f"{config_path}: the `compact` block has no valid `format_version` ({compact!r}).")
    if version > COMPACT_FORMAT_VERSION:
        raise AdapterIntegrityError(
            f"{config_path} is a compact SMAT export in format version {version}; this smat-peft reads versions up to "
            f"{COMPACT_FORMAT_VERSION}. Upgrade smat-peft (`pip install -U smat-peft`) to load it."
        )
    if weights is None:
        raise AdapterFileNotFoundError(
            f"Compact SMAT export weights are missing: {where} has {CONFIG_NAME} but no {COMPACT_WEIGHTS_NAME}. "
            "Export or download it again."
        )
    check_safetensors(weights)
    check_weights_checksum(weights, attributes.get("weights_sha256"), config_path)
    return attributes


@dataclass
class _Packed:
    """One packed parameter of a compact file, unpacked and checked: where δ and the mask bits go."""

    module: str  # module name in the base model
    position: int  # index in the layer's ParameterLists (`layer.param_names` order)
    union_index: torch.Tensor  # flat indices (mask space) where some expert's mask is on
    delta_index: torch.Tensor  # flat indices (parameter space) of the stored δ values
    bits: torch.Tensor  # [M, len(union_index)] bool
    delta: torch.Tensor  # [len(delta_index)]


def _read_compact(
    weights: str, config: SmatConfig, base_model: nn.Module, where: str
) -> tuple[list[_Packed], dict[str, torch.Tensor]]:
    """Unpack a compact file and check it against its config and `base_model`, without touching the model.

    Returns the packed parameters and the tensors kept in full (router, LoRA factors, modules_to_save).
    """
    with safe_open(weights, framework="pt") as f:
        raw = (f.metadata() or {}).get(_METADATA_KEY)
    try:
        index = json.loads(raw)["parameters"]
    except (TypeError, KeyError, json.JSONDecodeError):
        raise AdapterIntegrityError(
            f"{weights} has no valid `{_METADATA_KEY}` metadata: it is not a compact SMAT export. Export it again."
        ) from None
    tensors = load_file(weights)
    packed = []
    for stem, entry in sorted(index.items()):
        match = _COMPACT_STEM.match(stem)
        try:
            shape, mask_shape = torch.Size(entry["shape"]), torch.Size(entry["mask_shape"])
            module = match["module"]
            module = module[len(_BASE_PREFIX):] if module.startswith(_BASE_PREFIX) else module
            position = int(match["index"])
        except (TypeError, KeyError):
            raise AdapterIntegrityError(
                f"{weights}: invalid metadata entry {stem!r}: {entry!r}. Export it again."
            ) from None
        _check_base_parameter(base_model, module, position, shape, where)
        try:
            union = unpack_bits(tensors.pop(f"{stem}.union"), mask_shape.numel()).reshape(mask_shape)
            union_index = union.flatten().nonzero().squeeze(1)
            expanded = union if mask_shape == shape else union.expand(shape)
            delta_index = union_index if mask_shape == shape else expanded.flatten().nonzero().squeeze(1)
            bits = unpack_bits(tensors.pop(f"{stem}.masks"), len(union_index))
            delta = tensors.pop(f"{stem}.delta")
            if bits.shape[0] != config.num_experts or delta.shape != (len(delta_index),):
                raise ValueError(
                    f"{bits.shape[0]} mask rows for {config.num_experts} experts, {delta.numel()} δ values for "
                    f"{len(delta_index)} positions"
                )
        except (KeyError, RuntimeError, ValueError) as error:
            raise AdapterIntegrityError(
                f"{weights}: the packed entries of {stem!r} are inconsistent ({error}). Export it again."
            ) from None
        packed.append(_Packed(module, position, union_index, delta_index, bits, delta))
    stray = [k for k in tensors if ".smat_compact." in k or ".smat_delta." in k or ".smat_log_alpha." in k]
    if stray:
        raise AdapterIntegrityError(f"{weights}: tensors {stray[:3]} are not listed in its metadata. Export it again.")
    return packed, tensors


def _fill(layer: SmatLayer, adapter_name: str, packed: _Packed, magnitude: float) -> None:
    """Write one packed parameter into a fresh SMAT layer: δ scattered (zeros elsewhere), log α = ±magnitude."""
    with torch.no_grad():
        delta = layer.smat_delta[adapter_name][packed.position]
        delta.zero_()
        delta.view(-1).index_copy_(0, packed.delta_index, packed.delta.to(delta.dtype))
        log_alpha = layer.smat_log_alpha[adapter_name][packed.position]
        values = torch.where(packed.bits, magnitude, -magnitude).to(log_alpha.dtype)
        log_alpha.fill_(-magnitude)
        log_alpha.view(log_alpha.shape[0], -1).index_copy_(1, packed.union_index, values)


def _check_base_parameter(base_model: nn.Module, name: str, position: int, shape: torch.Size, where: str) -> None:
    try:
        params = list(base_model.get_submodule(name).named_parameters())
        found = params[position][1].shape
    except (AttributeError, IndexError):
        found = None
    if found != shape:
        what = "has no such parameter" if found is None else f"has shape {tuple(found)}"
        raise ValueError(
            f"The compact SMAT export {where} does not fit this {type(base_model).__name__}: it adapts parameter "
            f"{position} of `{name}` with shape {tuple(shape)}, but the base model {what}. Load it onto the base "
            "model it was trained from."
        )


def load_compact(
    base_model: nn.Module,
    directory: Union[str, os.PathLike],
    adapter_name: str = "default",
    subfolder: Optional[str] = None,
    check_base_weights: bool = True,
    **kwargs: Any,
):
    """Load a compact SMAT export onto a base model, as an ordinary SMAT `PeftModel` in inference mode.

    The files are checked first (`smat_peft.integrity`), and the packed shapes against `base_model`, so a broken
    export or a wrong base model raises before `base_model` is modified.

    Args:
        base_model (`torch.nn.Module`): A fresh base model of the class and shapes the adapter was trained on (it is
            modified in place, as with `PeftModel.from_pretrained`).
        directory (`str`): The export directory, or a Hub repo id holding one.
        adapter_name (`str`): Name of the loaded adapter.
        subfolder (`str`, *optional*): Folder of the export inside `directory` / the repo.
        check_base_weights (`bool`): Compare the base weights with the fingerprint recorded at export (a few sampled
            values) and refuse another checkpoint of the same architecture; `False` skips it.
        kwargs: For a Hub repo id, passed to `huggingface_hub.hf_hub_download` (`revision`, `token`, `cache_dir`).

    Returns:
        `peft.PeftModel` in eval mode with every parameter frozen. Its masks are the exported bits exactly
        (`log α` = ±clip) and δ is zero where every mask is off; use it inside `model.task(...)` as usual.

    Example:

    ```py
    >>> from transformers import ViTModel
    >>> from smat_peft import load_compact
    >>> model = load_compact(ViTModel.from_pretrained("facebook/dino-vits16"), "smat-compact")  # doctest: +SKIP
    >>> with model.task(support_pixel_values, support_labels):  # doctest: +SKIP
    ...     features = model(pixel_values=query_pixel_values).last_hidden_state
    ```
    """
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict

    source = os.fspath(directory)
    if isinstance(base_model, PeftModel) or any(isinstance(m, SmatLayer) for m in base_model.modules()):
        raise TypeError(
            "`base_model` already holds peft adapters; pass a fresh base model (e.g. a new "
            "`AutoModel.from_pretrained(...)`), not a PeftModel or a model that one wraps."
        )
    config_path, weights, where = _compact_files(source, subfolder, **kwargs)
    attributes = _check_compact(config_path, weights, where)
    config = SmatConfig.from_peft_type(**attributes)
    model_class = type(base_model).__name__
    if config.base_model_class is not None and config.base_model_class != model_class:
        raise ValueError(
            f"The compact SMAT export {where} was made for a {config.base_model_class}, but the base model is a "
            f"{model_class}. Load it onto a {config.base_model_class} built from the same checkpoint."
        )
    packed, others = _read_compact(weights, config, base_model, where)
    config.compact, config.weights_sha256, config.inference_mode = None, None, True

    try:
        model = get_peft_model(base_model, config, adapter_name=adapter_name)
        layers = {name: layer for name, layer in model.base_model.smat_layers() if adapter_name in layer.smat_delta}
        expected = {(name, i) for name, layer in layers.items() for i in range(len(layer.param_names))}
        found = {(p.module, p.position) for p in packed}
        if found != expected:
            raise AdapterIntegrityError(
                f"The compact SMAT export {where} does not match its own config: its config adapts "
                f"{sorted(expected - found)[:3]} that the file lacks, the file has {sorted(found - expected)[:3]} "
                "that the config does not adapt. Export it again."
            )
        magnitude = saturated_logit(config)
        for entry in packed:
            _fill(layers[entry.module], adapter_name, entry, magnitude)
        result = set_peft_model_state_dict(model, others, adapter_name=adapter_name)
        missing = [
            k for k in result.missing_keys
            if f".{adapter_name}." in f"{k}." and ("smat_router" in k or "smat_lora" in k or "modules_to_save" in k)
        ]
        if missing or result.unexpected_keys:
            raise AdapterIntegrityError(
                f"The compact SMAT export {where} does not match its own config: missing {missing[:3]}, unexpected "
                f"{list(result.unexpected_keys)[:3]}. Export it again."
            )
        if check_base_weights:
            verify_base_weights(model, config.base_weights_fingerprint, where)
    except Exception:
        strip_smat_layers(base_model)
        raise
    model.requires_grad_(False)
    return model.eval()
