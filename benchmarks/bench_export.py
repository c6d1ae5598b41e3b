"""Size of a SMAT adapter on disk: naive fp32 state, peft's `save_pretrained`, and the compact export.

ViT-S sized model with random weights (hidden 384, 12 layers, 6 heads, MLP 1536, patch 16, 224 px), SMAT on the
default targets (attention and MLP linears), M = 8 experts, τ = 0.9: every log α saturated at ±4.605 with 90% zeros
per expert, drawn independently (so the union of the 8 masks covers ≈ 1 − 0.9⁸ ≈ 57% of the elements; trained
masks overlap more, which only shrinks the export). Reported:

- naive fp32 state: `log α` (M values per element) + `δ`, 4 bytes each, the router excluded;
- `adapter_model.safetensors` as `model.save_pretrained` writes it (log α, δ, router);
- `smat_compact.safetensors` from `export_compact` with δ in fp32, fp16 and bf16, and naive ÷ compact
  (target: ≥ 10, i.e. the export is at most a tenth of the naive state);
- for the fp32 export, max |Δ| of the outputs on a random 5-way task against the trained adapter (should be 0).

    python benchmarks/bench_export.py            # ViT-S (≈ 30-60 s on 2 CPU cores, ≈ 3 GB of memory)
    python benchmarks/bench_export.py --layers 2 # a smaller, faster run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from transformers import ViTConfig, ViTModel

from smat_peft import SmatConfig, export_compact, get_smat_model, load_compact


def vit_s(num_layers: int) -> ViTModel:
    config = ViTConfig(hidden_size=384, num_hidden_layers=num_layers, num_attention_heads=6, intermediate_size=1536,
                       image_size=224, patch_size=16)
    torch.manual_seed(0)
    return ViTModel(config, add_pooling_layer=False).eval()


def trained_like_smat(num_layers: int, zeros: float):
    """SMAT ViT-S with random δ and binary masks (log α = ±4.605) holding `zeros` fraction of zeros per expert."""
    model = get_smat_model(vit_s(num_layers), SmatConfig(num_experts=8, sparsity=0.9, init_weights=False)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in model.base_model.smat_layers():
            for log_alpha in layer.smat_log_alpha["default"]:
                on = torch.rand(log_alpha.shape, generator=generator) >= zeros
                log_alpha.copy_(torch.where(on, 4.605, -4.605))
    return model


def max_output_difference(model, directory: str, num_layers: int) -> float:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, 224, 224, generator=generator)
    support, labels, queries = images[:10], torch.arange(5).repeat(2), images[10:]
    loaded = load_compact(vit_s(num_layers), directory)
    outputs = []
    for m in (model, loaded):
        with torch.no_grad(), m.task(support, labels):
            outputs.append(m(pixel_values=queries).last_hidden_state)
    return float((outputs[0] - outputs[1]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="transformer blocks (12 = ViT-S)")
    parser.add_argument("--zeros", type=float, default=0.9, help="fraction of zeros of each expert's mask")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_export.json"))
    args = parser.parse_args()

    model = trained_like_smat(args.layers, args.zeros)
    adapted = [(n, p) for n, p in model.named_parameters() if "smat_log_alpha" in n or "smat_delta" in n]
    elements = sum(p.numel() for n, p in adapted if "smat_delta" in n)
    naive = sum(p.numel() * 4 for _, p in adapted)
    union = 0
    for _, layer in model.base_model.smat_layers():
        union += sum(int((la > 0).any(0).sum()) for la in layer.smat_log_alpha["default"])

    results = {
        "model": f"ViT (hidden 384, {args.layers} layers, 6 heads, MLP 1536), SMAT M=8, default targets",
        "zeros_per_expert": args.zeros,
        "adapted_elements": elements,
        "union_density": union / elements,
        "naive_fp32_bytes": naive,
        "compact": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model.save_pretrained(os.path.join(tmp, "full"))
        results["save_pretrained_seconds"] = time.perf_counter() - start
        results["save_pretrained_bytes"] = os.path.getsize(os.path.join(tmp, "full", "adapter_model.safetensors"))
        for dtype in ("float32", "float16", "bfloat16"):
            start = time.perf_counter()
            weights = export_compact(model, os.path.join(tmp, dtype), delta_dtype=dtype)
            seconds = time.perf_counter() - start
            size = os.path.getsize(weights)
            results["compact"][dtype] = {"bytes": size, "naive_over_compact": naive / size,
                                         "save_pretrained_over_compact": results["save_pretrained_bytes"] / size,
                                         "export_seconds": seconds}
        start = time.perf_counter()
        results["fp32_export_max_abs_output_difference"] = max_output_difference(
            model, os.path.join(tmp, "float32"), args.layers
        )
        results["load_compact_and_compare_seconds"] = time.perf_counter() - start

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)

    mb = 1e6
    print(results["model"], f"| {elements / 1e6:.2f}M adapted elements, union of masks {results['union_density']:.1%}")
    print(f"naive fp32 state (log α + δ)      {naive / mb:9.1f} MB")
    print(f"peft save_pretrained               {results['save_pretrained_bytes'] / mb:9.1f} MB")
    for dtype, entry in results["compact"].items():
        print(f"compact export, δ in {dtype:<9}     {entry['bytes'] / mb:9.1f} MB   naive ÷ compact = "
              f"{entry['naive_over_compact']:.1f}x   (export {entry['export_seconds']:.1f} s)")
    print(f"fp32 export reproduces the outputs: max |Δ| = {results['fp32_export_max_abs_output_difference']:.3g}")
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
