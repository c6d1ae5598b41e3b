import copy

import pytest
import torch
from peft import PeftModel, get_peft_model

from smat_peft import SmatConfig, SmatModel, get_smat_model
from smat_peft.layer import SmatLayer
from tiny_models import make_tiny_model, random_pixels


def smat(name="vit_cls", **kwargs):
    kwargs.setdefault("num_experts", 4)
    return get_smat_model(make_tiny_model(name), SmatConfig(**kwargs)).eval()


def test_get_smat_model_returns_a_peft_model_with_a_smat_tuner():
    model = smat()
    assert isinstance(model, PeftModel) and isinstance(model.base_model, SmatModel)
    same = get_peft_model(make_tiny_model("vit_cls"), SmatConfig(num_experts=4))
    assert isinstance(same.base_model, SmatModel)
    assert sorted(same.state_dict()) == sorted(model.state_dict())


def test_fresh_adapter_reproduces_the_base_model_exactly(support):
    x, y, q = support
    base = make_tiny_model("vit_cls")
    expected = base(pixel_values=q).logits
    model = get_smat_model(base, SmatConfig(num_experts=4)).eval()
    with model.task(x, y):
        assert torch.equal(model(pixel_values=q).logits, expected)


def test_task_conditions_the_model_and_weights_are_built_once(support, monkeypatch):
    x, y, q = support
    model = smat(init_weights=False)
    calls = []
    original = SmatLayer.task_deltas
    monkeypatch.setattr(SmatLayer, "task_deltas", lambda self, *a: calls.append(1) or original(self, *a))
    with model.task(x, y) as outputs:
        first = model(pixel_values=q).logits
        second = model(pixel_values=q).logits
    assert len(calls) == len(list(model.base_model.smat_layers()))
    assert torch.equal(first, second)
    assert outputs["default"].weights.shape == (4,)
    other_support = random_pixels(10, seed=7)
    with model.task(other_support, y):
        assert not torch.allclose(model(pixel_values=q).logits, first)


def test_forward_outside_a_task_raises_by_default(support):
    _, _, q = support
    with pytest.raises(RuntimeError, match=r"model\.task\("):
        smat()(pixel_values=q)


def test_outside_task_uniform_uses_equal_expert_weights(support):
    x, y, q = support
    model = smat(init_weights=False, outside_task="uniform")
    out = model(pixel_values=q).logits
    layer = next(layer for _, layer in model.base_model.smat_layers())
    uniform = torch.full((4,), 0.25)
    expected = layer.task_deltas("default", uniform)
    assert torch.allclose(layer._adapter_deltas("default")[0], expected[0])
    assert torch.isfinite(out).all()


def test_nested_tasks_are_refused(support):
    x, y, _ = support
    model = smat()
    with model.task(x, y):
        with pytest.raises(RuntimeError, match="nested"):
            with model.task(x, y):
                pass


def test_expert_weights_sum_to_one_and_ignore_class_order(support):
    x, y, _ = support
    model = smat(num_experts=8)
    weights = model.expert_weights(x, y)
    assert weights.shape == (8,) and torch.isclose(weights.sum(), torch.tensor(1.0))
    relabel = torch.tensor([3, 0, 4, 1, 2])  # class c becomes relabel[c]
    permuted = model.expert_weights(x, relabel[y])
    assert torch.allclose(weights, permuted, atol=1e-6)


def test_merge_task_returns_a_plain_model_and_leaves_the_adapter_unchanged(support):
    x, y, q = support
    model = smat(init_weights=False)
    state_before = copy.deepcopy(model.state_dict())
    merged = model.merge_task(x, y)
    assert type(merged).__name__ == "ViTForImageClassification"
    assert not any(isinstance(m, SmatLayer) for m in merged.modules())
    assert not hasattr(merged, "peft_config")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state_before.items())
    with model.task(x, y):
        conditioned = model(pixel_values=q).logits
    assert torch.allclose(merged.eval()(pixel_values=q).logits, conditioned, atol=1e-5)
    assert not torch.allclose(make_tiny_model("vit_cls")(pixel_values=q).logits, conditioned, atol=1e-4)


def test_merge_unmerge_and_merge_and_unload_inside_a_task(support):
    x, y, q = support
    model = smat(init_weights=False)
    with model.task(x, y):
        conditioned = model(pixel_values=q).logits
        model.merge_adapter()
        merged = model(pixel_values=q).logits
        model.merge_adapter()  # idempotent
        assert torch.allclose(model(pixel_values=q).logits, merged)
        model.unmerge_adapter()
        unmerged = model(pixel_values=q).logits
        assert torch.allclose(conditioned, merged, atol=1e-4) and torch.allclose(conditioned, unmerged, atol=1e-6)
        plain = model.merge_and_unload()
    assert type(plain).__name__ == "ViTForImageClassification"
    assert torch.allclose(plain(pixel_values=q).logits, conditioned, atol=1e-4)


