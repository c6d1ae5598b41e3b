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
"""`SmatModel`: the peft tuner that injects SMAT layers, owns the routers, and conditions the model on tasks."""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from peft.utils import ModulesToSaveWrapper
from torch import nn

from .constants import DTYPES, __version__
from .config import SmatConfig
from .heads import class_prototypes
from .layer import SmatLayer, SmatModule
from .peft_type import PREFIX
from .router import RouterOutput, SmatRouter
from .targets import (
    DEFAULT_TARGET_MODULES,
    FeatureFn,
    default_features,
    infer_feature_dim,
    parameter_units,
    reads_weights_directly,
)
from .validation import check_eval_results, check_pixel_values, check_support


class SmatModel(BaseTuner):
    """
    Sparse interpolated experts (SMAT) for a vision model, conditioned on a task's support set.

    Every targeted module gets one shared dense delta `δ` per parameter and `M` hard-concrete masks; a router reads
    the class prototypes of a support set (computed by the frozen pre-trained backbone) and outputs expert weights
    `α`. Inside `with model.task(support_pixel_values, support_labels):` every SMAT layer uses
    `θ_i = θ_pre + (Σ_m α_m z_m) ⊙ δ`, built once on entry.

    Args:
        model ([`torch.nn.Module`]): The model to adapt.
        config ([`SmatConfig`]): The configuration of the SMAT adapter.
        adapter_name (`str`): The name of the adapter, defaults to `"default"`.
        low_cpu_mem_usage (`bool`): Create empty adapter weights on the meta device.

    Example:

    ```py
    >>> import torch
    >>> from transformers import ViTConfig, ViTModel
    >>> from smat_peft import SmatConfig, get_smat_model
    >>> vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                          intermediate_size=64, image_size=32, patch_size=8))
    >>> model = get_smat_model(vit, SmatConfig(num_experts=4, sparsity=0.9))
    >>> support, labels = torch.randn(10, 3, 32, 32), torch.arange(5).repeat(2)
    >>> with model.task(support, labels):
    ...     out = model(pixel_values=torch.randn(3, 3, 32, 32))
    >>> model.expert_weights(support, labels).shape
    torch.Size([4])
    ```
    """

    prefix: str = PREFIX
    tuner_layer_cls = SmatLayer
    target_module_mapping = DEFAULT_TARGET_MODULES
    # The routers live on the tuner, not in the layers: peft's `inject_adapter_in_model` reads this and refuses
    # (it cannot return them), so SMAT is used through `get_peft_model` / `PeftModel`.
    uses_shared_state: bool = True

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        self._feature_fn: Optional[FeatureFn] = None
        self._in_task = False
        self.last_router_outputs: dict[str, RouterOutput] = {}
        self._warned_untrained_router: set[str] = set()
        # Per adapter: results and meta-training facts for its model card (see `record_eval_results`).
        self.card_records: dict[str, dict[str, Any]] = {}
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    # ----------------------------------------------------------------------------------------------------------
    # injection
    def _prepare_adapter_config(self, peft_config: SmatConfig, model_config: dict) -> SmatConfig:
        if peft_config.target_all_parameters or peft_config.target_modules is not None:
            return peft_config
        model_type = model_config.get("model_type")
        if model_type not in self.target_module_mapping:
            raise ValueError(
                f"SMAT has no default target modules for model_type {model_type!r} (known: "
                f"{sorted(self.target_module_mapping)}). Pass `target_modules` in the SmatConfig, e.g. "
                "SmatConfig(target_modules=['qkv', 'proj', 'fc1', 'fc2']) for a timm ViT, or "
                "`target_all_parameters=True` to adapt every parameter-owning module."
            )
        peft_config.target_modules = set(self.target_module_mapping[model_type])
        return peft_config

    def _prepare_model(self, peft_config: SmatConfig, model: nn.Module) -> None:
        self._parameter_units = set(parameter_units(model)) if peft_config.target_all_parameters else set()

    def _check_target_module_exists(self, peft_config: SmatConfig, key: str):
        if peft_config.target_all_parameters:
            if key not in self._parameter_units:
                return False
            probe = copy.copy(peft_config)
            probe.target_modules = {key}
            return check_target_module_exists(probe, key)
        matched = check_target_module_exists(peft_config, key)
        if matched and reads_weights_directly(self.model, key):
            # e.g. SigLIP's pooling head: nn.MultiheadAttention reads out_proj.weight without calling out_proj.
            return False
        return matched

    def _create_and_replace(
        self, config: SmatConfig, adapter_name: str, target, target_name, parent, current_key, **kwargs
    ) -> None:
        base = target.get_base_layer() if isinstance(target, SmatLayer) else target
        use_lora = config.lora_r is not None and isinstance(base, nn.Linear)
        if use_lora and config.lora_target_modules is not None:
            probe = copy.copy(config)
            probe.target_modules, probe.exclude_modules = config.lora_target_modules, None
            use_lora = bool(check_target_module_exists(probe, current_key))
        if isinstance(target, SmatLayer):
            target.update_layer(adapter_name, config, use_lora=use_lora)
            return
        new_module = self._create_new_module(config, adapter_name, target, use_lora=use_lora)
        new_module.train(target.training)  # an adapter added to a model in eval mode must not sample masks
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(config: SmatConfig, adapter_name: str, target: nn.Module, use_lora: bool = False):
        if next(target.parameters(), None) is None:
            raise TypeError(f"Target module {target} has no parameters; SMAT adapts modules that own parameters.")
        return SmatModule(target, adapter_name, config, use_lora=use_lora)

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
    ) -> None:
        config: SmatConfig = self.peft_config[adapter_name]
        model_class = type(model).__name__
        if config.base_model_class is not None and config.base_model_class != model_class:
            raise ValueError(
                f"The SMAT adapter '{adapter_name}' was created for a {config.base_model_class}, but the base model "
                f"is a {model_class}. Load it onto a {config.base_model_class} built from the same checkpoint."
            )
        self._prepare_adapter_config(config, self.get_model_config(model))  # fail on targets before the router
        if "smat_router" not in self._modules:
            self.smat_router = nn.ModuleDict()
        router = self._make_router(config, model)
        if router is not None:  # None: no inferable feature size; the adapter then works outside tasks only
            self.smat_router[adapter_name] = router.train(model.training)
        try:
            super().inject_adapter(
                model,
                adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=low_cpu_mem_usage,
                state_dict=state_dict,
            )
        except Exception:
            self.smat_router.pop(adapter_name, None)
            raise
        if config.lora_r is not None and config.lora_target_modules is not None and not any(
            adapter_name in layer.smat_lora_A for _, layer in self.smat_layers()
        ):
            patterns = config.lora_target_modules
            patterns = patterns if isinstance(patterns, str) else sorted(patterns)
            warnings.warn(
                f"`lora_target_modules`={patterns!r} matched none of the SMAT adapter '{adapter_name}''s linear layers, so it has no LoRA factors. Name "
                "some of its linear targets (module names or suffixes, e.g. ['q_proj', 'v_proj']), or drop `lora_r`.",
                UserWarning,
                stacklevel=2,
            )
        fingerprint = self._target_fingerprint(adapter_name)
        if config.target_fingerprint is not None and config.target_fingerprint != fingerprint:
            raise ValueError(
                f"The SMAT adapter '{adapter_name}' does not fit this {model_class}: the names and shapes of the "
                f"parameters it adapts differ (adapter fingerprint {config.target_fingerprint}, this model "
                f"{fingerprint}). It was created for a {config.base_model_class} with other dimensions or targets; "
                "load it onto the base model it was trained from."
            )
        config.target_fingerprint = fingerprint
        config.base_model_class = config.base_model_class or model_class
        config.smat_version = config.smat_version or __version__

    def _make_router(self, config: SmatConfig, model: nn.Module) -> Optional[SmatRouter]:
        """The adapter's router, or `None` when the size of the support features is neither given nor inferable.

        Without a router the adapter still works outside tasks (`outside_task="uniform"`); `task(...)` then raises
        (see `route`). Under peft's `low_cpu_mem_usage=True` the router is created on the meta device and stays
        there until the adapter's weights are loaded into it (`load_state_dict(..., assign=True)`).
        """
        feature_dim = config.feature_dim or infer_feature_dim(model)
        if feature_dim is None:
            return None
        router = SmatRouter.from_config(config, feature_dim)
        if any(t.is_meta for t in router.state_dict().values()):
            return router  # low_cpu_mem_usage: nothing to copy yet
        device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
        return router.to(device)

    def _target_fingerprint(self, adapter_name: str) -> str:
        entries = []
        for name, layer in self.smat_layers():
            if adapter_name in layer.smat_delta:
                entries += [f"{name}.{p}:{tuple(d.shape)}" for p, d in zip(layer.param_names, layer.smat_delta[adapter_name])]
        return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]

    # ----------------------------------------------------------------------------------------------------------
    # peft bookkeeping for the routers
    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """peft enters this around every `PeftModel.forward`. A training forward outside a task uses `α = 1/M`
        (`outside_task="uniform"`), so the router takes no part in it and gets no gradient: say so, once per adapter.
        """
        if self.training and torch.is_grad_enabled() and not self._in_task:
            for name in self.active_adapters:
                router = self.smat_router[name] if name in self.smat_router else None
                if (
                    router is None
                    or name in self._warned_untrained_router
                    or self.peft_config[name].outside_task != "uniform"
                    or not any(p.requires_grad for p in router.parameters())
                ):
                    continue
                self._warned_untrained_router.add(name)
                warnings.warn(
                    f"The SMAT adapter '{name}' runs outside `model.task(...)` with equal expert weights (α = 1/M), so "
                    "its router takes no part in this forward and receives no gradient: training here updates δ, "
                    "the mask logits (and LoRA factors), not the router. To train the router, compute the loss "
                    "inside `with model.task(support_pixel_values, support_labels):`; to keep it out of the "
                    f"optimizer, call `model.base_model.smat_router['{name}'].requires_grad_(False)`.",
                    UserWarning,
                    stacklevel=4,
                )
        yield

    def _set_router_requires_grad(self) -> None:
        for name, router in self.smat_router.items():
            trainable = name in self.active_adapters and not self.peft_config[name].inference_mode
            router.requires_grad_(trainable)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        self._set_router_requires_grad()

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        for name, router in self.smat_router.items():
            names = [adapter_name] if isinstance(adapter_name, str) else adapter_name
            router.requires_grad_(name in names and not inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name in self.smat_router:
            del self.smat_router[adapter_name]
        self.card_records.pop(adapter_name, None)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Give the adapter peft's dtypes; peft calls this after `get_peft_model`, `add_adapter` and `load_adapter`.

        With `autocast_adapter_dtype=True`, δ, the LoRA factors and the router are float32 on a 16-bit base model
        (and keep the base dtype otherwise, e.g. float64); with `False` they follow the dtype of the base parameter
        they adapt (the router: the dtype of the adapted parameters). The mask logits `log α` follow the same rule,
        except that a 16-bit `SmatConfig.mask_dtype` always stores them in that dtype (a deliberate storage choice).
        Parameters are converted in place (`.data`), so optimizers holding them stay valid.
        """
        config = self.peft_config[adapter_name]
        mask_dtype = DTYPES[config.mask_dtype]
        adapted_dtypes = []
        for name, layer in self.smat_layers():
            if adapter_name not in layer.smat_delta:
                continue
            dtypes = [self._adapter_dtype(adapter_name, f"{name}.{p}", b.dtype, autocast_adapter_dtype)
                      for p, b in zip(layer.param_names, layer.base_params)]
            adapted_dtypes += dtypes
            for delta, log_alpha, dtype in zip(layer.smat_delta[adapter_name], layer.smat_log_alpha[adapter_name], dtypes):
                _cast_(delta, dtype)
                _cast_(log_alpha, dtype if mask_dtype == torch.float32 else mask_dtype)
            if adapter_name in layer.smat_lora_A:
                dtype = dtypes[layer.param_names.index("weight")]
                for factor in (layer.smat_lora_A[adapter_name], layer.smat_lora_B[adapter_name]):
                    _cast_(factor.weight, dtype)
        router = self.smat_router[adapter_name] if adapter_name in self.smat_router else None
        if router is not None:
            dtype = adapted_dtypes[0] if adapted_dtypes else torch.float32
            device = next((p.device for p in self.model.parameters() if not p.is_meta), None)
            for tensor in router.state_dict(keep_vars=True).values():
                if tensor.is_floating_point():
                    _cast_(tensor, dtype)
            if device is not None and not any(t.is_meta for t in router.state_dict().values()):
                router.to(device)  # after a low_cpu_mem_usage load the weights sit where they were read

    @staticmethod
    def _adapter_dtype(adapter_name: str, param_name: str, base_dtype: torch.dtype, autocast: bool) -> torch.dtype:
        if base_dtype in (torch.float16, torch.bfloat16) or (autocast and not base_dtype.is_floating_point):
            return torch.float32 if autocast else base_dtype
        if not base_dtype.is_floating_point:
            raise TypeError(
                f"The SMAT adapter '{adapter_name}' cannot follow the dtype {base_dtype} of the base parameter "
                f"{param_name}: adapter weights must be floating point. Load it with autocast_adapter_dtype=True "
                "(the default), which keeps the adapter in float32."
            )
        return base_dtype

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        layers = [layer for _, layer in self.smat_layers()]
        model = super()._unload_and_optionally_merge(merge=merge, **kwargs)
        for layer in layers:
            # The base modules now belong to the returned model: leaving a task must not restore them.
            layer.forget_merge()
        return model

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # SMAT keys nest the adapter name after the container: `q_proj.smat_delta.<adapter>.0`,
        # `smat_router.<adapter>.qkv.parametrizations.weight.original`; drop exactly that segment.
        pattern = r"(\.?" + re.escape(PREFIX) + r"[a-zA-Z_]+)\." + re.escape(adapter_name) + r"(?=\.|$)"
        return re.sub(pattern, r"\1", key, count=1)

    def smat_layers(self) -> Iterator[tuple[str, SmatLayer]]:
        """The SMAT layers of the model, with their module names."""
        for name, module in self.model.named_modules():
            if isinstance(module, SmatLayer):
                yield name, module

    # ----------------------------------------------------------------------------------------------------------
    # support sets and tasks
    def set_feature_fn(self, feature_fn: Optional[FeatureFn]) -> None:
        """Use `feature_fn(model, pixel_values) -> [N, D]` for support features (`None`: the default).

        The function runs with the adapters bypassed and without gradients, i.e. on the frozen pre-trained model.
        """
        self._feature_fn = feature_fn

    @contextmanager
    def _frozen_backbone(self) -> Iterator[None]:
        layers = [layer for _, layer in self.smat_layers()]
        for layer in layers:
            layer.pretrained_only = True
        try:
            yield
        finally:
            for layer in layers:
                layer.pretrained_only = False

    def support_features(self, support_pixel_values: torch.Tensor, **forward_kwargs: Any) -> torch.Tensor:
        """Features `[N, D]` of support images from the frozen pre-trained backbone (adapters bypassed, no grad)."""
        check_pixel_values(self.model, support_pixel_values, "support_pixel_values")
        feature_fn = self._feature_fn or default_features
        with torch.no_grad(), self._frozen_backbone():
            try:
                features = feature_fn(self.model, support_pixel_values, **forward_kwargs)
            except (RuntimeError, ValueError) as error:
                raise ValueError(
                    f"The backbone could not process support_pixel_values of shape "
                    f"{tuple(support_pixel_values.shape)}: {error}. Preprocess the images with the model's image "
                    "processor (size and channels of its config), or pass e.g. `interpolate_pos_encoding=True` to "
                    "`task(...)` for a model that supports other image sizes."
                ) from error
        return features.float()

    def prototypes(
        self,
        support_pixel_values: torch.Tensor,
        support_labels: torch.Tensor,
        num_classes: Optional[int] = None,
        **forward_kwargs: Any,
    ) -> torch.Tensor:
        """Class prototypes `[num_classes, D]`: mean frozen-backbone features of each class's support images."""
        labels, num_classes = check_support(support_pixel_values, support_labels, num_classes)
        return class_prototypes(self.support_features(support_pixel_values, **forward_kwargs), labels, num_classes)

    def route(self, prototypes: torch.Tensor, adapter_name: Optional[str] = None) -> RouterOutput:
        """Expert weights of one adapter for given class prototypes."""
        adapter_name = adapter_name or self.active_adapters[0]
        router = self._router(adapter_name)
        if prototypes.shape[-1] != router.feature_dim:
            raise ValueError(
                f"The support features have size {prototypes.shape[-1]}, but the router of adapter "
                f"'{adapter_name}' expects {router.feature_dim}. Set SmatConfig(feature_dim=...) to the size your "
                "feature function returns."
            )
        out = router(prototypes.to(router.keys.device))
        if not torch.isfinite(out.weights).all():
            raise FloatingPointError(
                f"The router of adapter '{adapter_name}' produced non-finite expert weights {out.weights.tolist()} "
                "(non-finite support features or router parameters; check the inputs and the training loss)."
            )
        return out

    def _router(self, adapter_name: str) -> SmatRouter:
        if adapter_name not in self.smat_router:
            raise ValueError(
                f"The SMAT adapter '{adapter_name}' has no router: the size of the support features of a "
                f"{type(self.model).__name__} could not be inferred when the adapter was created, so it only works "
                "outside tasks (SmatConfig(outside_task='uniform')). To condition it on support sets, create it with "
                "SmatConfig(feature_dim=...) set to the size your features have (see `set_feature_fn`)."
            )
        router = self.smat_router[adapter_name]
        if any(t.is_meta for t in router.state_dict().values()):
            raise RuntimeError(
                f"The router of the SMAT adapter '{adapter_name}' has no weights (meta device): the adapter was created "
                "with low_cpu_mem_usage=True and its weights were never loaded. Load it with "
                "PeftModel.from_pretrained / load_adapter from a directory holding its adapter_model.safetensors, or "
                "create it without low_cpu_mem_usage."
            )
        return router

    @contextmanager
    def task(
        self,
        support_pixel_values: torch.Tensor,
        support_labels: torch.Tensor,
        num_classes: Optional[int] = None,
        *,
        prototypes: Optional[torch.Tensor] = None,
        **forward_kwargs: Any,
    ) -> Iterator[dict[str, RouterOutput]]:
        """Condition every SMAT layer on a support set; the task weights are built once, on entry.

        Args:
            support_pixel_values (`torch.Tensor` of shape `[N, C, H, W]`): The support images.
            support_labels (`torch.Tensor` of shape `[N]`): Class indices in `[0, num_classes)`, every class present.
            num_classes (`int`, *optional*): Number of classes (ways); defaults to `max(label) + 1`.
            prototypes (`torch.Tensor` of shape `[num_classes, D]`, *optional*): Class prototypes of the frozen
                backbone, if already computed (see [`~SmatModel.prototypes`]); skips the support forward.
            forward_kwargs: Passed to the backbone when computing support features (e.g.
                `interpolate_pos_encoding=True`).

        Yields:
            `dict[str, RouterOutput]`: the router output of each active adapter.

        Gradients flow from losses computed inside the context to `δ`, the masks and the router; since the
        weights are built once, use one backward pass per context (one episode), as meta-training does.
        """
        if self._in_task:
            raise RuntimeError("Already inside `model.task(...)`: task contexts cannot be nested.")
        if any(layer.merged for _, layer in self.smat_layers()):
            raise RuntimeError(
                "The SMAT adapter is merged into the base weights; call `model.unmerge_adapter()` before "
                "conditioning on a new task."
            )
        adapted = {name for _, layer in self.smat_layers() for name in layer.smat_delta}
        missing = [name for name in self.active_adapters if name not in adapted]
        if missing:
            raise RuntimeError(
                f"The SMAT adapter(s) {missing} adapt no layer of this model any more (after `merge_and_unload()` or "
                "`unload()` the SMAT layers are gone), so a task would compute α and condition nothing. Use the "
                "model returned by `merge_task(...)` for a task's merged weights, or load the adapter again."
            )
        if self.training and not torch.is_grad_enabled() and any(
            p.requires_grad for _, layer in self.smat_layers() for p in layer.parameters()
        ):
            warnings.warn(
                "`model.task(...)` entered under `torch.no_grad()` while the model is in training mode: the task "
                "weights are built without a graph, so losses computed in this task give δ, the masks and the router "
                "no gradient. Enter the task outside `torch.no_grad()` to train, or call `model.eval()` for inference.",
                UserWarning,
                stacklevel=3,
            )
        for name in self.active_adapters:
            self._router(name)  # an adapter without a router (or its weights) fails before the support forward
        if prototypes is None:
            prototypes = self.prototypes(support_pixel_values, support_labels, num_classes, **forward_kwargs)
        outputs = {name: self.route(prototypes, name) for name in self.active_adapters if name in self.peft_config}
        layers = [layer for _, layer in self.smat_layers()]
        try:
            for layer in layers:
                for name, out in outputs.items():
                    layer.set_task(name, out.weights)
            self._in_task = True
            self.last_router_outputs = outputs
            yield outputs
        finally:
            for layer in layers:
                if layer.merged:
                    layer.unmerge()
                layer.clear_task()
            self._in_task = False

    def task_parameters(self) -> list[torch.Tensor]:
        """The current task's adapted parameters `θ_i` of every SMAT layer, in a fixed order (inside `task`).

        They carry the graph to `δ`, the masks and the router; meta-training takes functional steps on them
        (inner support step, dense teacher) and writes the results back with [`~SmatModel.set_task_parameters`].
        """
        self._require_task()
        return [p for _, layer in self.smat_layers() for p in layer.effective_params()]

    def set_task_parameters(self, params: list[torch.Tensor]) -> None:
        """Replace the adapted parameters used by forwards inside the current task (same order as
        [`~SmatModel.task_parameters`])."""
        self._require_task()
        params = list(params)
        for _, layer in self.smat_layers():
            count = len(layer.param_names)
            layer.set_effective_params(params[:count])
            params = params[count:]
        if params:
            raise ValueError(f"{len(params)} more parameters than the SMAT layers adapt.")

    def _require_task(self) -> None:
        if not self._in_task:
            raise RuntimeError("Task parameters exist only inside `with model.task(...)`.")

    def expert_weights(
        self,
        support_pixel_values: torch.Tensor,
        support_labels: torch.Tensor,
        num_classes: Optional[int] = None,
        adapter_name: Optional[str] = None,
        **forward_kwargs: Any,
    ) -> torch.Tensor:
        """Expert weights α `[num_experts]` (summing to 1) the router gives this support set."""
        prototypes = self.prototypes(support_pixel_values, support_labels, num_classes, **forward_kwargs)
        return self.route(prototypes, adapter_name).weights

    def merge_task(
        self,
        support_pixel_values: torch.Tensor,
        support_labels: torch.Tensor,
        num_classes: Optional[int] = None,
        **forward_kwargs: Any,
    ) -> nn.Module:
        """A plain copy of the base model with the task's weights `θ_i` written in; `self` is left unchanged.

        The copy has the base model's class, no SMAT layers and no peft wrapper: zero inference overhead. The
        deterministic (eval-mode) masks and router are used; the copy's parameters are trainable, as after
        `from_pretrained`.
        """
        memo: dict[int, Any] = {}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.task(support_pixel_values, support_labels, num_classes, **forward_kwargs):
                for _, layer in self.smat_layers():
                    memo[id(layer)] = self._merged_copy(layer)
        finally:
            self.train(was_training)
        for module in self.model.modules():
            if isinstance(module, ModulesToSaveWrapper):
                active = module.active_adapter
                memo[id(module)] = copy.deepcopy(
                    module.modules_to_save[active] if active in module.modules_to_save else module.original_module
                )
        memo[id(self.model.peft_config)] = {}
        merged = copy.deepcopy(self.model, memo)
        del merged.peft_config
        merged.requires_grad_(True)  # like a freshly loaded model
        return merged

    @staticmethod
    def _merged_copy(layer: SmatLayer) -> nn.Module:
        """A copy of the layer's base module holding the current task's parameters (LoRA folded in)."""
        params = layer.merged_params()
        replacements = {id(p): nn.Parameter(v.detach().clone()) for p, v in zip(layer.base_params, params)}
        return copy.deepcopy(layer.get_base_layer(), replacements)

    # ----------------------------------------------------------------------------------------------------------
    # model card
    def record_eval_results(
        self,
        eval_results: dict[str, Any],
        meta_training: Optional[dict[str, Any]] = None,
        adapter_name: Optional[str] = None,
    ) -> None:
        """Record an adapter's few-shot results for its model card.

        `save_pretrained` and `push_to_hub` then write them into README.md, as a Markdown table and as the Hub's
        `model-index` metadata (see `smat_peft.hub.build_model_card`).

        Args:
            eval_results (`dict[str, float | str]`): Domain → accuracy (a fraction, a percentage, or a string such as
                `"80.1 ± 0.7"`).
            meta_training (`dict`, *optional*): How the adapter was meta-trained, e.g. `{"steps": 1000}`.
            adapter_name (`str`, *optional*): Defaults to the active adapter.

        Example:

        ```py
        >>> model.base_model.record_eval_results({"omniglot": 0.91, "aircraft": 0.78})  # doctest: +SKIP
        >>> model.save_pretrained("adapter")  # README.md carries model-index results  # doctest: +SKIP
        ```
        """
        adapter_name = adapter_name or self.active_adapters[0]
        if adapter_name not in self.peft_config:
            raise ValueError(f"No adapter named {adapter_name!r}; the adapters are {sorted(self.peft_config)}.")
        check_eval_results(eval_results)  # now rather than at save time
        record = {"eval_results": dict(eval_results)}
        if meta_training is not None:
            record["meta_training"] = dict(meta_training)
        self.card_records[adapter_name] = record

    # ----------------------------------------------------------------------------------------------------------
    # sparsity
    def _adapter_layers(self, adapter_name: Optional[str]) -> tuple[str, list[SmatLayer]]:
        adapter_name = adapter_name or self.active_adapters[0]
        return adapter_name, [layer for _, layer in self.smat_layers() if adapter_name in layer.smat_delta]

    def expected_density(self, adapter_name: Optional[str] = None) -> torch.Tensor:
        """Expected fraction of non-zeros of each expert's **training** mask `[M]` (the expected L0 at the training
        temperature β, over all adapted parameters), differentiable w.r.t. the mask logits.

        This is the quantity the sparsity constraint holds at `1 − τ` (method §2). Noisy training masks differ from
        the deterministic eval masks until the logits saturate; see [`~SmatModel.eval_mask_sparsity`].
        """
        adapter_name, layers = self._adapter_layers(adapter_name)
        total = sum(layer.num_masked_elements for layer in layers)
        return sum(layer.expected_nonzero(adapter_name) for layer in layers) / total

    def eval_mask_sparsity(self, adapter_name: Optional[str] = None) -> torch.Tensor:
        """Fraction of zeros of each expert's deterministic **eval** mask `[M]` (what merging deploys; no gradient)."""
        adapter_name, layers = self._adapter_layers(adapter_name)
        total = sum(layer.num_masked_elements for layer in layers)
        return 1.0 - sum(layer.eval_mask_nonzero(adapter_name) for layer in layers) / total

    def clip_mask_logits_(self) -> None:
        """Clip every mask logit to `[-mask_logit_clip, mask_logit_clip]` (the trainer calls this after each step)."""
        for _, layer in self.smat_layers():
            layer.clip_mask_logits_()

    def sparsity_report(self, adapter_name: Optional[str] = None) -> dict[str, Any]:
        """Sparsity of the eval masks and expected density of the training masks, per expert, module type and block.

        Two different quantities, named apart: `eval_mask_sparsity` is the fraction of zeros of the deterministic
        eval mask (what `merge_task` deploys); `train_mask_expected_density` is the expected fraction of non-zeros
        of the noisy training mask (the expected L0 that the sparsity constraint holds at `1 − τ`). They agree only
        once the mask logits saturate.

        Returns:
            `dict` with keys `"target"` (τ), `"per_expert"` (list of `{"expert", "eval_mask_sparsity",
            "train_mask_expected_density"}`), `"per_module_type"` and `"per_block"` (name → the same two keys, one
            value per expert) and `"overall"` (mean over experts).
        """
        adapter_name = adapter_name or self.active_adapters[0]
        config = self.peft_config[adapter_name]
        groups: dict[str, dict[str, dict[str, Any]]] = {"per_module_type": {}, "per_block": {}}
        totals = {"n": 0, "zeros": 0, "expected": 0}
        with torch.no_grad():
            for name, layer in self.smat_layers():
                if adapter_name not in layer.smat_delta:
                    continue
                stats = self._layer_mask_stats(layer, adapter_name)
                block = re.search(r"\.(\d+)\.", f".{name}.")
                keys = {"per_module_type": name.rsplit(".", 1)[-1], "per_block": block.group(1) if block else "other"}
                for group, key in keys.items():
                    entry = groups[group].setdefault(key, {"n": 0, "zeros": 0, "expected": 0})
                    for k in entry:
                        entry[k] = entry[k] + stats[k]
                for k in totals:
                    totals[k] = totals[k] + stats[k]

        def summary(entry: dict[str, Any]) -> dict[str, list[float]]:
            return {
                "eval_mask_sparsity": (entry["zeros"] / entry["n"]).tolist(),
                "train_mask_expected_density": (entry["expected"] / entry["n"]).tolist(),
            }

        overall = summary(totals)
        return {
            "target": config.sparsity,
            "per_expert": [
                {"expert": m, "eval_mask_sparsity": s, "train_mask_expected_density": d}
                for m, (s, d) in enumerate(zip(overall["eval_mask_sparsity"], overall["train_mask_expected_density"]))
            ],
            "per_module_type": {k: summary(v) for k, v in groups["per_module_type"].items()},
            "per_block": {k: summary(v) for k, v in sorted(groups["per_block"].items(), key=_block_order)},
            "overall": {k: sum(v) / len(v) for k, v in overall.items()},
        }

    @staticmethod
    def _layer_mask_stats(layer: SmatLayer, adapter_name: str) -> dict[str, Any]:
        n = layer.num_masked_elements
        nonzero = layer.eval_mask_nonzero(adapter_name).cpu()
        return {"n": n, "zeros": n - nonzero, "expected": layer.expected_nonzero(adapter_name).detach().cpu()}


def _block_order(item: tuple[str, Any]) -> tuple[int, int, str]:
    """Blocks in numeric order ("2" before "10"), then named groups such as "other"."""
    key = item[0]
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _cast_(tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """Convert a parameter or buffer to `dtype` in place, keeping the object (optimizers and caches hold it)."""
    if tensor.dtype != dtype:
        tensor.data = tensor.data.to(dtype)
