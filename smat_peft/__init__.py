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
"""smat-peft: SMAT (Sparse MetA-Tuning) sparse interpolated experts as a peft method for vision transformers."""

from .config import SmatConfig, load_smat_config
from .constants import __version__
from .export import export_compact, load_compact
from .hub import build_model_card, install_model_card, install_push_to_hub, push_smat_to_hub, smat_model_card
from .integrity import (
    AdapterFileNotFoundError,
    AdapterIntegrityError,
    BaseWeightsMismatchError,
    install_atomic_save,
    install_checked_load,
)
from .layer import SmatLayer, SmatModule
from .model import SmatModel
from .peft_type import SmatPeftType, register_with_peft
from .router import RouterOutput, SmatRouter


# the meta-trainer (and Accelerate) load on first use: `import smat_peft` is the adapter, peft and its hooks only
_TRAINING = ("EpisodeSampler", "EpisodeShape", "MetaTrainingArguments", "SmatMetaTrainer")


def __getattr__(name: str):
    if name in _TRAINING:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_with_peft(SmatConfig, SmatModel)
install_push_to_hub()
install_model_card()
install_atomic_save()
install_checked_load()


def get_smat_model(model, config: SmatConfig, adapter_name: str = "default", **kwargs):
    """Wrap `model` with a SMAT adapter; returns a `peft.PeftModel` (same as `peft.get_peft_model`).

    Example:

    ```py
    >>> from transformers import Dinov2Config, Dinov2Model
    >>> from smat_peft import SmatConfig, get_smat_model
    >>> vit = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                image_size=32, patch_size=8))
    >>> model = get_smat_model(vit, SmatConfig(num_experts=8, sparsity=0.9))
    >>> type(model).__name__
    'PeftModel'
    ```
    """
    from peft import get_peft_model

    if not isinstance(config, SmatConfig):
        raise TypeError(f"`config` must be a SmatConfig, got {type(config).__name__}.")
    return get_peft_model(model, config, adapter_name=adapter_name, **kwargs)


__all__ = [
    "AdapterFileNotFoundError",
    "AdapterIntegrityError",
    "BaseWeightsMismatchError",
    "EpisodeSampler",
    "EpisodeShape",
    "MetaTrainingArguments",
    "RouterOutput",
    "SmatConfig",
    "SmatLayer",
    "SmatMetaTrainer",
    "SmatModel",
    "SmatModule",
    "SmatPeftType",
    "SmatRouter",
    "__version__",
    "build_model_card",
    "export_compact",
    "get_smat_model",
    "load_compact",
    "load_smat_config",
    "push_smat_to_hub",
    "smat_model_card",
]