def test_leaving_a_task_unmerges_and_a_merged_model_cannot_start_a_task(support):
    x, y, q = support
    model = smat(init_weights=False)
    base = make_tiny_model("vit_cls")(pixel_values=q).logits
    with model.task(x, y):
        model.merge_adapter()
    with model.disable_adapter():
        assert torch.allclose(model(pixel_values=q).logits, base, atol=1e-6)
    with model.task(x, y):
        model.merge_adapter()
        with pytest.raises(RuntimeError, match="nested"):
            with model.task(x, y):
                pass


def test_safe_merge_refuses_nan_weights(support):
    x, y, _ = support
    model = smat(init_weights=False)
    layer = next(layer for _, layer in model.base_model.smat_layers())
    with torch.no_grad():
        layer.smat_delta["default"][0][0, 0] = float("nan")
        layer.smat_log_alpha["default"][0].fill_(5.0)
    before = layer.get_base_layer().weight.clone()
    with model.task(x, y):
        with pytest.raises(ValueError, match="NaN"):
            model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, before)


def test_disable_adapter_gives_base_outputs_also_when_merged(support):
    x, y, q = support
    model = smat(init_weights=False)
    base = make_tiny_model("vit_cls")(pixel_values=q).logits
    with model.task(x, y):
        with model.disable_adapter():
            assert torch.allclose(model(pixel_values=q).logits, base, atol=1e-6)
        model.merge_adapter()
        with model.disable_adapter():
            assert torch.allclose(model(pixel_values=q).logits, base, atol=1e-6)


def test_support_features_come_from_the_frozen_backbone(support):
    x, y, _ = support
    a, b = smat(init_weights=False), smat(init_weights=True)
    assert torch.allclose(a.base_model.prototypes(x, y), b.base_model.prototypes(x, y))
    with a.task(x, y):  # also while the adapter is merged
        a.merge_adapter()
        assert torch.allclose(a.base_model.support_features(x), b.base_model.support_features(x), atol=1e-6)


def test_several_named_adapters_set_adapter_and_delete_adapter(support):
    x, y, q = support
    model = smat(init_weights=False)
    model.add_adapter("second", SmatConfig(num_experts=2, init_weights=False, target_modules=["q_proj"]))
    assert set(model.base_model.smat_router) == {"default", "second"}
    with model.task(x, y):
        first = model(pixel_values=q).logits
    model.set_adapter("second")
    with model.task(x, y) as outputs:
        second = model(pixel_values=q).logits
    assert set(outputs) == {"second"} and outputs["second"].weights.shape == (2,)
    assert not torch.allclose(first, second)
    assert all(p.requires_grad for p in model.base_model.smat_router["second"].parameters())
    assert not any(p.requires_grad for p in model.base_model.smat_router["default"].parameters())
    model.delete_adapter("second")
    assert "second" not in model.base_model.smat_router
    for _, layer in model.base_model.smat_layers():
        for attr in SmatLayer.adapter_layer_names + SmatLayer.other_param_names:
            assert "second" not in getattr(layer, attr)
    model.set_adapter("default")
    with model.task(x, y):
        assert torch.allclose(model(pixel_values=q).logits, first)


def test_training_updates_every_trainable_parameter_and_no_frozen_one(support):
    x, y, q = support
    model = smat(modules_to_save=["classifier"]).train()
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any("smat_router" in n for n in trainable) and any("smat_log_alpha" in n for n in trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(3):
        with model.task(x, y):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, trainable[n])]
    # The key bias shifts every attention logit of a query equally, so softmax makes its gradient exactly zero
    # in theory; its mask logits then only move by rounding noise (its δ still moves by rounding).
    unchanged = [n for n in unchanged if not n.endswith("k_proj.smat_log_alpha.default.1")]
    assert unchanged == []
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_base_models_and_inputs(support, dtype):
    x, y, q = support
    base = make_tiny_model("vit_cls").to(dtype)
    model = get_smat_model(base, SmatConfig(num_experts=4, init_weights=False)).eval()
    layer = next(layer for _, layer in model.base_model.smat_layers())
    assert layer.smat_delta["default"][0].dtype == torch.float32  # peft's autocast of adapter weights
    with model.task(x.to(dtype), y):
        out = model(pixel_values=q.to(dtype)).logits
        assert out.dtype == dtype and torch.isfinite(out).all()
        model.merge_adapter()
        merged = model(pixel_values=q.to(dtype)).logits
    assert torch.allclose(out.float(), merged.float(), atol=0.05)


