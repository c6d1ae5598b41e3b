"""SMAT with LoRA inside the same layers: one adapter, one checkpoint, merged as W + (Σ α_m z_m) ⊙ δ + s·BA.

    python examples/lora_stacking.py
"""

import torch
from transformers import ViTConfig, ViTForImageClassification

from smat_peft import SmatConfig, get_smat_model


def main() -> None:
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                              intermediate_size=128, image_size=32, patch_size=8, num_labels=5))
    config = SmatConfig(num_experts=8, sparsity=0.9, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                        lora_target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    model = get_smat_model(vit, config)
    model.print_trainable_parameters()

    support, labels = torch.randn(10, 3, 32, 32), torch.arange(5).repeat(2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(5):  # one backward per task context: the task weights are built on entry
        with model.task(support, labels):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=support).logits, labels)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step}: loss {loss.item():.4f}")

    model.eval()
    merged = model.merge_task(support, labels)  # δ-experts and LoRA folded into one plain ViT
    with model.task(support, labels):
        expected = model(pixel_values=support).logits
    print("merged == conditioned:", torch.allclose(merged(pixel_values=support).logits, expected, atol=1e-5))


if __name__ == "__main__":
    main()
