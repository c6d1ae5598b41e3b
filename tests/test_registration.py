import pytest
from peft import PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from smat_peft import SmatConfig, SmatModel, SmatPeftType, register_with_peft
from tiny_models import make_tiny_model


def test_import_registers_smat_with_peft():
    assert PEFT_TYPE_TO_CONFIG_MAPPING["SMAT"] is SmatConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["SMAT"] is SmatModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING["SMAT"] == "smat_"
    assert SmatPeftType.SMAT == "SMAT" and SmatPeftType.SMAT.value == "SMAT"


def test_registration_is_idempotent_and_refuses_conflicts():
    register_with_peft(SmatConfig, SmatModel)  # the same classes again: fine

    class OtherConfig(SmatConfig):
        pass

    with pytest.raises(ValueError, match="already has a config"):
        register_with_peft(OtherConfig, SmatModel)
    assert PEFT_TYPE_TO_CONFIG_MAPPING["SMAT"] is SmatConfig


def test_peft_get_peft_model_and_config_dispatch(tmp_path):
    model = get_peft_model(make_tiny_model("vit"), SmatConfig(num_experts=2))
    assert isinstance(model.base_model, SmatModel)
    model.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert type(config) is SmatConfig and config.peft_type == SmatPeftType.SMAT
