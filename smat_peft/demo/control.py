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
"""The random-mask control: one fixed random sparse delta at the same sparsity τ, no router, no learned masks.

If SMAT's learned experts do not beat this out of domain, they have not shown anything beyond "a sparse update
generalises better than a dense one".

Example:

```py
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
>>> masks = fix_random_sparse_delta_(model, ["0"], sparsity=0.75, seed=0)
>>> [n for n, p in model.named_parameters() if p.requires_grad]
['0.weight', '0.bias']
```
"""

from __future__ import annotations

import torch
from torch import nn


def fix_random_sparse_delta_(model: nn.Module, module_names: list[str], sparsity: float, seed: int = 0
                             ) -> dict[str, torch.Tensor]:
    """Make only a fixed random `1 − sparsity` share of the parameters of `module_names` trainable, in place.

    Every other parameter of `model` is frozen; the gradient of each parameter of the named modules is multiplied by
    a fixed Bernoulli(1 − sparsity) mask, so with an optimiser without weight decay (and Adam's zero update for a zero
    gradient) the masked-out weights never move: the trained model is `θ_pre + m ⊙ δ`. Returns the masks by
    parameter name.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity}.")
    modules = dict(model.named_modules())
    missing = [name for name in module_names if name not in modules]
    if missing:
        raise KeyError(f"No modules named {missing[:3]} in {type(model).__name__}.")
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name in module_names:
        for param_name, param in modules[name].named_parameters():
            mask = (torch.rand(param.shape, generator=generator) >= sparsity).to(param.dtype).to(param.device)
            param.requires_grad_(True)
            param.register_hook(lambda grad, mask=mask: grad * mask)
            masks[f"{name}.{param_name}"] = mask
    return masks
