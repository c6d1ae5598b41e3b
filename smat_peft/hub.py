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
"""Sharing SMAT adapters on the Hugging Face Hub: a SMAT model card, and `push_smat_to_hub`.

`import smat_peft` routes `model.push_to_hub(...)` of SMAT adapters to `push_smat_to_hub`. Why: `PeftModel` inherits transformers' `PushToHubMixin.push_to_hub`, which saves
the adapter (peft writes its own README.md) and then overwrites README.md with the card already on the Hub's `main`
branch or, for a new repo, with transformers' generic template (`library_name: transformers`, no tags). Neither peft
nor transformers lets the tuner or its config contribute to that card. `push_smat_to_hub` saves the adapter, replaces
README.md with `smat_model_card(...)` and uploads the folder in one commit, so the card that lands is SMAT's.
`push_smat_folder_to_hub` does the same for an adapter directory on disk (no base model needed; `smat-peft push`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import peft
import transformers
from huggingface_hub import HfApi, ModelCardData

from . import __version__
from .config import SmatConfig


PAPER_URL = "https://arxiv.org/abs/2403.08477"
CARD_TAGS = ("smat-peft", "peft", "few-shot")
DEFAULT_COMMIT_MESSAGE = "Upload SMAT adapter"


def _format_targets(config: SmatConfig) -> str:
    if config.target_all_parameters:
        return "every parameter-owning module except the classifier (LayerNorms, embeddings, attention, MLP)"
    targets = config.target_modules
    if targets is None:
        return "the default attention and MLP linears of the architecture"
    if isinstance(targets, str):
        return f"modules matching the regex `{targets}`"
    return ", ".join(f"`{name}`" for name in sorted(targets))


def _format_accuracy(domain: str, value: Union[float, str]) -> str:
    if isinstance(value, str):
        return value
    value = float(value)
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"`eval_results[{domain!r}]` must be an accuracy in [0, 1] or [0, 100], got {value}.")
    return f"{100.0 * value if value <= 1.0 else value:.2f}"


def _evaluation_section(eval_results: Mapping[str, Union[float, str]]) -> list[str]:
    rows = [f"| {domain} | {_format_accuracy(domain, value)} |" for domain, value in eval_results.items()]
    numeric = [float(_format_accuracy(d, v)) for d, v in eval_results.items() if not isinstance(v, str)]
    if 1 < len(numeric) == len(eval_results):
        rows.append(f"| **mean** | **{sum(numeric) / len(numeric):.2f}** |")
    return ["## Evaluation", "", "| Domain | Accuracy (%) |", "|---|---|", *rows, ""]


def _meta_training_section(meta_training: Mapping[str, Any]) -> list[str]:
    lines = ["## Meta-training", ""]
    for key, value in meta_training.items():
        if key in ("datasets", "data") and isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        label = {"datasets": "Data", "data": "Data", "steps": "Steps"}.get(key, key.replace("_", " ").capitalize())
        lines.append(f"- **{label}:** {value}")
    return [*lines, ""]


def _usage_section(
    config: SmatConfig, base_model: Optional[str], repo_id: Optional[str], revision: Optional[str],
    subfolder: Optional[str],
) -> list[str]:
    # the recorded class, if transformers has it (a timm or custom base model gets the generic loader)
    base_class = config.base_model_class if hasattr(transformers, config.base_model_class or "") else "AutoModel"
    load_args = [f'"{repo_id or "<repo_id>"}"']
    load_args += [f'{name}="{value}"' for name, value in (("revision", revision), ("subfolder", subfolder)) if value]
    if config.compact:  # a compact inference export (smat_peft.export) is loaded by smat-peft, not by peft
        imports = [f"from transformers import {base_class}", "", "from smat_peft import load_compact"]
        load = f"model = load_compact(base, {', '.join(load_args)})  # inference only, in eval mode"
    else:
        imports = [
            "from peft import PeftModel",
            f"from transformers import {base_class}",
            "",
            "import smat_peft  # registers the SMAT adapter type with peft",
        ]
        load = f"model = PeftModel.from_pretrained(base, {', '.join(load_args)}).eval()"
    return [
        "## Usage",
        "",
        "```python",
        "import torch",
        *imports,
        "",
        f'base = {base_class}.from_pretrained("{base_model or "<base_model>"}")',
        load,
        "",
        "# A few labelled images of the new task: support_pixel_values [N, 3, H, W], support_labels [N] in [0, ways)",
        "with torch.no_grad(), model.task(support_pixel_values, support_labels):",
        "    outputs = model(pixel_values=query_pixel_values)",
        "```",
        "",
    ]


def smat_model_card(
    config: SmatConfig,
    *,
    base_model: Optional[str] = None,
    eval_results: Optional[Mapping[str, Union[float, str]]] = None,
    meta_training: Optional[Mapping[str, Any]] = None,
    license: str = "apache-2.0",
    repo_id: Optional[str] = None,
    revision: Optional[str] = None,
    subfolder: Optional[str] = None,
) -> str:
    """Build the README.md (model card) of a SMAT adapter.

    Args:
        config (`SmatConfig`): The adapter's configuration.
        base_model (`str`, *optional*): Hub id of the base model; defaults to `config.base_model_name_or_path`.
        eval_results (`Mapping[str, float | str]`, *optional*): Domain → few-shot accuracy, as a fraction in [0, 1]
            or a percentage in (1, 100] (shown as a percentage), or a preformatted `str` such as `"71.3 ± 0.8"`.
        meta_training (`Mapping[str, Any]`, *optional*): How the adapter was meta-trained, e.g.
            `{"datasets": ["ilsvrc_2012", "omniglot"], "steps": 50000}`; other keys are listed as they are.
        license (`str`): License identifier for the card's metadata.
        repo_id, revision, subfolder (`str`, *optional*): Where the adapter lives, used in the usage snippet.

    Returns:
        `str`: the card, YAML front matter (`library_name: peft`, tags `smat-peft`, `peft`, `few-shot`,
        `base_model`, `license`) followed by a Markdown body.

    Example:

    ```py
    >>> from smat_peft import SmatConfig
    >>> from smat_peft.hub import smat_model_card
    >>> card = smat_model_card(SmatConfig(num_experts=8, sparsity=0.9), base_model="facebook/dino-vits16",
    ...                        eval_results={"omniglot": 0.91, "aircraft": 0.78})
    >>> card.splitlines()[0], "library_name: peft" in card, "| omniglot | 91.00 |" in card
    ('---', True, True)
    ```
    """
    base_model = base_model or config.base_model_name_or_path or None
    card_data = ModelCardData(base_model=base_model, library_name="peft", license=license, tags=list(CARD_TAGS))
    title = f"SMAT adapter for {base_model}" if base_model else "SMAT adapter"
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {title}",
        "",
        f"A [SMAT]({PAPER_URL}) (Sparse MetA-Tuning) adapter, made with `smat-peft` on top of [PEFT]"
        "(https://github.com/huggingface/peft): sparse interpolated experts for a frozen vision transformer.",
        "A router reads the class prototypes of a task's support set and mixes the experts' sparse masks into one "
        "task-specific weight update, so the model adapts to a new few-shot task without fine-tuning.",
        "",
        "## Adapter",
        "",
        f"- **Base model:** {base_model or 'not recorded'}"
        + (f" (`{config.base_model_class}`)" if config.base_model_class else ""),
        f"- **Number of experts (M):** {config.num_experts}",
        f"- **Target sparsity (τ):** {config.sparsity}",
        f"- **Targets:** {_format_targets(config)}",
    ]
    if config.modules_to_save:
        lines.append(f"- **Trained in full:** {', '.join(f'`{m}`' for m in sorted(config.modules_to_save))}")
    if config.lora_r is not None:
        lines.append(f"- **LoRA inside SMAT layers:** rank {config.lora_r}, alpha {config.lora_alpha}")
    if config.compact:
        lines.append(
            f"- **Compact inference export:** binary masks (bit-packed) and δ in {config.compact.get('delta_dtype')} "
            "only where a mask is on; no mask logits, so it cannot be trained further"
        )
    else:
        lines.append(f"- **Mask storage:** {config.mask_dtype}" + (", structured" if config.structured_mask else ""))
    lines.append("")
    if meta_training:
        lines += _meta_training_section(meta_training)
    if eval_results:
        lines += _evaluation_section(eval_results)
    lines += _usage_section(config, base_model, repo_id, revision, subfolder)
    lines += [
        "### Framework versions",
        "",
        f"- smat-peft {config.smat_version or __version__}",
        f"- PEFT {config.peft_version or peft.__version__}",
        "",
    ]
    return "\n".join(lines)


def push_smat_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    revision: Optional[str] = None,
    subfolder: Optional[str] = None,
    commit_message: Optional[str] = None,
    eval_results: Optional[Mapping[str, Union[float, str]]] = None,
    meta_training: Optional[Mapping[str, Any]] = None,
    token: Optional[Union[str, bool]] = None,
) -> str:
    """Push a SMAT `PeftModel` to the Hub with a SMAT model card, in one commit.

    Creates the repo if needed (`private` is ignored for an existing repo, as in `push_to_hub`) and the branch
    `revision` if it does not exist yet (from `main`), saves the adapter(s) with `model.save_pretrained`, replaces
    the README.md peft wrote with `smat_model_card(...)` for the active adapter, and uploads the folder to
    `subfolder` (the repo root by default; the card then lives in `subfolder/README.md`).

    Args:
        model (`peft.PeftModel`): A model whose active adapter is a SMAT adapter.
        repo_id (`str`): `"namespace/name"` (or `"name"` for the token's user).
        private (`bool`, *optional*): Visibility of a newly created repo.
        revision (`str`, *optional*): Branch to commit to; created from `main` if missing. Default `main`.
        subfolder (`str`, *optional*): Folder inside the repo to upload to.
        commit_message (`str`, *optional*): Defaults to `"Upload SMAT adapter"`.
        eval_results, meta_training: Passed to [`smat_model_card`].
        token (`str` or `bool`, *optional*): Hub token; defaults to the logged-in token / `HF_TOKEN`.

    Returns:
        `str`: the commit URL (a `huggingface_hub.CommitInfo`, whose `.oid` is the commit id).

    Example:

    ```py
    >>> from peft import PeftModel
    >>> from smat_peft.hub import push_smat_to_hub
    >>> url = push_smat_to_hub(model, "me/smat-vit", private=True, eval_results={"omniglot": 0.91})  # doctest: +SKIP
    >>> loaded = PeftModel.from_pretrained(base, "me/smat-vit")  # doctest: +SKIP
    ```
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"`model` must be a peft.PeftModel with a SMAT adapter, got {type(model).__name__}.")
    config = model.peft_config.get(model.active_adapter)
    if not isinstance(config, SmatConfig):
        raise TypeError(
            f"The active adapter {model.active_adapter!r} is not a SMAT adapter ({type(config).__name__}); "
            "use `model.push_to_hub` for other peft methods or `model.set_adapter(...)` to select a SMAT adapter."
        )
    with tempfile.TemporaryDirectory() as tmp_dir:
        model.save_pretrained(tmp_dir)  # also fills config.base_model_name_or_path when the base model has one
        return push_smat_folder_to_hub(
            tmp_dir, repo_id, private=private, revision=revision, subfolder=subfolder,
            commit_message=commit_message, eval_results=eval_results, meta_training=meta_training, token=token,
        )


