"""Pushing SMAT adapters to the Hub and loading them back, through the real huggingface_hub client and a fake Hub."""

import pytest
import torch
import yaml
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from peft import PeftModel

from fakes.fake_hub import fake_hub  # noqa: F401  (pytest fixture)
from smat_peft import SmatConfig, get_smat_model
from smat_peft.hub import DEFAULT_COMMIT_MESSAGE, push_smat_to_hub, smat_model_card
from tiny_models import make_tiny_model


ADAPTER_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors"}


def smat_vit(**kwargs):
    """A tiny ViT classifier with a SMAT adapter whose random δ makes it differ from the base model."""
    kwargs.setdefault("num_experts", 4)
    kwargs.setdefault("init_weights", False)
    return get_smat_model(make_tiny_model("vit_cls"), SmatConfig(**kwargs)).eval()


def perturbed(model):
    """`model` with every SMAT delta doubled, standing in for a further training step."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "smat_delta" in name:
                param.mul_(2)
    return model


def task_logits(model, support):
    x, y, q = support
    with torch.no_grad(), model.task(x, y):
        return model(pixel_values=q).logits


def front_matter(card: str) -> dict:
    _, yaml_text, _ = card.split("---\n", 2)
    return yaml.safe_load(yaml_text)


def test_push_uploads_the_adapter_with_the_smat_card(fake_hub):
    url = push_smat_to_hub(smat_vit(), "user/smat-vit")

    repo = fake_hub.repo("user/smat-vit")
    assert url == f"{fake_hub.url}/user/smat-vit/commit/{repo.branches['main']}"
    assert repo.history("main")[-1].message == DEFAULT_COMMIT_MESSAGE
    files = fake_hub.files("user/smat-vit")
    assert set(files) == ADAPTER_FILES | {".gitattributes"}
    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert {"smat-peft", "peft", "few-shot"} <= set(meta["tags"])
    assert "**Number of experts (M):** 4" in card and "**Target sparsity (τ):** 0.9" in card
    assert 'PeftModel.from_pretrained(base, "user/smat-vit")' in card and "model.task(" in card
    assert "from transformers import ViTForImageClassification" in card


def test_loading_from_the_hub_reproduces_the_task_outputs(fake_hub, support):
    model = smat_vit()
    push_smat_to_hub(model, "user/smat-vit")

    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), "user/smat-vit").eval()
    expected = task_logits(model, support)
    assert torch.equal(task_logits(loaded, support), expected)
    assert not torch.allclose(make_tiny_model("vit_cls")(pixel_values=support[2]).logits, expected)


def test_revision_and_subfolder_round_trip(fake_hub, support):
    model = smat_vit()
    push_smat_to_hub(model, "user/smat-vit", revision="v1", subfolder="adapters/smat", commit_message="v1 adapter")

    repo = fake_hub.repo("user/smat-vit")
    assert set(repo.branches) == {"main", "v1"}
    assert set(fake_hub.files("user/smat-vit")) == {".gitattributes"}  # main untouched
    files = fake_hub.files("user/smat-vit", revision="v1")
    assert set(files) == {f"adapters/smat/{name}" for name in ADAPTER_FILES} | {".gitattributes"}
    assert repo.history("v1")[-1].message == "v1 adapter"
    card = files["adapters/smat/README.md"].decode()
    assert 'PeftModel.from_pretrained(base, "user/smat-vit", revision="v1", subfolder="adapters/smat")' in card

    loaded = PeftModel.from_pretrained(
        make_tiny_model("vit_cls"), "user/smat-vit", revision="v1", subfolder="adapters/smat"
    ).eval()
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))


def test_a_new_push_to_an_existing_branch_updates_it(fake_hub, support):
    push_smat_to_hub(smat_vit(), "user/smat-vit", revision="v1")
    newer = perturbed(smat_vit())
    push_smat_to_hub(newer, "user/smat-vit", revision="v1")

    assert len(fake_hub.repo("user/smat-vit").history("v1")) == 2
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), "user/smat-vit", revision="v1").eval()
    assert torch.equal(task_logits(loaded, support), task_logits(newer, support))


def test_private_flag_reaches_the_hub(fake_hub):
    push_smat_to_hub(smat_vit(), "user/private-smat", private=True)
    push_smat_to_hub(smat_vit(), "user/public-smat")

    assert fake_hub.repo("user/private-smat").private
    assert not fake_hub.repo("user/public-smat").private
    hf_hub_download("user/public-smat", "adapter_config.json", token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/private-smat", "adapter_config.json", token=False)


def test_eval_results_and_meta_training_land_in_the_card(fake_hub):
    push_smat_to_hub(
        smat_vit(),
        "user/smat-vit",
        eval_results={"omniglot": 0.9, "aircraft": 80.5},
        meta_training={"datasets": ["ilsvrc_2012", "omniglot"], "steps": 1000},
    )

    card = fake_hub.files("user/smat-vit")["README.md"].decode()
    assert "| omniglot | 90.00 |" in card and "| aircraft | 80.50 |" in card and "| **mean** | **85.25** |" in card
    assert "- **Data:** ilsvrc_2012, omniglot" in card and "- **Steps:** 1000" in card


def test_plain_push_to_hub_lands_the_smat_card(fake_hub, support):
    x, y, q = support
    model = smat_vit()
    model.push_to_hub("user/plain", private=True, commit_message="plain push")
    card = fake_hub.files("user/plain")["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and {"smat-peft", "peft", "few-shot"} <= set(meta["tags"])
    assert fake_hub.repo("user/plain").private
    assert fake_hub.repo("user/plain").history("main")[-1].message == "plain push"
    with pytest.raises(TypeError, match="create_pr"):
        model.push_to_hub("user/plain", create_pr=True)


def test_push_to_hub_of_other_peft_methods_is_unchanged(fake_hub):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(make_tiny_model("vit_cls"), LoraConfig(target_modules=["q_proj"]))
    lora.push_to_hub("user/lora")
    assert front_matter(fake_hub.files("user/lora")["README.md"].decode())["library_name"] == "transformers"


def test_push_refuses_models_without_a_smat_adapter():
    with pytest.raises(TypeError, match="PeftModel"):
        push_smat_to_hub(make_tiny_model("vit_cls"), "user/x")


def test_card_describes_the_adapter_configuration():
    config = SmatConfig(num_experts=8, sparsity=0.8, target_modules=["query", "value"], lora_r=2)
    card = smat_model_card(config, base_model="org/vit", eval_results={"cub": "80.1 ± 0.7"}, license="mit")

    meta = front_matter(card)
    assert meta["base_model"] == "org/vit" and meta["license"] == "mit"
    assert "**Targets:** `query`, `value`" in card and "rank 2" in card and "| cub | 80.1 ± 0.7 |" in card
    assert "**mean**" not in card and "## Meta-training" not in card
    with pytest.raises(ValueError, match="cub"):
        smat_model_card(config, eval_results={"cub": 180.0})
