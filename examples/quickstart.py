"""SMAT end to end on a tiny random ViT, in seconds: wrap, condition on a support set, merge, save, load.

    python examples/quickstart.py
"""

import tempfile

import torch
from peft import PeftModel
from transformers import ViTConfig, ViTForImageClassification

from smat_peft import SmatConfig, get_smat_model


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                       image_size=32, patch_size=8, num_labels=5)
    return ViTForImageClassification(config).eval()


def main() -> None:
    # 1. Wrap: 8 experts sharing one dense delta, each with a hard-concrete mask targeting 90% zeros.
    model = get_smat_model(tiny_vit(), SmatConfig(num_experts=8, sparsity=0.9, init_weights=False))
    model.print_trainable_parameters()

    # 2. A 5-way 2-shot task: the router reads the support set's class prototypes and weighs the experts.
    support, labels = torch.randn(10, 3, 32, 32), torch.arange(5).repeat(2)
    queries = torch.randn(4, 3, 32, 32)
    model.eval()
    with model.task(support, labels) as routed:
        logits = model(pixel_values=queries).logits
    print("expert weights α:", [round(w, 3) for w in routed["default"].weights.tolist()])

    # 3. Merge the task's weights into a plain ViT: same outputs, zero inference overhead.
    merged = model.merge_task(support, labels)
    print("merged model:", type(merged).__name__,
          "| max |Δlogits| vs conditioned:", f"{(merged(pixel_values=queries).logits - logits).abs().max():.2e}")

    # 4. Save as a peft adapter and load it back onto a fresh base model.
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        loaded = PeftModel.from_pretrained(tiny_vit(), directory).eval()
        with loaded.task(support, labels):
            same = torch.allclose(loaded(pixel_values=queries).logits, logits, atol=1e-6)
    print("reloaded adapter reproduces the outputs:", same)
    report = model.sparsity_report()
    print("eval-mask sparsity per expert:", [round(e["eval_mask_sparsity"], 3) for e in report["per_expert"]])
    print("training-mask expected density per expert:",
          [round(e["train_mask_expected_density"], 3) for e in report["per_expert"]])


if __name__ == "__main__":
    main()
