"""Pushing SMAT adapters to the Hub and loading them back, through the real huggingface_hub client and a fake Hub."""

import inspect

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, hf_hub_download
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
    with pytest.raises(TypeError, match="not_an_argument"):
        model.push_to_hub("user/plain", not_an_argument=True)


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


# ---------------------------------------------------------------------------------------------------------------
# model cards through huggingface_hub, written by save_pretrained and push_to_hub
RESULTS = {"omniglot": 0.9, "aircraft": "80.5 ± 0.7"}


def model_index(card) -> dict:
    return {r.dataset_name: r.metric_value for r in card.data.eval_results or []}


def test_save_pretrained_writes_the_smat_card_not_peft_template(tmp_path):
    smat_vit().save_pretrained(tmp_path)

    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "image-classification"
    assert {"smat-peft", "peft", "few-shot", "transformers"} <= set(card.data.tags)
    assert card.text.lstrip().startswith("# SMAT adapter") and "**Number of experts (M):** 4" in card.text
    assert "[More Information Needed]" not in card.text  # peft's blank template is gone
    assert card.data.eval_results is None


def test_recorded_results_become_model_index_on_save(tmp_path):
    model = smat_vit()
    model.base_model.record_eval_results(RESULTS, meta_training={"steps": 10})
    model.save_pretrained(tmp_path)

    card = ModelCard.load(tmp_path / "README.md")
    assert model_index(card) == {"omniglot": 90.0, "aircraft": 80.5}
    result = card.data.eval_results[0]
    assert (result.task_type, result.metric_type) == ("image-classification", "accuracy")
    assert "| aircraft | 80.5 ± 0.7 |" in card.text and "- **Steps:** 10" in card.text
    model.base_model.card_records.clear()
    model.save_pretrained(tmp_path)  # saving again keeps the results of the card already there
    assert model_index(ModelCard.load(tmp_path / "README.md")) == {"omniglot": 90.0, "aircraft": 80.5}
    with pytest.raises(ValueError, match="cub"):
        model.base_model.record_eval_results({"cub": 180.0})


def test_a_card_the_user_wrote_keeps_its_text_and_gains_smat_metadata(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# My adapter\n\nHand-written notes.\n")
    model = smat_vit()
    model.base_model.record_eval_results({"omniglot": 0.5})
    model.save_pretrained(tmp_path)

    card = ModelCard.load(tmp_path / "README.md")
    assert "Hand-written notes." in card.text and card.data.license == "mit"
    assert card.data.library_name == "peft" and "smat-peft" in card.data.tags
    assert card.data.pipeline_tag == "image-classification" and model_index(card) == {"omniglot": 50.0}


def test_pushed_card_has_model_index_results_that_model_card_load_reads_back(fake_hub):
    model = smat_vit()
    model.base_model.record_eval_results(RESULTS)
    model.push_to_hub("user/smat-vit")

    card = ModelCard.load("user/smat-vit")
    assert model_index(card) == {"omniglot": 90.0, "aircraft": 80.5}
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "image-classification"
    assert "model-index" in fake_hub.files("user/smat-vit")["README.md"].decode()
    push_smat_to_hub(model, "user/other", eval_results={"cub": 0.7})  # explicit results win over recorded ones
    assert model_index(ModelCard.load("user/other")) == {"cub": 70.0}


def test_create_pr_opens_a_pull_request_with_the_card(fake_hub, support):
    model = smat_vit()
    model.base_model.record_eval_results(RESULTS)
    info = model.push_to_hub(
        "user/smat-vit", create_pr=True, commit_message="Add SMAT", commit_description="Meta-trained on 2 domains",
        tags=["my-tag"],
    )

    repo = fake_hub.repo("user/smat-vit")
    assert info.pr_num == 1 and info.pr_url.endswith("/user/smat-vit/discussions/1")
    pr = repo.pull_requests[1]
    assert (pr.base, pr.title, pr.description) == ("main", "Add SMAT", "Meta-trained on 2 domains")
    assert set(fake_hub.files("user/smat-vit")) == {".gitattributes"}  # main untouched
    assert set(fake_hub.files("user/smat-vit", revision="refs/pr/1")) == ADAPTER_FILES | {".gitattributes"}
    card = ModelCard.load(hf_hub_download("user/smat-vit", "README.md", revision="refs/pr/1"))
    assert "my-tag" in card.data.tags and model_index(card) == {"omniglot": 90.0, "aircraft": 80.5}
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), "user/smat-vit", revision="refs/pr/1").eval()
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))


def test_push_to_hub_takes_every_argument_of_peft_push_to_hub(fake_hub):
    from transformers.utils import PushToHubMixin

    peft_arguments = set(inspect.signature(PushToHubMixin.push_to_hub).parameters) - {"self", "repo_id"}
    values = {
        "commit_message": "message", "commit_description": "description", "private": True, "token": "hf_fake",
        "revision": "v1", "create_pr": False, "max_shard_size": "1GB", "tags": ["extra"],
    }
    assert peft_arguments == set(values)
    smat_vit().push_to_hub("user/all-args", **values)

    repo = fake_hub.repo("user/all-args")
    commit = repo.history("v1")[-1]
    assert repo.private and (commit.message, commit.description) == ("message", "description")
    assert "extra" in ModelCard.load(hf_hub_download("user/all-args", "README.md", revision="v1")).data.tags


def test_the_peft_hooks_are_installed_once_and_leave_other_methods_alone(tmp_path):
    from peft import LoraConfig, get_peft_model

    from smat_peft.hub import install_model_card, install_push_to_hub

    hooks = (PeftModel.push_to_hub, PeftModel.create_or_update_model_card)
    install_push_to_hub()
    install_model_card()
    assert (PeftModel.push_to_hub, PeftModel.create_or_update_model_card) == hooks
    assert not getattr(PeftModel.push_to_hub.__wrapped__, "_smat_routed", False)
    assert not getattr(PeftModel.create_or_update_model_card.__wrapped__, "_smat_card", False)
    lora = get_peft_model(make_tiny_model("vit_cls"), LoraConfig(target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert "smat-peft" not in (card.data.tags or []) and card.data.pipeline_tag is None


def test_the_card_has_no_empty_base_model_tag_for_a_model_without_a_name(tmp_path):
    smat_vit().save_pretrained(tmp_path)
    assert not [tag for tag in ModelCard.load(tmp_path / "README.md").data.tags if tag.endswith(":")]
