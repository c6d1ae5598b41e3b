"""SMAT against peft's adapter contract: dtypes on every load path, low_cpu_mem_usage, deterministic merges, training
through a plain forward, and models whose feature size cannot be inferred (see docs/peft_compatibility.md)."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from smat_peft import SmatConfig, get_smat_model
from smat_peft.layer import SmatLayer
from tiny_models import make_tiny_model


class TinyMLP(nn.Module):
    """A model with no config and no image features: SMAT cannot infer the size of its support features."""

    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2)

    def forward(self, X):
        return self.lin1(self.drop(torch.relu(self.lin0(X.to(self.lin0.weight.dtype)))))


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return TinyMLP()


class ConvEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 5)
        self.conv = nn.Conv1d(5, 4, 1)

    def forward(self, X):
        return self.conv(self.emb(X).transpose(1, 2)).flatten(1)


class IntScale(nn.Module):
    """A module whose only parameter is an integer tensor (as in some quantized layers)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, dtype=torch.int8), requires_grad=False)

    def forward(self, x):
        return x * self.weight


def smat_params(model):
    return {n: p for n, p in model.named_parameters() if "smat_" in n}


def mlp_config(**kwargs):
    kwargs.setdefault("target_modules", ["lin0", "lin1"])
    kwargs.setdefault("outside_task", "uniform")
    kwargs.setdefault("num_experts", 4)
    kwargs.setdefault("init_weights", False)
    return SmatConfig(**kwargs)


def vit_config(**kwargs):
    kwargs.setdefault("num_experts", 4)
    kwargs.setdefault("init_weights", False)
    return SmatConfig(**kwargs)


def task_logits(model, support):
    x, y, q = support
    with torch.no_grad(), model.task(x, y):
        return model(pixel_values=q).logits


# ---------------------------------------------------------------------------------------------------------------
# adapter dtype
@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_adapter_dtype_follows_peft_on_every_load_path(tmp_path, dtype, autocast, low_cpu_mem_usage):
    expected = torch.float32 if autocast else dtype
    config = vit_config(lora_r=2, lora_target_modules=["q_proj"])
    model = get_peft_model(make_tiny_model("vit_cls").to(dtype), config, autocast_adapter_dtype=autocast)
    model.add_adapter("other", vit_config(), autocast_adapter_dtype=autocast)
    params = smat_params(model)
    assert any("smat_router" in n for n in params) and any("smat_lora_A" in n for n in params)
    assert {n for n, p in params.items() if p.dtype != expected} == set()
    model.save_pretrained(tmp_path)

    loaded = PeftModel.from_pretrained(
        make_tiny_model("vit_cls").to(dtype), tmp_path, autocast_adapter_dtype=autocast,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )
    loaded.load_adapter(tmp_path / "other", adapter_name="other", autocast_adapter_dtype=autocast,
                        low_cpu_mem_usage=low_cpu_mem_usage)
    params = smat_params(loaded)
    assert {n for n, p in params.items() if p.dtype != expected} == set()
    assert not any(p.is_meta for p in loaded.parameters())


def test_a_16bit_mask_dtype_is_kept_when_the_adapter_is_autocast(tmp_path):
    model = get_peft_model(make_tiny_model("vit_cls").half(), vit_config(mask_dtype="bfloat16"))
    layer = next(layer for _, layer in model.base_model.smat_layers())
    assert layer.smat_log_alpha["default"][0].dtype == torch.bfloat16
    assert layer.smat_delta["default"][0].dtype == torch.float32


def test_an_integer_base_parameter_without_autocast_names_the_adapter_and_the_fix():
    model = nn.Sequential(IntScale())
    config = SmatConfig(target_modules=["0"], outside_task="uniform", num_experts=2)
    with pytest.raises(TypeError, match=r"'default'.*torch\.int8.*0\.weight.*autocast_adapter_dtype=True"):
        get_peft_model(model, config, autocast_adapter_dtype=False)
    model = get_peft_model(nn.Sequential(IntScale()), config)  # autocast: a float32 adapter
    assert smat_params(model)["base_model.model.0.smat_delta.default.0"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# low_cpu_mem_usage
def test_low_cpu_mem_usage_round_trip_reproduces_the_task_outputs(tmp_path, support):
    model = get_smat_model(make_tiny_model("vit_cls"), vit_config(modules_to_save=["classifier"])).eval()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path, low_cpu_mem_usage=True).eval()
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state if "smat_" in k)


def test_an_adapter_whose_weights_were_never_loaded_names_the_adapter_and_the_fix(support):
    x, y, q = support
    model = get_peft_model(make_tiny_model("vit_cls"), vit_config(outside_task="uniform"), low_cpu_mem_usage=True)
    with pytest.raises(RuntimeError, match=r"'default'.*low_cpu_mem_usage=True.*load_adapter"):
        model(pixel_values=q)
    with pytest.raises(RuntimeError, match=r"router of the SMAT adapter 'default'.*low_cpu_mem_usage=True"):
        with model.task(x, y):
            pass


