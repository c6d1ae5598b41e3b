import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftConfig, PeftModel

from smat_peft import SmatConfig, get_smat_model
from tiny_models import make_tiny_model


TESTS_DIR = os.path.dirname(__file__)


def trained_adapter(tmp_path, **kwargs):
    kwargs.setdefault("num_experts", 4)
    model = get_smat_model(make_tiny_model("vit_cls"), SmatConfig(init_weights=False, **kwargs)).eval()
    with torch.no_grad():
        model.base_model.smat_router["default"].temperature.fill_(0.5)
    model.save_pretrained(tmp_path)
    return model


def test_save_pretrained_writes_a_peft_adapter(tmp_path):
    trained_adapter(tmp_path, modules_to_save=["classifier"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path))
    assert "model.safetensors" not in os.listdir(tmp_path) and "config.json" not in os.listdir(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "SMAT" and config["num_experts"] == 4
    assert config["base_model_class"] == "ViTForImageClassification" and config["smat_version"]
    assert len(config["target_fingerprint"]) == 16
    assert isinstance(PeftConfig.from_pretrained(tmp_path), SmatConfig)


@pytest.mark.parametrize("adapter_name", ["default", "other"])
def test_round_trip_in_a_fresh_process(tmp_path, support, adapter_name):
    x, y, q = support
    model = trained_adapter(tmp_path / "adapter", modules_to_save=["classifier"])
    with model.task(x, y):
        expected = model(pixel_values=q).logits
    torch.save({"x": x, "y": y, "q": q, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, warnings, torch
        sys.path.insert(0, {TESTS_DIR!r})
        import smat_peft
        from peft import PeftModel
        from tiny_models import make_tiny_model
        io = torch.load({str(tmp_path / "io.pt")!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(make_tiny_model("vit_cls"), {str(tmp_path / "adapter")!r},
                                              adapter_name={adapter_name!r})
        assert not [w for w in caught if "missing" in str(w.message).lower()], [str(w.message) for w in caught]
        model.eval()
        assert not any(p.requires_grad for p in model.parameters()), "inference mode must freeze the router too"
        assert model.base_model.smat_router[{adapter_name!r}].temperature.item() == 0.5
        with model.task(io["x"], io["y"]):
            out = model(pixel_values=io["q"]).logits
        assert torch.allclose(out, io["expected"], atol=1e-6), (out - io["expected"]).abs().max()
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_every_state_tensor_round_trips_and_is_trainable_when_asked(tmp_path):
    model = trained_adapter(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path, is_trainable=True)
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    router = loaded.base_model.smat_router["default"]
    assert all(p.requires_grad for p in router.parameters())
    assert any(p.requires_grad for n, p in loaded.named_parameters() if "smat_log_alpha" in n)


def test_loading_onto_another_architecture_names_both_classes(tmp_path):
    trained_adapter(tmp_path)
    with pytest.raises(ValueError, match="ViTForImageClassification.*Dinov2Model|created for a ViTForImageClassification"):
        PeftModel.from_pretrained(make_tiny_model("dinov2"), tmp_path)


def test_loading_onto_a_model_with_other_shapes_is_refused(tmp_path):
    trained_adapter(tmp_path)
    from transformers import ViTConfig, ViTForImageClassification

    wider = ViTForImageClassification(ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=64, image_size=32, patch_size=8, num_labels=5))
    with pytest.raises(ValueError, match="fingerprint"):
        PeftModel.from_pretrained(wider, tmp_path)


def test_several_adapters_save_and_load_together(tmp_path, support):
    x, y, q = support
    model = get_smat_model(make_tiny_model("vit_cls"), SmatConfig(num_experts=2, init_weights=False)).eval()
    model.add_adapter("second", SmatConfig(num_experts=3, init_weights=False, target_modules=["fc1"]))
    model.save_pretrained(tmp_path)
    assert os.path.isdir(tmp_path / "second")
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path).eval()
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    for name in ("default", "second"):
        model.set_adapter(name)
        loaded.set_adapter(name)
        with model.task(x, y), loaded.task(x, y):
            assert torch.allclose(model(pixel_values=q).logits, loaded(pixel_values=q).logits, atol=1e-6)


def test_merge_then_save_and_reload(tmp_path, support):
    x, y, q = support
    model = trained_adapter(tmp_path / "a")
    with model.task(x, y):
        model.merge_adapter()
        merged = model(pixel_values=q).logits
        model.save_pretrained(tmp_path / "b")
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path / "b").eval()
    with loaded.task(x, y):
        assert torch.allclose(loaded(pixel_values=q).logits, merged, atol=1e-5)


def test_lora_stacked_adapter_round_trips(tmp_path, support):
    x, y, q = support
    model = trained_adapter(tmp_path, lora_r=4, lora_alpha=8)
    with model.task(x, y):
        expected = model(pixel_values=q).logits
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path).eval()
    with loaded.task(x, y):
        assert torch.allclose(loaded(pixel_values=q).logits, expected, atol=1e-6)
