import pytest
import torch
from torch import nn

from conftest import main_output
from smat_peft import SmatConfig, get_smat_model
from smat_peft.layer import SmatLayer
from smat_peft.targets import DEFAULT_TARGET_MODULES
from tiny_models import ARCHITECTURES, make_tiny_model


def layer_names(model):
    return [name for name, _ in model.base_model.smat_layers()]


def assert_merge_equivalence(model, x, y, q, atol=1e-5):
    with model.task(x, y):
        conditioned = main_output(model(pixel_values=q))
    merged = model.merge_task(x, y)
    assert not any(isinstance(m, SmatLayer) for m in merged.modules())
    assert torch.allclose(main_output(merged.eval()(pixel_values=q)), conditioned, atol=atol)
    return conditioned


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_default_targets_merge_equivalence_per_architecture(name, support):
    x, y, q = support
    base = make_tiny_model(name)
    reference = main_output(base(pixel_values=q))
    model = get_smat_model(base, SmatConfig(num_experts=8, sparsity=0.9, init_weights=False)).eval()
    suffixes = {n.rsplit(".", 1)[-1] for n in layer_names(model)}
    assert suffixes == set(DEFAULT_TARGET_MODULES[base.config.model_type])
    assert not any("classifier" in n or "pooler" in n for n in layer_names(model))
    conditioned = assert_merge_equivalence(model, x, y, q)
    # every targeted module really changes the output (none is silently bypassed)
    assert not torch.allclose(conditioned, reference, atol=1e-4)
    for target in layer_names(model):
        with model.task(x, y):
            single = main_output(model(pixel_values=q))
            layer = model.base_model.model.get_submodule(target)
            layer._task_deltas["default"] = [torch.zeros_like(d) for d in layer._task_deltas["default"]]
            layer._effective = None
            without = main_output(model(pixel_values=q))
        assert not torch.allclose(single, without, atol=1e-7), f"{name}: {target} has no effect"


def test_fresh_model_is_unchanged_for_every_architecture(support):
    x, y, q = support
    for name in ARCHITECTURES:
        # frozen like the wrapped model: some kernels (nn.MultiheadAttention's fast path) depend on requires_grad
        base = make_tiny_model(name).requires_grad_(False)
        reference = main_output(base(pixel_values=q))
        model = get_smat_model(base, SmatConfig(num_experts=2)).eval()
        with model.task(x, y):
            assert torch.equal(main_output(model(pixel_values=q)), reference), name


def test_siglip_pooling_head_out_proj_is_not_wrapped():
    # nn.MultiheadAttention reads out_proj.weight directly: wrapping it would silently do nothing.
    model = get_smat_model(make_tiny_model("siglip"), SmatConfig(num_experts=2))
    names = layer_names(model)
    assert "head.attention.out_proj" not in names
    assert "head.mlp.fc1" in names and "encoder.layers.0.self_attn.out_proj" in names


def test_siglip_multihead_attention_can_be_targeted_as_a_whole(support):
    x, y, q = support
    config = SmatConfig(num_experts=2, init_weights=False, target_modules=["head.attention"])
    model = get_smat_model(make_tiny_model("siglip"), config).eval()
    assert layer_names(model) == ["head.attention"]
    conditioned = assert_merge_equivalence(model, x, y, q)
    assert not torch.allclose(conditioned, main_output(make_tiny_model("siglip")(pixel_values=q)))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_all_parameters_option_merge_equivalence(name, support):
    x, y, q = support
    base = make_tiny_model(name)
    n_params = sum(p.numel() for n, p in base.named_parameters() if not n.startswith("classifier"))
    model = get_smat_model(base, SmatConfig(num_experts=2, init_weights=False, target_all_parameters=True)).eval()
    layers = [layer for _, layer in model.base_model.smat_layers()]
    assert sum(layer.num_masked_elements for layer in layers) == n_params  # every parameter but the classifier
    assert any("embeddings" in n or "embed" in n for n in layer_names(model))
    assert not any("classifier" in n for n in layer_names(model))
    assert_merge_equivalence(model, x, y, q)


