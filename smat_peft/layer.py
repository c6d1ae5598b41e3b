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
"""The SMAT layer: a shared dense delta δ and `M` expert masks on every parameter of a wrapped module.

For each adapted parameter `p` of the base module, an adapter holds `δ_p` (shape of `p`) and mask logits
`log α_p` (`[M, *mask_shape]`). Given expert weights `α` (set by `SmatModel.task`), the layer's parameters are
`p + (Σ_m α_m z_m) ⊙ δ_p`; they are built once per task and reused by every forward inside it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.func import functional_call

from .config import SmatConfig
from .constants import DTYPES
from .masks import MAX_PACKED_EXPERTS, HardConcrete, merge_dense, merge_packed, pack_binary



def mask_shape(param_shape: torch.Size, structured: bool) -> tuple[int, ...]:
    """Shape of one expert's mask for a parameter: per element, or per input column / output channel."""
    if not structured or len(param_shape) == 1:
        return tuple(param_shape)
    if len(param_shape) == 2:
        return (1, param_shape[1])  # one value per input column of a linear weight
    return (param_shape[0],) + (1,) * (len(param_shape) - 1)  # one value per output channel of a conv


def in_out_features(module: nn.Module) -> tuple[Optional[int], Optional[int]]:
    """`(in_features, out_features)` as peft's layers expose them; `(None, None)` for modules without (LayerNorm, ...)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    if hasattr(module, "in_channels") and hasattr(module, "out_channels"):  # convolutions
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:  # transformers' GPT-2 layer
        return tuple(module.weight.shape)
    return None, None


def initial_mask_logits(config: SmatConfig, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Initial `log α` of one parameter's `M` masks, as `config.mask_init` says (see `SmatConfig`)."""
    log_alpha = torch.empty(shape, dtype=torch.float32, device=device)
    clip = config.mask_logit_clip
    if config.mask_init == "dense":
        log_alpha.fill_(clip)
    elif config.mask_init == "random_binary":
        keep = torch.rand(shape, device=device) >= config.sparsity
        log_alpha = torch.where(keep, clip, -clip).to(torch.float32)
    else:
        log_alpha.normal_(config.mask_init_mean, config.mask_init_std)
    return log_alpha.to(DTYPES[config.mask_dtype])


