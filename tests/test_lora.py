import torch
from peft import LoraConfig, get_peft_model

from smat_peft import SmatConfig, get_smat_model
from smat_peft.layer import SmatLayer
from tiny_models import make_tiny_model


def lora_layers(model):
    return {name: layer for name, layer in model.base_model.smat_layers() if "default" in layer.smat_lora_A}


def test_lora_factors_live_in_the_smat_layers_and_merge_exactly(support):
    x, y, q = support
    config = SmatConfig(num_experts=4, init_weights=False, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    model = get_smat_model(make_tiny_model("vit_cls"), config).eval()
    layers = lora_layers(model)
    assert sorted(n.rsplit(".", 1)[-1] for n in layers) == ["q_proj", "q_proj", "v_proj", "v_proj"]
    layer = next(iter(layers.values()))
    assert layer.smat_lora_scaling["default"] == 2.0
    with model.task(x, y):
        conditioned = model(pixel_values=q).logits
        expected_delta = layer.task_deltas("default", model.base_model.last_router_outputs["default"].weights)[0]
        expected_delta = expected_delta + 2.0 * layer.smat_lora_B["default"].weight @ layer.smat_lora_A["default"].weight
        assert torch.allclose(layer.get_delta_weight("default"), expected_delta, atol=1e-6)
        model.merge_adapter()
        assert torch.allclose(model(pixel_values=q).logits, conditioned, atol=1e-5)
        model.unmerge_adapter()
    merged = model.merge_task(x, y)
    assert torch.allclose(merged(pixel_values=q).logits, conditioned, atol=1e-5)
    with model.task(x, y), model.disable_adapter():  # both parts off
        assert torch.allclose(model(pixel_values=q).logits, make_tiny_model("vit_cls")(pixel_values=q).logits, atol=1e-6)


def test_fresh_lora_branch_is_a_no_op_and_trains(support):
    x, y, q = support
    base_out = make_tiny_model("vit_cls")(pixel_values=q).logits
    model = get_smat_model(make_tiny_model("vit_cls"), SmatConfig(num_experts=2, lora_r=2)).train()
    with model.task(x, y):
        assert torch.allclose(model.eval()(pixel_values=q).logits, base_out, atol=1e-6)
    model.train()
    with model.task(x, y):
        torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y).backward()
    layer = next(iter(lora_layers(model).values()))
    assert layer.smat_lora_B["default"].weight.grad.abs().sum() > 0


def test_merged_task_model_takes_a_standard_lora_adapter(support):
    x, y, q = support
    model = get_smat_model(make_tiny_model("vit_cls"), SmatConfig(num_experts=2, init_weights=False)).eval()
    merged = model.merge_task(x, y)
    lora = get_peft_model(merged, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             modules_to_save=["classifier"]))
    assert not any(isinstance(m, SmatLayer) for m in lora.modules())
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(lora(pixel_values=x).logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
