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
                   [--token TOKEN] [--base-model NAME_OR_PATH]
    smat-peft export ADAPTER_DIR OUTPUT_DIR [--delta-dtype {float16,bfloat16,float32}] [--base-model NAME_OR_PATH]
                     [--verify]

One sub-command per `add_<command>_parser(subparsers)` function, each setting `func` (called with the parsed
arguments, returns the exit status); `build_parser()` calls them all (add a new command to `COMMANDS`). Errors a user
can fix (missing or corrupted files, a wrong base model, Hub errors) are printed as one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional, Sequence

from . import __version__


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
    parser.add_argument("--revision", default=None, help="Branch to commit to; created from main if missing.")
    parser.add_argument("--subfolder", default=None, help="Folder inside the repo to upload to (default: root).")
    parser.add_argument("--commit-message", default=None, help="Commit message (default: 'Upload SMAT adapter').")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token or HF_TOKEN).")
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="NAME_OR_PATH",
        help="Base model named in the model card (default: base_model_name_or_path from adapter_config.json).",
    )
    parser.set_defaults(func=run_push)
    return parser


def run_push(args: argparse.Namespace) -> int:
    from .hub import push_smat_folder_to_hub

    url = push_smat_folder_to_hub(
        args.adapter_dir,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        subfolder=args.subfolder,
        commit_message=args.commit_message,
        base_model=args.base_model,
        token=args.token,
    )
    _print(f"Pushed {args.adapter_dir} to {args.repo_id}: {url}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# export
def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`smat-peft export`: write the compact inference export of a saved adapter."""
    from .export import DELTA_DTYPES

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
        default="float16",
        choices=sorted(DELTA_DTYPES),
        help="Storage dtype of the delta (default: float16; float32 is exact).",
    )
    parser.add_argument(
        "--base-model",
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
COMMANDS: tuple[Callable[[Any], argparse.ArgumentParser], ...] = (add_push_parser, add_export_parser)


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in COMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `smat-peft` with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Example:

    ```py
    >>> from smat_peft.cli import main
    >>> main(["export", "outputs/adapter", "outputs/compact"])  # doctest: +SKIP
    0
    ```
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as error:  # user-fixable: files, base model, Hub (HfHubHTTPError is an OSError)
        print(f"smat-peft {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
