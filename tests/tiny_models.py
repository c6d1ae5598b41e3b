"""Tiny, randomly initialised vision backbones from ``transformers`` for fast tests.

Every model is built from a hand-written config (no downloads), seeded with
``torch.manual_seed`` before construction and returned in eval mode, so two
calls with the same ``name`` and ``seed`` give identical weights.
"""

from __future__ import annotations

from typing import Callable

import torch
import transformers

IMAGE_SIZE: int = 32
HIDDEN: int = 32
HEADS: int = 2
LAYERS: int = 2
INTERMEDIATE: int = 64
PATCH: int = 8
NUM_LABELS: int = 5

# Swin: 32px / patch 4 -> 8x8 tokens, window 2; two stages double the width.
SWIN_EMBED_DIM: int = 16
SWIN_DEPTHS: list[int] = [1, 1]
SWIN_HEADS: list[int] = [2, 2]

_VIT_COMMON: dict = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=INTERMEDIATE,
    image_size=IMAGE_SIZE,
    patch_size=PATCH,
    num_channels=3,
)
# DINOv2 variants size their MLP with ``mlp_ratio`` instead of ``intermediate_size``.
_DINOV2_COMMON: dict = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    mlp_ratio=INTERMEDIATE // HIDDEN,
    image_size=IMAGE_SIZE,
    patch_size=PATCH,
    num_channels=3,
)


def _vit() -> torch.nn.Module:
    return transformers.ViTModel(transformers.ViTConfig(**_VIT_COMMON))


def _vit_cls() -> torch.nn.Module:
    config = transformers.ViTConfig(**_VIT_COMMON, num_labels=NUM_LABELS)
    return transformers.ViTForImageClassification(config)


def _deit() -> torch.nn.Module:
    return transformers.DeiTModel(transformers.DeiTConfig(**_VIT_COMMON))


def _beit() -> torch.nn.Module:
    return transformers.BeitModel(transformers.BeitConfig(**_VIT_COMMON, drop_path_rate=0.0))


def _dinov2() -> torch.nn.Module:
    return transformers.Dinov2Model(transformers.Dinov2Config(**_DINOV2_COMMON))


def _dinov2_registers() -> torch.nn.Module:
    config = transformers.Dinov2WithRegistersConfig(**_DINOV2_COMMON, num_register_tokens=2)
    return transformers.Dinov2WithRegistersModel(config)


def _dinov3_vit() -> torch.nn.Module:
    config = transformers.DINOv3ViTConfig(**_VIT_COMMON, num_register_tokens=2)
    return transformers.DINOv3ViTModel(config)


def _clip() -> torch.nn.Module:
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_VIT_COMMON))


def _siglip() -> torch.nn.Module:
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**_VIT_COMMON))


def _swin() -> torch.nn.Module:
    config = transformers.SwinConfig(
        image_size=IMAGE_SIZE,
        patch_size=4,
        num_channels=3,
        embed_dim=SWIN_EMBED_DIM,
        depths=SWIN_DEPTHS,
        num_heads=SWIN_HEADS,
        window_size=2,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
    )
    return transformers.SwinModel(config)


_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "vit": _vit,
    "vit_cls": _vit_cls,
    "deit": _deit,
    "beit": _beit,
    "dinov2": _dinov2,
    "dinov2_registers": _dinov2_registers,
    "dinov3_vit": _dinov3_vit,
    "clip": _clip,
    "siglip": _siglip,
    "swin": _swin,
}

ARCHITECTURES: list[str] = list(_BUILDERS)


def make_tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Build the tiny model ``name`` with weights drawn after ``torch.manual_seed(seed)``."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; choose from {ARCHITECTURES}")
    torch.manual_seed(seed)
    model = _BUILDERS[name]()
    return model.eval()


def feature_dim(name: str) -> int:
    """Width of the backbone's image-level feature (``pooler_output`` / CLS token).

    For ``vit_cls`` this is the width of its ``.vit`` backbone, not the number of labels.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; choose from {ARCHITECTURES}")
    if name == "swin":
        return SWIN_EMBED_DIM * 2 ** (len(SWIN_DEPTHS) - 1)
    return HIDDEN


def random_pixels(n: int, seed: int = 0, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``n`` random RGB images of shape ``(n, 3, size, size)``, drawn from a private generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)