def test_low_cpu_mem_usage_with_a_missing_weights_file_raises_before_touching_the_model(tmp_path):
    get_smat_model(make_tiny_model("vit_cls"), vit_config()).save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    base = make_tiny_model("vit_cls")
    with pytest.raises(FileNotFoundError, match="adapter_model"):
        PeftModel.from_pretrained(base, tmp_path, low_cpu_mem_usage=True)
    assert not any(isinstance(m, SmatLayer) for m in base.modules())


# ---------------------------------------------------------------------------------------------------------------
# merging
def merged_weights(model):
    model.merge_adapter()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.unmerge_adapter()
    return weights


def test_merging_in_train_mode_is_deterministic_and_uses_the_eval_masks():
    model = get_peft_model(tiny_mlp(), mlp_config(lora_r=2, lora_dropout=0.5)).train()
    first, second = merged_weights(model), merged_weights(model)
    assert first.keys() and all(torch.equal(first[n], second[n]) for n in first)
    eval_mode = merged_weights(model.eval())
    assert all(torch.equal(first[n], eval_mode[n]) for n in first)
    x = torch.randn(4, 10)
    expected = model(X=x)
    model.merge_adapter()
    assert torch.allclose(model(X=x), expected, atol=1e-6)


def test_merging_inside_a_task_entered_in_training_mode_names_the_adapter_and_the_fix(support):
    x, y, _ = support
    model = get_smat_model(make_tiny_model("vit_cls"), vit_config()).train()
    with model.task(x, y):
        with pytest.raises(RuntimeError, match=r"'default'.*training mode.*model\.eval\(\).*merge_task"):
            model.merge_adapter()
    assert not any(layer.merged for _, layer in model.base_model.smat_layers())
    model.eval()
    with model.task(x, y):
        model.merge_adapter()  # an eval-mode task merges as before


# ---------------------------------------------------------------------------------------------------------------
# training through a plain forward
def test_training_outside_a_task_updates_delta_masks_and_lora_but_not_the_router():
    model = get_peft_model(tiny_mlp(), mlp_config(feature_dim=8, lora_r=2, modules_to_save=["lin1"])).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(9, 10)
    with pytest.warns(UserWarning, match=r"'default'.*no gradient.*model\.task"):
        for _ in range(3):
            optimizer.zero_grad()
            model(X=x).sum().backward()
            optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.allclose(p, before[n], atol=1e-4, rtol=1e-4)}
    adapter = {n for n in before if "smat_" in n or "modules_to_save" in n}
    router = {n for n in adapter if "smat_router" in n}
    assert router and changed == adapter - router
    assert all(p.grad is None for n, p in model.named_parameters() if n in router)


def test_the_untrained_router_warning_is_given_once_and_not_inside_a_task(support, recwarn):
    x, y, q = support
    model = get_smat_model(make_tiny_model("vit_cls"), vit_config(outside_task="uniform")).train()
    with model.task(x, y):
        model(pixel_values=q)
    assert not [w for w in recwarn if "receives no gradient" in str(w.message)]
    model(pixel_values=q)
    model(pixel_values=q)
    assert len([w for w in recwarn if "receives no gradient" in str(w.message)]) == 1


# ---------------------------------------------------------------------------------------------------------------
# models without inferable features
def test_a_model_without_inferable_features_gets_an_adapter_without_router(tmp_path):
    model = get_peft_model(tiny_mlp(), mlp_config()).eval()
    assert len(model.base_model.smat_router) == 0
    x = torch.randn(4, 10)
    out = model(X=x)
    assert not torch.allclose(out, tiny_mlp()(x))
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_mlp(), tmp_path).eval()
    assert torch.equal(loaded(X=x), out)
    with pytest.raises(ValueError, match=r"'default' has no router.*TinyMLP.*SmatConfig\(feature_dim=\.\.\.\)"):
        with model.task(None, None, prototypes=torch.randn(3, 8)):
            pass


def test_feature_dim_gives_a_model_without_inferable_features_a_router():
    model = get_peft_model(tiny_mlp(), mlp_config(feature_dim=8)).eval()
    with model.task(None, None, prototypes=torch.randn(3, 8)) as outputs:
        assert outputs["default"].weights.shape == (4,)
        model(X=torch.randn(2, 10))


def test_layers_expose_in_and_out_features_like_peft_layers():
    model = get_peft_model(ConvEmbedding(), SmatConfig(target_modules=["emb", "conv"], outside_task="uniform"))
    features = {name: (layer.in_features, layer.out_features) for name, layer in model.base_model.smat_layers()}
    assert features == {"emb": (100, 5), "conv": (5, 4)}
    assert model(X=torch.arange(12).view(3, 4)).shape == (3, 16)