def _prepare_repo(
    repo_id: str, *, private: Optional[bool], revision: Optional[str], token: Optional[Union[str, bool]]
) -> tuple[HfApi, str]:
    """Create the repo (if needed) and the branch `revision` (if needed, from `main`); return the API and full id."""
    api = HfApi(token=token, library_name="smat-peft", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and revision != "main" and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api, repo_id


# What an adapter directory consists of: the only files `push_smat_folder_to_hub` uploads, in the directory and in
# each named adapter's sub-directory. Nothing else is uploaded unless named with `include`: no checkpoints, training
# state, logs or other pickles; no symlink whose target is outside the directory.
ADAPTER_FILE_NAMES = (
    "adapter_config.json",  # the config (with SMAT's integrity records: checksums, fingerprints, format version)
    "adapter_model.safetensors",  # the weights (peft's name)
    "adapter_model.bin",  # the weights when saved with `safe_serialization=False` (a pickle: prefer safetensors)
    "smat_compact.safetensors",  # a compact inference export's weights (`smat_peft.export`)
)
# Never uploaded, not even when named with `include`: training state and checkpoints (they can hold data, paths and
# optimizer state nobody should download) and the temporaries of an interrupted save.
_NEVER_UPLOADED = re.compile(
    r"(^|/)(checkpoint-[^/]*|training_state[^/]*|optimizer[^/]*|scheduler[^/]*|rng_state[^/]*|training_args\.bin"
    r"|\.[^/]*\.tmp-[^/]*|[^/]*\.tmp-[^/]*|\.smat_commit\.json)(/|$)"
)


def _inside(path: str, root: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(root)
    return real == root or real.startswith(root + os.sep)


def _named_adapter_folders(adapter_dir: str) -> list[str]:
    """Sub-directories holding a named adapter (peft saves adapter `name` to `name/`); never checkpoints."""
    from .integrity import CONFIG_NAME

    folders = []
    for name in sorted(os.listdir(adapter_dir)):
        path = os.path.join(adapter_dir, name)
        if name.startswith(".") or _NEVER_UPLOADED.search(name) or not os.path.isfile(os.path.join(path, CONFIG_NAME)):
            continue
        if os.path.islink(path) or not _inside(path, adapter_dir):
            continue
        folders.append(name)
    return folders


def adapter_upload_files(
    adapter_dir: Union[str, os.PathLike], include: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """The files `push_smat_folder_to_hub` uploads from `adapter_dir`, as `(local path, path in the repo)` pairs.

    The allow-list [`ADAPTER_FILE_NAMES`] in the directory and in each named adapter's sub-directory (a folder with
    its own `adapter_config.json`; `checkpoint-*` folders are never adapters), plus the files matching the glob
    patterns of `include` (relative to `adapter_dir`). The model card (README.md) is written by the push itself.
    Training state and checkpoints are never uploaded, and a file (or symlink) that resolves outside `adapter_dir` is
    refused with an error naming it.

    Example:

    ```py
    >>> from smat_peft.hub import adapter_upload_files
    >>> [repo_path for _, repo_path in adapter_upload_files("outputs/adapter")]  # doctest: +SKIP
    ['adapter_config.json', 'adapter_model.safetensors']
    ```
    """
    import glob

    adapter_dir = os.fspath(adapter_dir)
    chosen: dict[str, str] = {}
    for folder in [""] + _named_adapter_folders(adapter_dir):
        for name in ADAPTER_FILE_NAMES:
            rel = f"{folder}/{name}" if folder else name
            if os.path.lexists(os.path.join(adapter_dir, rel)):
                chosen[rel] = os.path.join(adapter_dir, rel)
    for pattern in include:
        matches = sorted(glob.glob(os.path.join(glob.escape(adapter_dir), pattern), recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            raise ValueError(
                f"--include {pattern!r} matches no file in {adapter_dir}: give a path or glob relative to the adapter "
                "directory, e.g. --include 'eval/*.json'."
            )
        for path in files:
            rel = os.path.relpath(path, adapter_dir).replace(os.sep, "/")
            if _NEVER_UPLOADED.search(rel):
                raise ValueError(
                    f"{path} is training state, a checkpoint or a temporary file, which push never uploads (it can "
                    "hold optimizer state, data or paths, and pickles run code when loaded). Share the adapter only, "
                    "or upload such files yourself with `huggingface_hub.upload_file` if you really mean to."
                )
            chosen[rel] = path
    for rel, path in chosen.items():
        if not _inside(path, adapter_dir):
            raise ValueError(
                f"{path} is a symlink to {os.path.realpath(path)}, outside {adapter_dir}: push uploads only files "
                "inside the adapter directory. Replace the link with the file itself."
            )
        if not os.path.isfile(path):
            raise ValueError(f"{path} is not a regular file; push uploads only files. Remove it or save again.")
    return sorted(((path, rel) for rel, path in chosen.items()), key=lambda item: item[1])


def push_smat_folder_to_hub(
    adapter_dir: Union[str, os.PathLike],
    repo_id: str,
    *,
    private: Optional[bool] = None,
    revision: Optional[str] = None,
    subfolder: Optional[str] = None,
    commit_message: Optional[str] = None,
    base_model: Optional[str] = None,
    eval_results: Optional[Mapping[str, Union[float, str]]] = None,
    meta_training: Optional[Mapping[str, Any]] = None,
    token: Optional[Union[str, bool]] = None,
    include: Sequence[str] = (),
    dry_run: bool = False,
) -> Union[str, list[str]]:
    """Push a saved SMAT adapter directory (or a compact export) to the Hub with a SMAT model card, in one commit.

    Like [`push_smat_to_hub`], without loading a base model: the directory is checked first
    (`smat_peft.integrity.check_adapter_dir`), then exactly its adapter files are uploaded (see
    [`adapter_upload_files`]: `adapter_config.json` and the weights file, in the directory and in each named adapter's
    sub-directory) with `smat_model_card(...)` as README.md. Nothing else is uploaded: no checkpoints, training state,
    logs, other `*.safetensors` / `*.bin` files, or symlinks leading out of the directory.

    Args:
        adapter_dir (`str`): What `model.save_pretrained` or `smat_peft.export_compact` wrote.
        repo_id, private, revision, subfolder, commit_message, eval_results, meta_training, token: As in
            [`push_smat_to_hub`].
        base_model (`str`, *optional*): Base model named in the card; defaults to the config's
            `base_model_name_or_path`.
        include (`Sequence[str]`): Extra files to upload, as paths or glob patterns relative to `adapter_dir`
            (training state and checkpoints are refused even here).
        dry_run (`bool`): Check the directory and return the paths that would be uploaded (in the repo), without
            contacting the Hub.

    Returns:
        `str`: the commit URL; with `dry_run`, the list of paths that would be uploaded.

    Example:

    ```py
    >>> from smat_peft.hub import push_smat_folder_to_hub
    >>> push_smat_folder_to_hub("outputs/adapter", "me/smat-vit", dry_run=True)  # doctest: +SKIP
    ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
    >>> url = push_smat_folder_to_hub("outputs/adapter", "me/smat-vit", private=True)  # doctest: +SKIP
    ```
    """
    from .integrity import check_adapter_dir

    adapter_dir = os.fspath(adapter_dir)
    attributes = check_adapter_dir(adapter_dir, allow_compact=True)
    config = SmatConfig.from_peft_type(**attributes)
    for name in _named_adapter_folders(adapter_dir):
        check_adapter_dir(os.path.join(adapter_dir, name), allow_compact=True)
    files = adapter_upload_files(adapter_dir, include)
    subfolder = subfolder.strip("/") if subfolder else None
    if dry_run:
        prefix = f"{subfolder}/" if subfolder else ""
        return sorted(prefix + rel for rel in ["README.md"] + [rel for _, rel in files if rel != "README.md"])
    revision = revision or None
    api, repo_id = _prepare_repo(repo_id, private=private, revision=revision, token=token)
    with tempfile.TemporaryDirectory() as tmp_dir:
        for source, rel in files:
            os.makedirs(os.path.dirname(os.path.join(tmp_dir, rel)), exist_ok=True)
            shutil.copyfile(source, os.path.join(tmp_dir, rel))
        card = smat_model_card(
            config,
            base_model=base_model,
            eval_results=eval_results,
            meta_training=meta_training,
            repo_id=repo_id,
            revision=revision,
            subfolder=subfolder,
        )
        with open(os.path.join(tmp_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp_dir,
            path_in_repo=subfolder,
            revision=revision,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
        )


_PUSH_KWARGS = ("private", "revision", "subfolder", "commit_message", "eval_results", "meta_training", "token")


def install_push_to_hub() -> None:
    """Make `PeftModel.push_to_hub` land SMAT's card for SMAT adapters (other peft methods are untouched).

    transformers' `push_to_hub` gives the tuner no say over the card (see the module docstring), so for a model
    whose active adapter is a SMAT adapter the call is routed to [`push_smat_to_hub`]. Run on `import smat_peft`.
    """
    from peft import PeftModel

    original = PeftModel.push_to_hub
    if getattr(original, "_smat_routed", False):
        return

    @functools.wraps(original)
    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any):
        config = getattr(self, "peft_config", {}).get(self.active_adapter)
        if not isinstance(config, SmatConfig):
            return original(self, repo_id, *args, **kwargs)
        unsupported = sorted(k for k, v in kwargs.items() if k not in _PUSH_KWARGS and v not in (None, False))
        if args or unsupported:
            raise TypeError(
                f"push_to_hub of a SMAT adapter takes the keyword arguments {', '.join(_PUSH_KWARGS)}; got "
                f"{unsupported or 'positional arguments'}."
            )
        return push_smat_to_hub(self, repo_id, **{k: v for k, v in kwargs.items() if k in _PUSH_KWARGS})

    push_to_hub._smat_routed = True
    PeftModel.push_to_hub = push_to_hub
