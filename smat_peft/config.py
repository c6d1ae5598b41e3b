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
"""`SmatConfig`, the adapter's configuration as peft saves it in `adapter_config.json`, and reading one from a
JSON or YAML file (`load_smat_config`, what `--smat_config` means)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

from peft.config import PeftConfig

from .constants import DTYPES, SMAT_FORMAT_VERSION, __version__
from .peft_type import SmatPeftType


_MASK_INITS = ("normal", "dense", "random_binary")
_MAX_EXPERTS = 1024


@dataclass
class SmatConfig(PeftConfig):
    """
    Configuration of a SMAT (Sparse MetA-Tuning) adapter: sparse interpolated experts with a support-set router.

    A task's weights are `θ_i = θ_pre + (Σ_m α_m z_m) ⊙ δ`, where `δ` is one dense delta per adapted parameter
    (initialised to zero), `z_m` are `num_experts` hard-concrete masks and `α` is produced by a small router from the
    class prototypes of the task's support set.

    Args:
        num_experts (`int`): Number of experts `M` (masks).
        sparsity (`float`): Target fraction of zeros `τ` of every expert's mask, in [0, 1).
        target_modules (`Optional[Union[list[str], str]]`): Module names (or suffixes, or a regex) to adapt. Defaults
            to the attention projections and MLP linears of the architecture (see `smat_peft.targets`); required for
            models without a transformers `model_type`.
        exclude_modules (`Optional[Union[list[str], str]]`): Module names (or a regex) never to adapt.
        layers_to_transform (`Optional[Union[list[int], int]]`): Only adapt these layer indices.
        layers_pattern (`Optional[Union[list[str], str]]`): Name of the layer list, used with `layers_to_transform`.
        target_all_parameters (`bool`): Also adapt LayerNorms, embeddings (patch projection, position embeddings,
            class/register tokens) and every other parameter-owning module except the classifier, as the paper does.
        modules_to_save (`Optional[list[str]]`): Base-model modules to train and save in full (e.g. `["classifier"]`).
        init_weights (`bool`): Initialise `δ` to zero, so the wrapped model reproduces the base model. `False` draws
            a small random `δ` (useful for tests).
        mask_init (`str`): How the mask logits start. `"normal"`: `log α ~ N(mask_init_mean, mask_init_std²)`
            (the method: `N(0, 0.5²)`, every mask about half on, dense). `"dense"`: every `log α` at
            `+mask_logit_clip` (each mask exactly 1). `"random_binary"`: each element at `±mask_logit_clip`, on with
            probability `1 − sparsity` (a random binary mask at τ, drawn from torch's global RNG).
        mask_init_mean (`float`): Mean of the initial mask logits `log α` (`mask_init="normal"`).
        mask_init_std (`float`): Standard deviation of the initial mask logits `log α` (`mask_init="normal"`).
        train_masks (`bool`): Learn the mask logits. `False` keeps them at their initial values (no gradient, not
            optimised): with `num_experts=1` and `mask_init="dense"` or `"random_binary"` this gives the
            one-dense-expert and random-sparse-mask controls of SMAT.
        mask_logit_clip (`float`): `log α` is clipped to `[-clip, clip]` before each training task.
        hard_concrete_beta (`float`): Temperature `β` of the hard-concrete distribution during training.
        hard_concrete_gamma (`float`): Lower stretch limit `γ` (< 0).
        hard_concrete_zeta (`float`): Upper stretch limit `ζ` (> 1).
        mask_noise (`bool`): Sample the hard-concrete noise `u ~ U(0, 1)` during training (Louizos et al., the
            paper). `False` reproduces the reference code, whose noise range `U(0.5 ± 1e-6)` makes training masks
            deterministic (pitfall P1).
        mask_noise_table (`bool`): Take the noise of each training mask as a random slice of a fixed table of
            i.i.d. logistic samples (the shared noise table of evolution strategies, Salimans et al., 2017): every
            mask is exactly hard-concrete distributed, and sampling costs one pass instead of a random number and a
            logit per element (about half of SMAT's mask work on CPU). `False` draws fresh noise every time.
        structured_mask (`bool`): One mask value per input column of 2-D weights (per output channel for convolutions,
            per element for 1-D parameters) instead of one per element.
        mask_dtype (`str`): Storage dtype of `log α` (`"float32"`, `"bfloat16"` or `"float16"`): `log α` holds
            `M` values per adapted parameter, so a 16-bit dtype halves most of the adapter's memory.
        router_num_heads (`int`): Attention heads of the router block.
        router_mlp_ratio (`float`): MLP width of the router block relative to the feature size.
        router_num_skill_tokens (`int`): Learnable skill tokens appended to the class prototypes.
        router_spectral_norm (`bool`): Spectral normalisation on every linear layer of the router.
        router_temperature (`float`): Temperature of the relaxed-Bernoulli expert weights at the first training
            task. The meta-trainer anneals it towards `router_test_temperature` (reference: 5 → 0.5).
        router_test_temperature (`float`): Temperature of the expert weights in eval mode (`α = s / Σ s`,
            `s = σ(ℓ / T)`), and the lowest temperature of the training schedule. Saved with the adapter, so the
            routing at test time never depends on which checkpoint was kept (reference: 0.5).
        feature_dim (`Optional[int]`): Size of the support features fed to the router. Inferred for transformers
            vision models; required otherwise.
        outside_task (`str`): What a forward outside `model.task(...)` does: `"error"` (raise) or `"uniform"`
            (`α = 1/M`, so the adapter also works as an ordinary peft adapter).
        lora_r (`Optional[int]`): Rank of LoRA factors added inside the SMAT linear layers (`None`: no LoRA).
        lora_alpha (`int`): LoRA scaling numerator (`scale = lora_alpha / lora_r`).
        lora_dropout (`float`): Dropout on the LoRA branch input.
        lora_target_modules (`Optional[Union[list[str], str]]`): Subset of the SMAT linear targets that get LoRA
            factors (names, suffixes or a regex). `None`: every adapted linear layer.
        base_model_class (`Optional[str]`): Recorded on creation; loading onto another class raises an error.
        target_fingerprint (`Optional[str]`): Hash of the adapted parameter names and shapes, recorded on creation
            and checked on load.
        smat_version (`Optional[str]`): Version of smat-peft that created the adapter.
        smat_format_version (`int`): Version of the on-disk adapter format. Loading an adapter written in a newer
            format than this release reads raises an error asking to upgrade smat-peft.
        weights_sha256 (`Optional[str]`): SHA-256 of the weights file saved next to this config, written by
            `save_pretrained` and checked on load (see `smat_peft.integrity`).
        compact (`Optional[dict]`): Set only in compact inference exports (see `smat_peft.export`): the compact
            format version, mask threshold and delta dtype. `None` for ordinary adapters.
        base_weights_fingerprint (`Optional[dict]`): A few values at fixed positions of a fixed sample of the adapted
            base parameters, recorded by `save_pretrained` and compared (within 1%) on load, so an adapter loaded
            onto another checkpoint of the same architecture is refused (`check_base_weights=False` overrides).

    Example:

    ```py
    >>> from smat_peft import SmatConfig
    >>> config = SmatConfig(num_experts=8, sparsity=0.9)
    >>> config.peft_type
    <SmatPeftType.SMAT: 'SMAT'>
    ```
    """

    num_experts: int = field(default=8, metadata={"help": "Number of experts M (masks) sharing one dense delta."})
    sparsity: float = field(default=0.9, metadata={"help": "Target fraction of zeros τ of every expert mask."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names, suffixes or a regex to adapt. Defaults to the attention and MLP linears of known "
            "vision transformers; required for other models."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex never to adapt."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt the layers with these indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the layer list, used together with `layers_to_transform`."}
    )
    target_all_parameters: bool = field(
        default=False,
        metadata={
            "help": "Also adapt LayerNorms, embeddings and every other parameter-owning module except the "
            "classifier (the paper's setting)."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Base-model modules to train and save in full, e.g. ['classifier']."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "Initialise the delta to zero (True) or to small random values (False)."}
    )
    mask_init: Literal["normal", "dense", "random_binary"] = field(
        default="normal",
        metadata={"help": "Initial mask logits: 'normal' (N(mean, std²), the method), 'dense' (all at +clip) or "
                  "'random_binary' (±clip, on with probability 1 − sparsity)."},
    )
    mask_init_mean: float = field(default=0.0, metadata={"help": "Mean of the initial mask logits log α."})
    mask_init_std: float = field(default=0.5, metadata={"help": "Std of the initial mask logits log α."})
    train_masks: bool = field(
        default=True, metadata={"help": "Learn the mask logits (False: keep them fixed at their initial values)."}
    )
    mask_logit_clip: float = field(
        default=math.log(100.0), metadata={"help": "log α is clipped to [-clip, clip] before each training task."}
    )
    hard_concrete_beta: float = field(default=2.0 / 3.0, metadata={"help": "Hard-concrete temperature β."})
    hard_concrete_gamma: float = field(default=-0.1, metadata={"help": "Hard-concrete lower stretch γ (< 0)."})
    hard_concrete_zeta: float = field(default=1.1, metadata={"help": "Hard-concrete upper stretch ζ (> 1)."})
    mask_noise: bool = field(
        default=True,
        metadata={
            "help": "Sample hard-concrete noise u ~ U(0,1) in training (paper). False reproduces the reference "
            "code's deterministic training masks (pitfall P1)."
        },
    )
    mask_noise_table: bool = field(
        default=True,
        metadata={"help": "Slice the training masks' noise from a fixed table of i.i.d. logistic samples at a random "
                  "offset (cheap, exactly distributed) instead of drawing fresh random numbers."},
    )
    structured_mask: bool = field(
        default=False, metadata={"help": "One mask value per input column instead of per element."}
    )
    mask_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Storage dtype of the mask logits log α."}
    )
    router_num_heads: int = field(default=4, metadata={"help": "Attention heads of the router block."})
    router_mlp_ratio: float = field(default=2.0, metadata={"help": "MLP ratio of the router block."})
    router_num_skill_tokens: int = field(default=4, metadata={"help": "Learnable skill tokens of the router."})
    router_spectral_norm: bool = field(default=True, metadata={"help": "Spectral norm on the router's linears."})
    router_temperature: float = field(
        default=5.0, metadata={"help": "Temperature of the relaxed-Bernoulli expert weights at the first training task."}
    )
    router_test_temperature: float = field(
        default=0.5,
        metadata={"help": "Temperature of the expert weights in eval mode, and the lowest of the training schedule."},
    )
    feature_dim: Optional[int] = field(
        default=None,
        metadata={"help": "Size of the support features; inferred for transformers vision models."},
    )
    outside_task: Literal["error", "uniform"] = field(
        default="error",
        metadata={"help": "Forward outside `model.task(...)`: 'error' (raise) or 'uniform' (α = 1/M)."},
    )
    lora_r: Optional[int] = field(default=None, metadata={"help": "Rank of LoRA factors inside SMAT linears."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / lora_r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch input."})
    lora_target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Subset of the SMAT linear targets that get LoRA factors; None means all of them."},
    )
    base_model_class: Optional[str] = field(
        default=None, metadata={"help": "Class of the base model, recorded on creation and checked on load."}
    )
    target_fingerprint: Optional[str] = field(
        default=None, metadata={"help": "Hash of adapted parameter names and shapes, checked on load."}
    )
    smat_version: Optional[str] = field(
        default=None, metadata={"help": "Version of smat-peft that created this adapter."}
    )
    smat_format_version: int = field(
        default=SMAT_FORMAT_VERSION, metadata={"help": "Version of the on-disk adapter format."}
    )
    weights_sha256: Optional[str] = field(
        default=None, metadata={"help": "SHA-256 of the saved weights file, written on save and checked on load."}
    )
    compact: Optional[dict] = field(
        default=None,
        metadata={"help": "Compact inference export block (format version, mask threshold, delta dtype); else None."},
    )
    base_weights_fingerprint: Optional[dict] = field(
        default=None,
        metadata={"help": "A few sampled values of the adapted base weights, recorded on save and checked on load."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SmatPeftType.SMAT
        for name in ("target_modules", "exclude_modules", "lora_target_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, set(value))
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str (regex).")
        if self.layers_pattern and not self.layers_to_transform:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")

        if not isinstance(self.num_experts, int) or isinstance(self.num_experts, bool) or self.num_experts < 1:
            raise ValueError(f"`num_experts` must be a positive int, got {self.num_experts!r}.")
        if self.num_experts > _MAX_EXPERTS:  # every adapted weight stores num_experts mask logits per element
            raise ValueError(
                f"`num_experts` must be at most {_MAX_EXPERTS}, got {self.num_experts}: each expert holds one mask "
                "logit per adapted weight element (the paper uses 8)."
            )
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ValueError(
                f"`sparsity` must be a number in [0, 1), got {self.sparsity!r} ({type(self.sparsity).__name__})."
            )
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"`sparsity` is the target fraction of zeros and must be in [0, 1), got {self.sparsity}.")
        if self.mask_init not in _MASK_INITS:
            raise ValueError(f"`mask_init` must be one of {_MASK_INITS}, got {self.mask_init!r}.")
        if self.mask_init == "dense" and not self.train_masks and self.sparsity > 0:
            raise ValueError(
                f"`mask_init='dense'` with `train_masks=False` keeps every mask at 1, which can never meet "
                f"`sparsity`={self.sparsity}: set `sparsity=0.0` (the one-dense-expert control) or `train_masks=True`."
            )
        if self.mask_init_std < 0:
            raise ValueError(f"`mask_init_std` must be >= 0, got {self.mask_init_std}.")
        if self.mask_logit_clip <= 0:
            raise ValueError(f"`mask_logit_clip` must be > 0, got {self.mask_logit_clip}.")
        if self.hard_concrete_beta <= 0:
            raise ValueError(f"`hard_concrete_beta` must be > 0, got {self.hard_concrete_beta}.")
        if not self.hard_concrete_gamma < 0 or not self.hard_concrete_zeta > 1:
            raise ValueError(
                "The hard-concrete stretch interval must contain [0, 1]: need `hard_concrete_gamma` < 0 and "
                f"`hard_concrete_zeta` > 1, got {self.hard_concrete_gamma} and {self.hard_concrete_zeta}."
            )
        if self.mask_dtype not in DTYPES:
            raise ValueError(f"`mask_dtype` must be one of {tuple(DTYPES)}, got {self.mask_dtype!r}.")
        if self.outside_task not in ("error", "uniform"):
            raise ValueError(f"`outside_task` must be 'error' or 'uniform', got {self.outside_task!r}.")
        if self.router_num_skill_tokens < 0:
            raise ValueError(f"`router_num_skill_tokens` must be >= 0, got {self.router_num_skill_tokens}.")
        for name in ("router_temperature", "router_test_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        if self.feature_dim is not None and (
            self.feature_dim < 1 or self.feature_dim % self.router_num_heads != 0
        ):
            raise ValueError(
                f"`feature_dim` must be a positive multiple of `router_num_heads` ({self.router_num_heads}), "
                f"got {self.feature_dim}."
            )
        if self.lora_r is not None and (not isinstance(self.lora_r, int) or self.lora_r < 1):
            raise ValueError(f"`lora_r` must be None or a positive int, got {self.lora_r!r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout}.")
        if self.lora_target_modules is not None and self.lora_r is None:
            raise ValueError("`lora_target_modules` is set but `lora_r` is None: set `lora_r` to add LoRA factors.")
        if not isinstance(self.smat_format_version, int) or self.smat_format_version < 1:
            raise ValueError(f"`smat_format_version` must be a positive int, got {self.smat_format_version!r}.")
        if self.smat_format_version > SMAT_FORMAT_VERSION:
            raise ValueError(
                f"This SMAT adapter (adapter_config.json) is in format version {self.smat_format_version}, newer than "
                f"smat-peft {__version__} reads (up to {SMAT_FORMAT_VERSION}). Upgrade smat-peft: "
                "`pip install -U smat-peft`."
            )

    @classmethod
    def check_kwargs(cls, **kwargs):
        """peft's hook on the fields read from an `adapter_config.json`: adapters saved before
        `router_test_temperature` existed get the default, with a warning (their test temperature was whatever the
        router's buffer held when they were saved)."""
        if "router_test_temperature" not in kwargs:
            warnings.warn(
                "This SMAT adapter was saved without `router_test_temperature` (smat-peft < 0.2): its routing at "
                f"test time now uses the default temperature {cls.router_test_temperature}. Set "
                "`model.peft_config[name].router_test_temperature` to change it.",
                UserWarning,
                stacklevel=2,
            )
        return super().check_kwargs(**kwargs)


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping a `.json`, `.yaml` or `.yml` file holds; a `ValueError` naming the file if it is not one."""
    with open(path) as f:
        if path.endswith((".yaml", ".yml")):
            import yaml

            try:
                config = yaml.safe_load(f) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"Config file {path!r} is not valid YAML ({error}).") from None
        else:
            try:
                config = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"Config file {path!r} is not valid JSON ({error}); YAML files end in .yaml or "
                                 ".yml.") from None
    if not isinstance(config, dict):
        raise ValueError(f"Config file {path!r} must hold a mapping of argument names to values.")
    return config


def load_smat_config(path: Optional[str] = None, **overrides: Any) -> SmatConfig:
    """A `SmatConfig` from a JSON or YAML file of its fields (`path`; `None`: no file), then `overrides` on top.

    This is what `--smat_config FILE` means for `smat-peft meta-train` and `smat-peft demo`. A `peft_type` key is
    ignored; unknown fields, invalid values and files that are not a JSON or YAML mapping raise a `ValueError` that
    names the file.

    Example:

    ```py
    >>> load_smat_config(None, num_experts=4).num_experts
    4
    >>> load_smat_config("smat.yaml", sparsity=0.8)  # doctest: +SKIP
    ```
    """
    values = read_config_file(path) if path else {}
    known = {f.name for f in fields(SmatConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown SmatConfig field(s) {unknown}. The fields are {sorted(known)} (see "
                         "`help(smat_peft.SmatConfig)`).")
    values.pop("peft_type", None)
    values.update(overrides)
    try:
        return SmatConfig(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}" if path else str(error)) from error