def test_layers_to_transform_and_exclude_modules():
    config = SmatConfig(num_experts=2, target_modules=["q_proj", "fc1"], layers_to_transform=[1], layers_pattern="layers")
    names = layer_names(get_smat_model(make_tiny_model("vit"), config))
    assert names == ["layers.1.attention.q_proj", "layers.1.mlp.fc1"]
    config = SmatConfig(num_experts=2, exclude_modules=["layers.0.mlp.fc1", "layers.0.mlp.fc2"])
    names = layer_names(get_smat_model(make_tiny_model("vit"), config))
    assert len(names) == 10 and "layers.0.mlp.fc1" not in names


def test_unknown_architecture_without_target_modules_names_the_fix():
    from transformers import ResNetConfig, ResNetModel

    model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    with pytest.raises(ValueError, match=r"no default target modules for model_type 'resnet'.*target_modules"):
        get_smat_model(model, SmatConfig(num_experts=2))


class TimmLikeViT(nn.Module):
    """A timm-style ViT: fused qkv, `proj`, `mlp.fc1/fc2`, features from the class token."""

    def __init__(self, dim: int = 32, depth: int = 2, patch: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            norm1=nn.LayerNorm(dim), qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim),
            norm2=nn.LayerNorm(dim), fc1=nn.Linear(dim, 2 * dim), fc2=nn.Linear(2 * dim, dim))) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for b in self.blocks:
            q, k, v = b["qkv"](b["norm1"](x)).chunk(3, dim=-1)
            x = x + b["proj"](torch.nn.functional.scaled_dot_product_attention(q, k, v))
            x = x + b["fc2"](torch.nn.functional.gelu(b["fc1"](b["norm2"](x))))
        return self.norm(x)[:, 0]


def test_model_without_transformers_config_needs_target_modules_and_feature_dim_for_tasks(support):
    x, y, q = support
    with pytest.raises(ValueError, match="target_modules"):
        get_smat_model(TimmLikeViT(), SmatConfig(num_experts=2))
    # without feature_dim the adapter has no router: it is created, and a task asks for feature_dim
    no_router = get_smat_model(TimmLikeViT(), SmatConfig(num_experts=2, target_modules=["qkv", "proj", "fc1", "fc2"]))
    with pytest.raises(ValueError, match=r"'default' has no router.*feature_dim"):
        with no_router.task(x, y):
            pass
    base = TimmLikeViT()
    reference = base(q)
    config = SmatConfig(num_experts=4, feature_dim=32, target_modules=["qkv", "proj", "fc1", "fc2"])
    model = get_smat_model(base, config).eval()
    with model.task(x, y):
        assert torch.equal(model(q), reference)


def test_timm_like_model_merge_equivalence_and_all_parameters(support):
    x, y, q = support
    config = SmatConfig(num_experts=4, feature_dim=32, init_weights=False, target_all_parameters=True)
    model = get_smat_model(TimmLikeViT(), config).eval()
    assert {"patch_embed", "norm"} <= set(layer_names(model))
    with model.task(x, y):
        conditioned = model(q)
    merged = model.merge_task(x, y)
    assert type(merged) is TimmLikeViT
    assert torch.allclose(merged(q), conditioned, atol=1e-5)


class MLP(nn.Module):
    """The shape of peft's own test model: flat features in, features out."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(10, 20), nn.Linear(20, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


def test_plain_mlp_with_a_custom_feature_function():
    x, y, q = torch.randn(6, 10), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(4, 10)
    config = SmatConfig(num_experts=2, feature_dim=20, target_modules=["lin0", "lin1"], init_weights=False)
    model = get_smat_model(MLP(), config).eval()
    with pytest.raises(ValueError, match="feature_dim"):
        model.expert_weights(x, y)  # the default features (the output) have size 8, not 20
    model.set_feature_fn(lambda m, inputs: torch.relu(m.lin0(inputs)))
    weights = model.expert_weights(x, y)
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    with model.task(x, y):
        conditioned = model(q)
    assert torch.allclose(model.merge_task(x, y)(q), conditioned, atol=1e-6)
