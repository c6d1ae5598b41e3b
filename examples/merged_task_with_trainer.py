"""The "existing pipelines" path: merge a task's weights into a plain ViT, then fine-tune it with a standard
`peft.LoraConfig` and the Hugging Face `Trainer`, exactly as any transformers model.

    python examples/merged_task_with_trainer.py
"""

import tempfile

import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from smat_peft import SmatConfig, get_smat_model


class SupportSet(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def main() -> None:
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                              intermediate_size=128, image_size=32, patch_size=8, num_labels=5))
    smat = get_smat_model(vit, SmatConfig(num_experts=8, sparsity=0.9, init_weights=False)).eval()
    support, labels = torch.randn(20, 3, 32, 32), torch.arange(5).repeat(4)

    task_model = smat.merge_task(support, labels)  # a plain ViTForImageClassification
    lora = get_peft_model(task_model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                 modules_to_save=["classifier"]))
    lora.print_trainable_parameters()
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, num_train_epochs=3, per_device_train_batch_size=10,
                                 learning_rate=5e-3, logging_steps=2, report_to=[], save_strategy="no", use_cpu=True)
        result = Trainer(model=lora, args=args, train_dataset=SupportSet(support, labels)).train()
    print(f"final training loss: {result.training_loss:.4f}")


if __name__ == "__main__":
    main()