def test_fp32_model_takes_bf16_inputs(support):
    x, y, q = support
    model = smat(init_weights=False)
    with model.task(x, y):
        assert torch.isfinite(model(pixel_values=q.to(torch.bfloat16)).logits).all()


def test_mask_dtype_is_configurable():
    model = smat(mask_dtype="bfloat16")
    layer = next(layer for _, layer in model.base_model.smat_layers())
    assert layer.smat_log_alpha["default"][0].dtype == torch.bfloat16
    assert layer.smat_delta["default"][0].dtype == torch.float32


def test_gradient_checkpointing(support):
    x, y, _ = support
    model = smat(init_weights=False).train()
    model.base_model.model.gradient_checkpointing_enable()
    with model.task(x, y):
        torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y).backward()
    layer = next(layer for _, layer in model.base_model.smat_layers())
    assert layer.smat_delta["default"][0].grad.abs().sum() > 0


def test_sparsity_report_names_eval_and_training_mask_sparsity():
    model = smat(num_experts=3)
    layers = [layer for _, layer in model.base_model.smat_layers()]
    with torch.no_grad():
        for layer in layers:
            for log_alpha in layer.smat_log_alpha["default"]:
                log_alpha[0].fill_(-10.0)  # expert 0: all zeros
                log_alpha[1].fill_(10.0)  # expert 1: all ones
                log_alpha[2].copy_(torch.where(torch.rand_like(log_alpha[2]) < 0.9, -10.0, 10.0))
    report = model.sparsity_report()
    sparsity = [e["eval_mask_sparsity"] for e in report["per_expert"]]
    assert sparsity[0] == pytest.approx(1.0) and sparsity[1] == pytest.approx(0.0)
    assert sparsity[2] == pytest.approx(0.9, abs=0.02)
    assert report["per_expert"][1]["train_mask_expected_density"] == pytest.approx(1.0, abs=1e-3)
    assert set(report["per_module_type"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}
    assert set(report["per_block"]) == {"0", "1"}
    assert report["target"] == 0.9
    measured, expected = model.base_model.eval_mask_sparsity(), model.base_model.expected_density()
    assert torch.allclose(measured, torch.tensor(sparsity), atol=1e-6)
    expected.sum().backward()  # differentiable w.r.t. log α
    assert layers[0].smat_log_alpha["default"][0].grad is not None


def test_structured_masks_have_one_value_per_input_column(support):
    x, y, q = support
    model = smat(structured_mask=True, init_weights=False)
    layer = next(layer for name, layer in model.base_model.smat_layers() if name.endswith("q_proj"))
    assert tuple(layer.smat_log_alpha["default"][0].shape) == (4, 1, 32)  # weight [32, 32]
    assert tuple(layer.smat_log_alpha["default"][1].shape) == (4, 32)  # bias
    with model.task(x, y):
        conditioned = model(pixel_values=q).logits
    merged = model.merge_task(x, y)
    assert torch.allclose(merged(pixel_values=q).logits, conditioned, atol=1e-5)


def test_binary_masks_take_the_packed_path_and_match_the_dense_merge(support):
    x, y, q = support
    model = smat(init_weights=False)
    with torch.no_grad():
        for _, layer in model.base_model.smat_layers():
            for log_alpha in layer.smat_log_alpha["default"]:
                log_alpha.copy_(torch.where(torch.rand_like(log_alpha) < 0.9, -5.0, 5.0))
    layer = next(layer for _, layer in model.base_model.smat_layers())
    weights = model.expert_weights(x, y)
    packed = layer.merged_masks("default", weights)
    assert layer._eval_mask("default", 0)[1] is True
    masks = layer.smat_log_alpha["default"][0].gt(0).float()
    assert torch.allclose(packed[0], torch.tensordot(weights, masks, dims=1), atol=1e-6)


def test_clip_mask_logits():
    model = smat(mask_logit_clip=2.0).train()
    layer = next(layer for _, layer in model.base_model.smat_layers())
    with torch.no_grad():
        layer.smat_log_alpha["default"][0].fill_(7.0)
    model.base_model.clip_mask_logits_()
    assert layer.smat_log_alpha["default"][0].max().item() == pytest.approx(2.0)


def test_unload_returns_the_untouched_base_model(support):
    x, y, q = support
    model = smat(init_weights=False)
    base = make_tiny_model("vit_cls")(pixel_values=q).logits
    plain = model.unload()
    assert type(plain).__name__ == "ViTForImageClassification"
    assert not any(isinstance(m, SmatLayer) for m in plain.modules())
    assert torch.allclose(plain(pixel_values=q).logits, base, atol=1e-6)
