"""Compact inference export: bit-packed binary masks, δ where the union of masks is on, exact reload."""

import json
import math
import os

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import ViTConfig, ViTModel

import smat_peft.export as export_module
from smat_peft import AdapterIntegrityError, SmatConfig, export_compact, get_smat_model, load_compact
from smat_peft.atomic_io import file_sha256
from smat_peft.export import MASK_THRESHOLD, binary_masks, pack_bits, unpack_bits
from smat_peft.integrity import COMPACT_WEIGHTS_NAME
from tiny_models import make_tiny_model


def saturate_masks(model, density: float = 0.1, seed: int = 0):
    """Set every log α to ±4.605 (clip) with `density` ones per expert, like a trained adapter; returns `model`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.base_model.smat_layers():
            for log_alpha in layer.smat_log_alpha["default"]:
                on = torch.rand(log_alpha.shape, generator=generator) < density
                log_alpha.copy_(torch.where(on, 4.605, -4.605))
    return model


def smat_classifier(binary: bool = True, **kwargs):
    """A tiny ViT classifier with a random-δ SMAT adapter (trained-looking binary masks by default), in eval mode."""
    kwargs.setdefault("num_experts", 4)
    kwargs.setdefault("init_weights", False)
    kwargs.setdefault("modules_to_save", ["classifier"])
    model = get_smat_model(make_tiny_model("vit_cls"), SmatConfig(**kwargs)).eval()
    with torch.no_grad():
        model.base_model.smat_router["default"].temperature.fill_(0.5)
    return saturate_masks(model, density=0.3) if binary else model


def task_logits(model, support):
    x, y, q = support
    with torch.no_grad(), model.task(x, y):
        return model(pixel_values=q).logits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 100])
def test_pack_bits_round_trips_and_matches_numpy_little_bit_order(n):
    bits = torch.rand(3, n) < 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, math.ceil(n / 8))
    assert torch.equal(unpack_bits(packed, n), bits)
    assert np.array_equal(packed.numpy(), np.packbits(bits.numpy(), axis=1, bitorder="little"))


def test_binarisation_threshold_is_eval_mask_above_one_half_i_e_positive_logits():
    config = SmatConfig()
    log_alpha = torch.tensor([[-4.6, -0.01, 0.01, 4.6]])
    assert MASK_THRESHOLD == 0.5
    assert binary_masks(log_alpha, config).tolist() == [[False, False, True, True]]


def test_export_writes_one_config_and_one_safetensors_without_mask_logits(tmp_path):
    model = smat_classifier()
    export_compact(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", COMPACT_WEIGHTS_NAME]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "SMAT" and config["inference_mode"] is True
    assert config["compact"]["format_version"] == 1 and config["compact"]["mask_threshold"] == 0.5
    assert config["compact"]["delta_dtype"] == "float16"
    assert config["weights_sha256"] == file_sha256(tmp_path / COMPACT_WEIGHTS_NAME)
    with safe_open(tmp_path / COMPACT_WEIGHTS_NAME, framework="pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "log_alpha" in k or "smat_delta" in k]
    assert any(k.endswith(".smat_compact.0.masks") for k in keys)
    assert any("smat_router" in k for k in keys) and any("classifier" in k for k in keys)


def test_binary_masks_and_fp32_delta_reproduce_the_trained_adapter_exactly(tmp_path, support):
    model = smat_classifier()
    export_compact(model, tmp_path, delta_dtype="float32")
    loaded = load_compact(make_tiny_model("vit_cls"), tmp_path)
    assert isinstance(loaded, PeftModel) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.peft_config["default"].compact is None and loaded.peft_config["default"].weights_sha256 is None
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))


@pytest.mark.parametrize("delta_dtype", ["float16", "bfloat16"])
def test_16_bit_delta_is_close(tmp_path, support, delta_dtype):
    model = smat_classifier()
    export_compact(model, tmp_path, delta_dtype=delta_dtype)
    loaded = load_compact(make_tiny_model("vit_cls"), tmp_path)
    expected = task_logits(model, support)
    assert torch.allclose(task_logits(loaded, support), expected, atol=2e-3 if delta_dtype == "float16" else 1e-2)


def test_loaded_masks_are_the_thresholded_bits_and_delta_is_zero_off_the_union(tmp_path):
    model = smat_classifier(binary=False)  # fractional masks from the N(0, 0.5²) init
    export_compact(model, tmp_path, delta_dtype="float32")
    loaded = load_compact(make_tiny_model("vit_cls"), tmp_path)
    layers = dict(loaded.base_model.smat_layers())
    for name, layer in model.base_model.smat_layers():
        for index, log_alpha in enumerate(layer.smat_log_alpha["default"]):
            bits = binary_masks(log_alpha, model.peft_config["default"])
            reloaded = layers[name].smat_log_alpha["default"][index]
            assert torch.equal(reloaded.abs(), torch.full_like(reloaded, 4.605170249938965))
            assert torch.equal(binary_masks(reloaded, model.peft_config["default"]), bits)
            delta = layer.smat_delta["default"][index]
            expected = torch.where(bits.any(0).expand(delta.shape), delta, torch.zeros_like(delta))
            assert torch.equal(layers[name].smat_delta["default"][index], expected)


def test_structured_masks_lora_and_all_parameters_round_trip_exactly(tmp_path, support):
    model = smat_classifier(structured_mask=True, target_all_parameters=True, lora_r=2, modules_to_save=None)
    export_compact(model, tmp_path, delta_dtype="float32")
    loaded = load_compact(make_tiny_model("vit_cls"), tmp_path)
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))


def test_export_from_a_saved_directory_equals_export_from_the_model(tmp_path):
    model = smat_classifier()
    model.save_pretrained(tmp_path / "adapter")
    export_compact(model, tmp_path / "from_model")
    export_compact(str(tmp_path / "adapter"), tmp_path / "from_files")
    with safe_open(tmp_path / "from_model" / COMPACT_WEIGHTS_NAME, "pt") as a, safe_open(
        tmp_path / "from_files" / COMPACT_WEIGHTS_NAME, "pt"
    ) as b:
        assert sorted(a.keys()) == sorted(b.keys()) and a.metadata() == b.metadata()
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def test_size_is_at_most_a_tenth_of_the_naive_fp32_state(tmp_path):
    """M = 8, τ = 0.9 with saturated masks: the bound the ViT-S benchmark checks, on a 4-layer, 128-wide ViT."""
    vit = ViTModel(ViTConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                             image_size=32, patch_size=8), add_pooling_layer=False)
    model = saturate_masks(get_smat_model(vit, SmatConfig(num_experts=8, sparsity=0.9, init_weights=False)).eval())
    naive = sum(p.numel() * 4 for n, p in model.named_parameters() if "smat_log_alpha" in n or "smat_delta" in n)
    weights = export_compact(model, tmp_path)
    assert os.path.getsize(weights) <= naive / 10, (os.path.getsize(weights), naive)

    # every packed parameter costs exactly: union bits + M bits per union element + one fp16 δ per union element
    with safe_open(weights, "pt") as f:
        index = json.loads(f.metadata()["smat_compact"])["parameters"]
        for stem, entry in index.items():
            numel = math.prod(entry["shape"])
            union = unpack_bits(f.get_tensor(f"{stem}.union"), numel)
            count = int(union.sum())
            assert f.get_tensor(f"{stem}.union").numel() == math.ceil(numel / 8)
            assert tuple(f.get_tensor(f"{stem}.masks").shape) == (8, math.ceil(count / 8))
            delta = f.get_tensor(f"{stem}.delta")
            assert delta.dtype == torch.float16 and delta.numel() == count


def test_a_failed_export_leaves_the_previous_export_intact(tmp_path, support, monkeypatch):
    model = smat_classifier()
    export_compact(model, tmp_path / "export", delta_dtype="float32")
    before = {name: (tmp_path / "export" / name).read_bytes() for name in os.listdir(tmp_path / "export")}

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export_compact(smat_classifier(binary=False), tmp_path / "export")
    assert {name: (tmp_path / "export" / name).read_bytes() for name in os.listdir(tmp_path / "export")} == before
    assert os.listdir(tmp_path) == ["export"]  # no staging directory left behind
    monkeypatch.undo()
    loaded = load_compact(make_tiny_model("vit_cls"), tmp_path / "export")
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))


def test_full_and_compact_directories_point_to_each_others_loader(tmp_path):
    model = smat_classifier()
    model.save_pretrained(tmp_path / "full")
    export_compact(model, tmp_path / "compact")
    with pytest.raises(AdapterIntegrityError, match="compact SMAT export.*load_compact"):
        PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path / "compact")
    with pytest.raises(AdapterIntegrityError, match="full SMAT adapter.*PeftModel.from_pretrained"):
        load_compact(make_tiny_model("vit_cls"), tmp_path / "full")


def test_load_compact_refuses_a_model_that_already_has_adapters(tmp_path):
    model = smat_classifier()
    export_compact(model, tmp_path)
    with pytest.raises(TypeError, match="fresh base model"):
        load_compact(model, tmp_path)
