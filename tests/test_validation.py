import re

import pytest
import torch

from smat_peft import SmatConfig, get_smat_model
from tiny_models import make_tiny_model, random_pixels


@pytest.fixture
def model():
    return get_smat_model(make_tiny_model("vit_cls"), SmatConfig(num_experts=4)).eval()


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 1, 2, 3, 5, 0, 1, 2, 3, 5]), r"Classes \[4\] have no support image"),
        (torch.tensor([0, 1, 2, 3, -1, 0, 1, 2, 3, 4]), r"class indices in \[0, 5\)"),
        (torch.tensor([0, 1, 2, 3, 4]), "10 images but `support_labels` has 5 labels"),
        (torch.tensor([0.0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), "integer class indices"),
        (torch.zeros(10, 2, dtype=torch.long), r"shape \[N\]"),
    ],
)
def test_bad_support_labels(model, labels, match):
    with pytest.raises(ValueError, match=match):
        with model.task(random_pixels(10), labels):
            pass


def test_labels_outside_num_classes(model):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.expert_weights(random_pixels(5), torch.tensor([0, 1, 2, 3, 4]), num_classes=3)


def test_empty_support(model):
    with pytest.raises(ValueError, match="empty"):
        model.expert_weights(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))


def test_wrong_channels(model):
    with pytest.raises(ValueError, match="1 channels but the model takes 3"):
        model.expert_weights(torch.randn(5, 1, 32, 32), torch.arange(5))


def test_images_on_another_device(model):
    # a GPU user's day-one mistake (CPU images, CUDA model); the meta device stands in for the GPU here
    with pytest.raises(ValueError, match=r"on meta but the model is on cpu; move the images to the model's device"):
        model.expert_weights(torch.empty(5, 3, 32, 32, device="meta"), torch.arange(5))


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        model.expert_weights(torch.randn(5, 3, 32), torch.arange(5))


def test_image_size_the_model_cannot_take(model):
    with pytest.raises(ValueError, match=r"could not process support_pixel_values of shape \(5, 3, 48, 48\).*interpolate_pos_encoding"):
        model.expert_weights(random_pixels(5, size=48), torch.arange(5))
    # the suggested fix works
    weights = model.expert_weights(random_pixels(5, size=48), torch.arange(5), interpolate_pos_encoding=True)
    assert torch.isclose(weights.sum(), torch.tensor(1.0))


def test_non_finite_support(model):
    pixels = random_pixels(5)
    pixels[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.expert_weights(pixels, torch.arange(5))


def test_non_finite_router_output(model):
    with torch.no_grad():
        model.base_model.smat_router["default"].keys.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite expert weights"):
        model.expert_weights(random_pixels(5), torch.arange(5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_experts=0), "num_experts"),
        (dict(sparsity=1.0), r"sparsity.*\[0, 1\)"),
        (dict(hard_concrete_gamma=0.1), "stretch interval"),
        (dict(mask_dtype="int8"), "mask_dtype"),
        (dict(outside_task="ignore"), "outside_task"),
        (dict(lora_r=0), "lora_r"),
        (dict(lora_target_modules=["q_proj"]), "lora_r"),
        (dict(feature_dim=30), "multiple of `router_num_heads`"),
        (dict(layers_pattern="layers"), "layers_to_transform"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmatConfig(**kwargs)


def test_get_smat_model_needs_a_smat_config():
    from peft import LoraConfig

    with pytest.raises(TypeError, match="SmatConfig"):
        get_smat_model(make_tiny_model("vit"), LoraConfig(target_modules=["q_proj"]))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"router_temperature": 0.0}, "router_temperature"),
        ({"router_test_temperature": -1.0}, "router_test_temperature"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"num_experts": 0}, "num_experts"),
        ({"mask_init": "zeros"}, "mask_init"),
        ({"mask_init": "dense", "train_masks": False, "sparsity": 0.9}, "mask_init='dense'"),
    ],
)
def test_bad_mask_and_router_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        SmatConfig(**kwargs)


def test_adapter_saved_without_a_test_temperature_warns_and_takes_the_default(tmp_path):
    import json

    SmatConfig(num_experts=2).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    data = json.loads(path.read_text())
    del data["router_test_temperature"]
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="router_test_temperature"):
        config = SmatConfig.check_kwargs(**data)
    assert "router_test_temperature" not in config
    assert SmatConfig(**{k: v for k, v in data.items() if k != "peft_type"}).router_test_temperature == 0.5


# ---- issue 14, item 6: clear errors instead of allocation failures and bare TypeErrors ----------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_experts": True}, r"`num_experts` must be a positive int, got True"),
        ({"num_experts": 10**6}, r"`num_experts` must be at most 1024, got 1000000"),
        ({"sparsity": "0.9"}, r"`sparsity` must be a number in \[0, 1\), got '0.9' \(str\)"),
    ],
)
def test_config_type_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmatConfig(**kwargs)


def test_a_float_number_of_classes_names_the_argument(model):
    with pytest.raises(ValueError, match=r"`num_classes` must be an int .* got 5.0"):
        with model.task(random_pixels(10), torch.arange(5).repeat(2), num_classes=5.0):
            pass


def test_a_3d_support_tensor_is_a_shape_error(model):
    with pytest.raises(ValueError, match=r"must have shape \[N, C, H, W\], got shape \(3, 32, 32\).*unsqueeze\(0\)"):
        with model.task(random_pixels(1)[0], torch.tensor([0])):
            pass


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_learning_rates_must_be_finite_and_non_negative(value):
    from smat_peft import MetaTrainingArguments

    with pytest.raises(ValueError, match="`lagrangian_lr` must be a finite learning rate"):
        MetaTrainingArguments(lagrangian_lr=value)


# ---- issue 14, item 6: the rest ----------------------------------------------------------------------------------
def test_lora_target_modules_matching_nothing_warns():
    with pytest.warns(UserWarning, match="lora_target_modules.*matched none"):
        get_smat_model(make_tiny_model("vit"), SmatConfig(num_experts=2, lora_r=2, lora_target_modules=["no_such"]))


def test_a_task_after_merge_and_unload_is_an_error_not_a_silent_no_op():
    model = get_smat_model(make_tiny_model("vit"), SmatConfig(num_experts=2, outside_task="uniform"))
    model.merge_and_unload()
    with pytest.raises(RuntimeError, match="adapt no layer.*merge_and_unload"):
        with model.base_model.task(random_pixels(10), torch.arange(5).repeat(2)):
            pass


def test_a_training_task_under_no_grad_warns():
    model = get_smat_model(make_tiny_model("vit"), SmatConfig(num_experts=2)).train()
    with pytest.warns(UserWarning, match="no_grad.*no gradient"):
        with torch.no_grad(), model.task(random_pixels(10), torch.arange(5).repeat(2)):
            pass
    model.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad(), model.task(random_pixels(10), torch.arange(5).repeat(2)):
            pass  # inference: no warning