class SmatLayer(BaseTunerLayer):
    """Mixin holding SMAT's per-adapter state for one wrapped module (see the module docstring)."""

    # Per-adapter trainable containers: one ParameterList entry per adapted base parameter.
    adapter_layer_names = ("smat_delta", "smat_log_alpha", "smat_lora_A", "smat_lora_B")
    # Per-adapter non-trainable configuration.
    other_param_names = ("smat_config", "smat_lora_dropout", "smat_lora_scaling")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.smat_delta = nn.ModuleDict({})
        self.smat_log_alpha = nn.ModuleDict({})
        self.smat_lora_A = nn.ModuleDict({})
        self.smat_lora_B = nn.ModuleDict({})
        self.smat_lora_dropout = nn.ModuleDict({})
        self.smat_lora_scaling: dict[str, float] = {}
        self.smat_config: dict[str, SmatConfig] = {}
        # peft's hook for adapter weights that stay frozen: the mask logits of `SmatConfig(train_masks=False)`
        self.frozen_peft_weight_names: dict[str, tuple[str, ...]] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        # Names of the adapted parameters of the base module, in the order of the ParameterLists.
        self.param_names = [name for name, _ in self.get_base_layer().named_parameters()]
        # Task state, set by `SmatModel.task`: per adapter, the per-parameter deltas of the current task.
        self._task_deltas: dict[str, list[torch.Tensor]] = {}
        self._task_sampled = False  # the task's deltas use sampled (training) masks and routing
        self._effective: Optional[tuple[tuple[str, ...], list[torch.Tensor]]] = None
        self._eval_masks: dict[tuple, tuple] = {}
        self._original_params: Optional[list[torch.Tensor]] = None
        # Set by `SmatModel` while it computes support features with the frozen pre-trained backbone.
        self.pretrained_only = False
        self.in_features, self.out_features = in_out_features(self.get_base_layer())

    @property
    def base_params(self) -> list[nn.Parameter]:
        named = dict(self.get_base_layer().named_parameters())
        return [named[name] for name in self.param_names]

    def update_layer(self, adapter_name: str, config: SmatConfig, use_lora: bool = False) -> None:
        """Create the delta, mask logits and (optionally) LoRA factors of a new adapter."""
        if not self.param_names:
            raise TypeError(f"{type(self.get_base_layer()).__name__} has no parameters for SMAT to adapt.")
        params = self.base_params
        device = params[0].device
        deltas, logits = nn.ParameterList(), nn.ParameterList()
        for p in params:
            dtype = p.dtype if p.dtype.is_floating_point else torch.float32
            delta = torch.zeros(p.shape, dtype=dtype, device=device)
            if not config.init_weights:
                delta.normal_(0.0, 0.02)
            deltas.append(nn.Parameter(delta))
            shape = (config.num_experts,) + mask_shape(p.shape, config.structured_mask)
            logits.append(nn.Parameter(initial_mask_logits(config, shape, device)))
        self.smat_delta[adapter_name] = deltas
        self.smat_log_alpha[adapter_name] = logits
        self.smat_config[adapter_name] = config
        if not config.train_masks:
            self.frozen_peft_weight_names[adapter_name] = ("smat_log_alpha",)

        if use_lora:
            base = self.get_base_layer()
            self.smat_lora_A[adapter_name] = nn.Linear(base.in_features, config.lora_r, bias=False, device=device)
            self.smat_lora_B[adapter_name] = nn.Linear(config.lora_r, base.out_features, bias=False, device=device)
            nn.init.kaiming_uniform_(self.smat_lora_A[adapter_name].weight, a=math.sqrt(5))
            if config.init_weights:
                nn.init.zeros_(self.smat_lora_B[adapter_name].weight)
            else:
                nn.init.normal_(self.smat_lora_B[adapter_name].weight, std=0.02)
            dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
            self.smat_lora_dropout[adapter_name] = dropout.train(getattr(self, "training", True))
            self.smat_lora_scaling[adapter_name] = config.lora_alpha / config.lora_r
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    # ----------------------------------------------------------------------------------------------------------
    # masks
    def clip_mask_logits_(self) -> None:
        """Clip every adapter's `log α` to `[-clip, clip]` in place."""
        with torch.no_grad():
            for adapter, logits in self.smat_log_alpha.items():
                clip = self.smat_config[adapter].mask_logit_clip
                for log_alpha in logits:
                    log_alpha.clamp_(-clip, clip)

    def _eval_mask(self, adapter: str, index: int) -> tuple[torch.Tensor, bool]:
        """Deterministic masks of one parameter, cached until `log α` changes.

        Returns `(masks, packed)`: packed int32 codes if every mask is binary, else the dense `[M, ...]` masks.
        """
        log_alpha = self.smat_log_alpha[adapter][index]
        key = (log_alpha._version, log_alpha.data_ptr(), log_alpha.dtype, log_alpha.device)
        cached = self._eval_masks.get((adapter, index))
        if cached is not None and cached[0] == key:
            return cached[1:]
        with torch.no_grad():
            masks = HardConcrete.from_config(self.smat_config[adapter]).eval_mask(log_alpha)
            packed = masks.shape[0] <= MAX_PACKED_EXPERTS and bool(((masks == 0) | (masks == 1)).all())
            value = pack_binary(masks) if packed else masks
        self._eval_masks[(adapter, index)] = (key, value, packed)
        return value, packed

    def merged_masks(self, adapter: str, weights: torch.Tensor, sample: Optional[bool] = None) -> list[torch.Tensor]:
        """`Σ_m α_m z_m` for every adapted parameter: sampled hard-concrete masks if `sample` (default: in training),
        the deterministic eval masks otherwise."""
        hc = HardConcrete.from_config(self.smat_config[adapter])
        sample = self.training if sample is None else sample
        merged = []
        for index in range(len(self.param_names)):
            if sample:
                merged.append(hc.sample_merged(self.smat_log_alpha[adapter][index], weights))
            else:
                value, packed = self._eval_mask(adapter, index)
                merged.append(merge_packed(value, weights.float()) if packed else merge_dense(value, weights))
        return merged

    def eval_mask_nonzero(self, adapter: str) -> torch.Tensor:
        """Number of non-zero elements of each expert's eval mask over all adapted parameters `[M]`.

        Counted from `log α` against the eval threshold, without building the masks; cached until `log α` changes.
        """
        hc = HardConcrete.from_config(self.smat_config[adapter])
        total = 0
        for index, p in enumerate(self.base_params):
            log_alpha = self.smat_log_alpha[adapter][index]
            key = ("nonzero", adapter, index)
            version = (log_alpha._version, log_alpha.data_ptr())
            cached = self._eval_masks.get(key)
            if cached is None or cached[0] != version:
                with torch.no_grad():
                    count = (log_alpha > hc.eval_nonzero_threshold).flatten(1).sum(1).float()
                    cached = (version, count * (p.numel() // log_alpha[0].numel()))
                self._eval_masks[key] = cached
            total = total + cached[1]
        return total

    def expected_nonzero(self, adapter: str) -> torch.Tensor:
        """Expected number of non-zero mask elements per expert `[M]` (expected L0), differentiable w.r.t. `log α`."""
        hc = HardConcrete.from_config(self.smat_config[adapter])
        total = 0
        for index, p in enumerate(self.base_params):
            log_alpha = self.smat_log_alpha[adapter][index]
            repeat = p.numel() // log_alpha[0].numel()
            total = total + hc.prob_nonzero(log_alpha).flatten(1).sum(1) * repeat
        return total

    @property
    def num_masked_elements(self) -> int:
        return sum(p.numel() for p in self.base_params)

    # ----------------------------------------------------------------------------------------------------------
    # task weights
    def task_deltas(self, adapter: str, weights: torch.Tensor, sample: Optional[bool] = None) -> list[torch.Tensor]:
        """Per-parameter deltas `(Σ_m α_m z_m) ⊙ δ` of one adapter for expert weights `α` (masks: see
        [`~SmatLayer.merged_masks`])."""
        self._check_materialized(adapter)
        masks = self.merged_masks(adapter, weights, sample=sample)
        return [m * d for m, d in zip(masks, self.smat_delta[adapter])]

    def _check_materialized(self, adapter: str) -> None:
        if any(d.is_meta for d in self.smat_delta[adapter]) or any(a.is_meta for a in self.smat_log_alpha[adapter]):
            raise RuntimeError(
                f"The SMAT adapter '{adapter}' has no weights (meta device): it was created with "
                "low_cpu_mem_usage=True and its weights were never loaded. Load it with PeftModel.from_pretrained / "
                "load_adapter from a directory holding its adapter_model.safetensors, or create it without "
                "low_cpu_mem_usage."
            )

    def set_task(self, adapter: str, weights: torch.Tensor) -> None:
        """Build and keep this adapter's task deltas for expert weights `α` (called once per task)."""
        if adapter in self.smat_delta:
            self._task_deltas[adapter] = self.task_deltas(adapter, weights)
            self._task_sampled = self.training
            self._effective = None

    def clear_task(self) -> None:
        self._task_deltas.clear()
        self._task_sampled = False
        self._effective = None

    def _adapter_deltas(self, adapter: str, merging: bool = False) -> list[torch.Tensor]:
        """The adapter's per-parameter deltas now: the task's, or outside a task `α = 1/M` (`outside_task="uniform"`).

        `merging=True` asks for what a merge writes into the base weights: always the deterministic eval masks, so
        that merging is reproducible also in training mode.
        """
        if adapter in self._task_deltas:
            if merging and self._task_sampled:
                raise RuntimeError(
                    f"Cannot merge the SMAT adapter '{adapter}' inside a task entered in training mode: that task's "
                    "weights use sampled masks and noisy expert weights, and a merge must deploy the deterministic "
                    "eval masks. Call `model.eval()` before `with model.task(...)`, or use "
                    "`model.merge_task(support_pixel_values, support_labels)`, which always merges in eval mode."
                )
            return self._task_deltas[adapter]
        config = self.smat_config[adapter]
        if config.outside_task == "uniform":
            uniform = torch.full((config.num_experts,), 1.0 / config.num_experts, device=self.base_params[0].device)
            return self.task_deltas(adapter, uniform, sample=False if merging else None)
        raise RuntimeError(
            f"The SMAT adapter '{adapter}' is conditioned on a support set: run the model inside "
            "`with model.task(support_pixel_values, support_labels): ...`, or create the adapter with "
            "`SmatConfig(outside_task='uniform')` to use equal expert weights outside a task."
        )

    def lora_weight(self, adapter: str) -> torch.Tensor:
        """`s·BA`, the LoRA branch of `adapter` as a weight delta."""
        return self.smat_lora_scaling[adapter] * (self.smat_lora_B[adapter].weight @ self.smat_lora_A[adapter].weight)

    def get_delta_params(self, adapter: str) -> list[torch.Tensor]:
        """What merging `adapter` adds to each base parameter (task delta, plus `s·BA` on a LoRA weight).

        Always built from the deterministic eval masks (outside a task: `α = 1/M`), also in training mode.
        """
        deltas = list(self._adapter_deltas(adapter, merging=True))
        if adapter in self.smat_lora_A:
            deltas[self.param_names.index("weight")] = deltas[self.param_names.index("weight")] + self.lora_weight(
                adapter
            )
        return deltas

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The delta of the `weight` parameter, as peft's layers expose it."""
        return self.get_delta_params(adapter)[self.param_names.index("weight")]

    def active_smat_adapters(self) -> list[str]:
        """The active adapters that are SMAT adapters of this layer."""
        return [a for a in self.active_adapters if a in self.smat_delta]

    def effective_params(self) -> list[torch.Tensor]:
        """Base parameters plus the active adapters' deltas (without LoRA, which runs as a side branch)."""
        active = tuple(self.active_smat_adapters())
        if self._effective is not None and self._effective[0] == active:
            return self._effective[1]
        params = list(self.base_params)
        for adapter in active:
            params = [p + d.to(p.dtype) for p, d in zip(params, self._adapter_deltas(adapter))]
        if all(a in self._task_deltas for a in active):
            self._effective = (active, params)
        return params

    def set_effective_params(self, params: list[torch.Tensor]) -> None:
        """Use these parameters (one per adapted base parameter) for forwards until the task changes."""
        if len(params) != len(self.param_names):
            raise ValueError(f"Expected {len(self.param_names)} parameters ({self.param_names}), got {len(params)}.")
        self._effective = (tuple(self.active_smat_adapters()), list(params))

    def merged_params(self) -> list[torch.Tensor]:
        """The current task's parameters with each active adapter's LoRA folded into the weight (`θ_i + s·BA`):
        what a plain copy of the base module needs to compute what this layer computes."""
        params = list(self.effective_params())
        lora = [a for a in self.active_smat_adapters() if a in self.smat_lora_A]
        if lora:
            index = self.param_names.index("weight")
            params[index] = params[index] + sum(self.lora_weight(a).to(params[index].dtype) for a in lora)
        return params

    # ----------------------------------------------------------------------------------------------------------
    # merging
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Write the current task's weights of the given (default: active) adapters into the base parameters."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [a for a in adapter_names if a in self.smat_delta]
        if not adapter_names:
            return
        params = self.base_params
        with torch.no_grad():
            if self._original_params is None:
                self._original_params = [p.detach().clone() for p in params]
            for adapter in adapter_names:
                deltas = self.get_delta_params(adapter)
                merged = [p + d.to(p.dtype) for p, d in zip(params, deltas)]
                if safe_merge and not all(torch.isfinite(m).all() for m in merged):
                    raise ValueError(
                        f"NaNs or infs detected in the merged weights. The adapter {adapter} seems to be broken."
                    )
                for p, m in zip(params, merged):
                    p.data.copy_(m)
                self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Restore the base parameters exactly as they were before merging."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        with torch.no_grad():
            for p, original in zip(self.base_params, self._original_params):
                p.data.copy_(original)
        self._original_params = None
        self.merged_adapters = []

    def forget_merge(self) -> None:
        """Drop what `unmerge` would restore: after `merge_and_unload` the base module belongs to the returned
        model, and leaving a task must not write into it."""
        self._original_params, self.merged_adapters = None, []


class SmatModule(nn.Module, SmatLayer):
    """SMAT applied to any module that owns parameters; `nn.Linear` takes a fast `F.linear` path.

    Other modules (LayerNorm, Conv2d, embeddings, ...) run their own forward with the task's parameters
    substituted through `torch.func.functional_call`.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SmatConfig, use_lora: bool = False) -> None:
        super().__init__()
        SmatLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, use_lora=use_lora)

    def _run(self, params: list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        base = self.get_base_layer()
        if type(base) is nn.Linear and len(args) == 1 and not kwargs:
            weight = params[0]
            bias = params[1] if len(params) > 1 else None
            return F.linear(self._cast_input_dtype(args[0], weight.dtype), weight, bias)
        return functional_call(base, dict(zip(self.param_names, params)), args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.disable_adapters and self.merged:
            self.unmerge()
        if self.disable_adapters or (self.pretrained_only and not self.merged):
            return self.base_layer(*args, **kwargs)
        if self.pretrained_only:  # merged, but the frozen pre-trained weights are asked for
            return self._run(self._original_params, *args, **kwargs)
        active = self.active_smat_adapters()
        if self.merged or not active:
            return self.base_layer(*args, **kwargs)
        x = args[0] if args else None
        previous_dtype = x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else None
        result = self._run(self.effective_params(), *args, **kwargs)
        for adapter in active:
            if adapter not in self.smat_lora_A:
                continue
            lora_A, lora_B = self.smat_lora_A[adapter], self.smat_lora_B[adapter]
            h = self._cast_input_dtype(self.smat_lora_dropout[adapter](x), lora_A.weight.dtype)
            result = result + (lora_B(lora_A(h)) * self.smat_lora_scaling[adapter]).to(result.dtype)
        if previous_dtype is not None and isinstance(result, torch.Tensor) and result.is_floating_point():
            result = result.to(previous_dtype)
        return result

    def __getattr__(self, name: str) -> Any:
        # Model code reads attributes of the modules it owns (e.g. ViT reads
        # `embeddings.patch_embeddings.projection.weight.dtype`): forward what the wrapper lacks to the base module.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def __repr__(self) -> str:
        return "smat." + super().__repr__()


def strip_smat_layers(model: nn.Module) -> None:
    """Undo an injection that failed half-way: put the original modules back in place of SMAT layers and
    `modules_to_save` wrappers, and drop the model's `peft_config` (what a failed load or compact load leaves)."""
    from peft.utils import ModulesToSaveWrapper

    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, (SmatLayer, ModulesToSaveWrapper))]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        original = module.original_module if isinstance(module, ModulesToSaveWrapper) else module.get_base_layer()
        setattr(model.get_submodule(parent_name), child, original)
    if "peft_config" in model.__dict__:
        del model.peft_config
