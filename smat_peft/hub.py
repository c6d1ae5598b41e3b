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
import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import peft
import transformers
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .constants import __version__
from .config import SmatConfig
from .validation import format_accuracy


PAPER_URL = "https://arxiv.org/abs/2403.08477"
CARD_TAGS = ("smat-peft", "peft", "few-shot")
DEFAULT_COMMIT_MESSAGE = "Upload SMAT adapter"
EVAL_TASK_TYPE = "image-classification"
EVAL_TASK_NAME = "Few-shot image classification"


def _format_targets(config: SmatConfig) -> str:
    if config.target_all_parameters:
        return "every parameter-owning module except the classifier (LayerNorms, embeddings, attention, MLP)"
    targets = config.target_modules
    if targets is None:
        return "the default attention and MLP linears of the architecture"
    if isinstance(targets, str):
        return f"modules matching the regex `{targets}`"
    return ", ".join(f"`{name}`" for name in sorted(targets))


def _accuracy_value(domain: str, value: Union[float, str]) -> Optional[float]:
    """The accuracy in percent for `model-index`: a number, or the leading number of a string such as "80.1 ± 0.7"."""
    match = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", format_accuracy(domain, value))
    return round(float(match.group(1)), 2) if match else None


def eval_results_metadata(eval_results: Mapping[str, Union[float, str]]) -> list[EvalResult]:
    """`EvalResult`s (the Hub's `model-index`) for domain → few-shot accuracy; values without a number are left out.

    Example:

    ```py
    >>> from smat_peft.hub import eval_results_metadata
    >>> [(r.dataset_name, r.metric_value) for r in eval_results_metadata({"omniglot": 0.91, "cub": "80.1 ± 0.7"})]
    [('omniglot', 91.0), ('cub', 80.1)]
    ```
    """
    results = []
    for domain, value in eval_results.items():
        accuracy = _accuracy_value(domain, value)
        if accuracy is None:
            continue
        results.append(
            EvalResult(
                task_type=EVAL_TASK_TYPE,
                task_name=EVAL_TASK_NAME,
                dataset_type=str(domain),
                dataset_name=str(domain),
                metric_type="accuracy",
                metric_name="Few-shot accuracy (%)",
                metric_value=accuracy,
            )
        )
    return results


def _evaluation_section(eval_results: Mapping[str, Union[float, str]]) -> list[str]:
    rows = [f"| {domain} | {format_accuracy(domain, value)} |" for domain, value in eval_results.items()]
    numeric = [float(format_accuracy(d, v)) for d, v in eval_results.items() if not isinstance(v, str)]
    if 1 < len(numeric) == len(eval_results):
        rows.append(f"| **mean** | **{sum(numeric) / len(numeric):.2f}** |")
    return ["## Evaluation", "", "| Domain | Accuracy (%) |", "|---|---|", *rows, ""]


def pipeline_tag(config: SmatConfig) -> str:
    """The Hub pipeline of the adapted model: `image-classification` for a `*ForImageClassification` base model,
    `image-feature-extraction` for a backbone (SMAT's few-shot use: prototypes of its features)."""
    if (config.base_model_class or "").endswith("ForImageClassification"):
        return "image-classification"
    return "image-feature-extraction"


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


def build_model_card(
    config: SmatConfig,
    *,
    base_model: Optional[str] = None,
    eval_results: Optional[Mapping[str, Union[float, str]]] = None,
    meta_training: Optional[Mapping[str, Any]] = None,
    license: str = "apache-2.0",
    repo_id: Optional[str] = None,
    revision: Optional[str] = None,
    subfolder: Optional[str] = None,
    tags: Optional[Sequence[str]] = None,
) -> ModelCard:
    """Build the model card of a SMAT adapter as a `huggingface_hub.ModelCard`.

    The metadata is a `ModelCardData`: `library_name: peft`, `pipeline_tag` (see [`pipeline_tag`]), `base_model`,
    `license`, tags (`smat-peft`, `peft`, `few-shot` and `tags`) and, from `eval_results`, `EvalResult`s that the Hub
    reads as `model-index` (task `image-classification`, metric `accuracy` in percent, one dataset per domain). The
    body describes the adapter, its meta-training and results, and how to load it.

    Args:
        config (`SmatConfig`): The adapter's configuration.
        base_model (`str`, *optional*): Hub id of the base model; defaults to `config.base_model_name_or_path`.
        eval_results (`Mapping[str, float | str]`, *optional*): Domain → few-shot accuracy, as a fraction in [0, 1]
            or a percentage in (1, 100] (shown as a percentage), or a preformatted `str` such as `"71.3 ± 0.8"` (its
            leading number goes into `model-index`).
        meta_training (`Mapping[str, Any]`, *optional*): How the adapter was meta-trained, e.g.
            `{"datasets": ["ilsvrc_2012", "omniglot"], "steps": 50000}`; other keys are listed as they are.
        license (`str`): License identifier for the card's metadata.
        repo_id, revision, subfolder (`str`, *optional*): Where the adapter lives, used in the usage snippet and as
            the `model-index` name.
        tags (`Sequence[str]`, *optional*): More tags for the metadata.

    Example:

    ```py
    >>> from huggingface_hub import ModelCard
    >>> from smat_peft import SmatConfig
    >>> from smat_peft.hub import build_model_card
    >>> card = build_model_card(SmatConfig(num_experts=8, sparsity=0.9), base_model="facebook/dino-vits16",
    ...                         eval_results={"omniglot": 0.91, "aircraft": 0.78})
    >>> card.data.library_name, card.data.pipeline_tag, card.data.eval_results[0].metric_value
    ('peft', 'image-feature-extraction', 91.0)
    >>> ModelCard(str(card)).data.eval_results == card.data.eval_results
    True
    ```
    """
    base_model = base_model or config.base_model_name_or_path or None
    title = f"SMAT adapter for {base_model}" if base_model else "SMAT adapter"
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        license=license,
        pipeline_tag=pipeline_tag(config),
        tags=list(dict.fromkeys([*CARD_TAGS, *(tags or [])])),
        model_name=repo_id.split("/")[-1] if repo_id else title,
        eval_results=eval_results_metadata(eval_results) if eval_results else None,
    )
    lines = [
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
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def smat_model_card(config: SmatConfig, **kwargs: Any) -> str:
    """The README.md text of a SMAT adapter: [`build_model_card`] as a string (YAML front matter, then Markdown).

    Example:

    ```py
    >>> from smat_peft import SmatConfig
    >>> from smat_peft.hub import smat_model_card
    >>> card = smat_model_card(SmatConfig(num_experts=8, sparsity=0.9), base_model="facebook/dino-vits16",
    ...                        eval_results={"omniglot": 0.91, "aircraft": 0.78})
    >>> card.splitlines()[0], "library_name: peft" in card, "| omniglot | 91.00 |" in card, "model-index:" in card
    ('---', True, True, True)
    ```
    """
    return str(build_model_card(config, **kwargs))


def push_smat_to_hub(
    model: Any,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token: Optional[Union[str, bool]] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    max_shard_size: Optional[Union[int, str]] = None,
    tags: Optional[Sequence[str]] = None,
    subfolder: Optional[str] = None,
    eval_results: Optional[Mapping[str, Union[float, str]]] = None,
    meta_training: Optional[Mapping[str, Any]] = None,
) -> str:
    """Push a SMAT `PeftModel` to the Hub with a SMAT model card, in one commit (or one pull request).

    Takes every argument of `PeftModel.push_to_hub` (transformers' `PushToHubMixin.push_to_hub`), plus `subfolder`,
    `eval_results` and `meta_training`. Creates the repo if needed (`private` is ignored for an existing repo, as in
    `push_to_hub`) and the branch `revision` if it does not exist yet (from `main`), saves the adapter(s) with
    `model.save_pretrained`, writes [`build_model_card`] for the active adapter as README.md, and uploads the folder to
    `subfolder` (the repo root by default; the card then lives in `subfolder/README.md`).

    Args:
        model (`peft.PeftModel`): A model whose active adapter is a SMAT adapter.
        repo_id (`str`): `"namespace/name"` (or `"name"` for the token's user).
        commit_message (`str`, *optional*): Defaults to `"Upload SMAT adapter"`.
        commit_description (`str`, *optional*): The description of the commit (or of the pull request).
        private (`bool`, *optional*): Visibility of a newly created repo.
        token (`str` or `bool`, *optional*): Hub token; defaults to the logged-in token / `HF_TOKEN`.
        revision (`str`, *optional*): Branch to commit to (or to open the pull request against); created from
            `main` if missing. Default `main`.
        create_pr (`bool`): Open a pull request with the upload instead of committing to `revision`.
        max_shard_size: Accepted for compatibility with `push_to_hub`; peft never shards adapter weights.
        tags (`Sequence[str]`, *optional*): More tags for the card's metadata.
        subfolder (`str`, *optional*): Folder inside the repo to upload to.
        eval_results, meta_training: Passed to [`build_model_card`]; default to what was recorded with
            `model.base_model.record_eval_results(...)` for the active adapter.

    Returns:
        `str`: the commit URL (a `huggingface_hub.CommitInfo`: `.oid` is the commit id, `.pr_url` / `.pr_num` the pull
        request with `create_pr=True`).

    Example:

    ```py
    >>> from peft import PeftModel
    >>> from smat_peft.hub import push_smat_to_hub
    >>> url = push_smat_to_hub(model, "me/smat-vit", private=True, eval_results={"omniglot": 0.91})  # doctest: +SKIP
    >>> loaded = PeftModel.from_pretrained(base, "me/smat-vit")  # doctest: +SKIP
    ```
    """
    from peft import PeftModel

    del max_shard_size  # an adapter is one weights file
    if not isinstance(model, PeftModel):
        raise TypeError(f"`model` must be a peft.PeftModel with a SMAT adapter, got {type(model).__name__}.")
    config = model.peft_config.get(model.active_adapter)
    if not isinstance(config, SmatConfig):
        raise TypeError(
            f"The active adapter {model.active_adapter!r} is not a SMAT adapter ({type(config).__name__}); "
            "use `model.push_to_hub` for other peft methods or `model.set_adapter(...)` to select a SMAT adapter."
        )
    recorded = _recorded_card_info(model)
    with tempfile.TemporaryDirectory() as tmp_dir:
        model.save_pretrained(tmp_dir)  # also fills config.base_model_name_or_path when the base model has one
        return push_smat_folder_to_hub(
            tmp_dir, repo_id, private=private, revision=revision, subfolder=subfolder,
            commit_message=commit_message, commit_description=commit_description, create_pr=create_pr, tags=tags,
            eval_results=eval_results if eval_results is not None else recorded.get("eval_results"),
            meta_training=meta_training if meta_training is not None else recorded.get("meta_training"),
            token=token,
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
    commit_description: Optional[str] = None,
    create_pr: bool = False,
    tags: Optional[Sequence[str]] = None,
    include: Sequence[str] = (),
    dry_run: bool = False,
) -> Union[str, list[str]]:
    """Push a saved SMAT adapter directory (or a compact export) to the Hub with a SMAT model card, in one commit.

    Like [`push_smat_to_hub`], without loading a base model: the directory is checked first
    (`smat_peft.integrity.check_adapter_dir`), then exactly its adapter files are uploaded (see
    [`adapter_upload_files`]: `adapter_config.json` and the weights file, in the directory and in each named adapter's
    sub-directory) with `smat_model_card(...)` as README.md. Nothing else is uploaded: no checkpoints, training state,
    logs, other `*.safetensors` / `*.bin` files, or symlinks leading out of the directory.

    `repo_id`, `private`, `revision`, `subfolder`, `commit_message`, `commit_description`, `create_pr`, `tags`,
    `eval_results`, `meta_training` and `token` are as in [`push_smat_to_hub`].

    Args:
        adapter_dir (`str`): What `model.save_pretrained` or `smat_peft.export_compact` wrote.
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
            tags=tags,
        )
        with open(os.path.join(tmp_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp_dir,
            path_in_repo=subfolder,
            revision=revision,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            commit_description=commit_description,
            create_pr=create_pr,
        )


# ------------------------------------------------------------------------------------------------------------------
# Where smat-peft reaches into peft. peft and transformers give a tuner no say over the model card, so two methods of
# `PeftModel` are wrapped, once per process (idempotent): each call checks whether the model's active adapter is a SMAT
# adapter and otherwise runs peft's method unchanged. See docs/peft_compatibility.md.
_SMAT_PUSH_KWARGS = ("subfolder", "eval_results", "meta_training")


def _smat_config(model: Any) -> Optional[SmatConfig]:
    configs = getattr(model, "peft_config", None) or {}
    config = configs.get(getattr(model, "active_adapter", None))
    return config if isinstance(config, SmatConfig) else None


def _recorded_card_info(model: Any) -> dict[str, Any]:
    records = getattr(model.base_model, "card_records", None) or {}
    return dict(records.get(model.active_adapter, {}))


def write_model_card(model: Any, output_dir: Union[str, os.PathLike], replace_text: bool) -> None:
    """Turn the README.md peft wrote into `output_dir` into the SMAT card of `model`'s active adapter.

    Keeps what peft put in the metadata (its tags, `base_model`) and adds SMAT's ([`build_model_card`]), with the
    results recorded by `model.base_model.record_eval_results(...)`. With `replace_text=False` (a card the user wrote
    was already there) only the metadata changes; a previous SMAT card (tagged `smat-peft`) is rebuilt, keeping its
    `model-index` results when none are recorded.
    """
    config = _smat_config(model)
    path = os.path.join(os.fspath(output_dir), "README.md")
    card = ModelCard.load(path)
    recorded = _recorded_card_info(model)
    previous = card.data.eval_results if "smat-peft" in (card.data.tags or []) else None
    smat = build_model_card(
        config,
        base_model=card.data.base_model if isinstance(card.data.base_model, str) else None,
        eval_results=recorded.get("eval_results"),
        meta_training=recorded.get("meta_training"),
        # peft tags `base_model:adapter:<name_or_path>` even when the base model has no name: drop that empty tag
        tags=[tag for tag in card.data.tags or [] if not tag.endswith(":")],
    )
    if previous and not recorded.get("eval_results"):
        smat.data.eval_results, smat.data.model_name = previous, card.data.model_name or smat.data.model_name
    if replace_text or "smat-peft" in (card.data.tags or []):
        card = smat
    else:
        data = card.data
        data.library_name = "peft"
        data.tags = list(dict.fromkeys([*(t for t in data.tags or [] if not t.endswith(":")), *smat.data.tags]))
        data.pipeline_tag = data.pipeline_tag or smat.data.pipeline_tag
        data.base_model = data.base_model or smat.data.base_model
        if smat.data.eval_results:
            data.eval_results, data.model_name = smat.data.eval_results, data.model_name or smat.data.model_name
    card.save(path)


def install_model_card() -> None:
    """Make `PeftModel.save_pretrained` write SMAT's model card for SMAT adapters (other peft methods are untouched).

    peft's `save_pretrained` calls `PeftModel.create_or_update_model_card(save_directory)`, which writes its blank
    template (or updates an existing card). For a model whose active adapter is SMAT, the wrapper lets peft do that,
    then [`write_model_card`] turns the result into the SMAT card. Run on `import smat_peft`; idempotent.
    """
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, "_smat_card", False):
        return

    @functools.wraps(original)
    def create_or_update_model_card(self, output_dir: str):
        if _smat_config(self) is None:
            return original(self, output_dir)
        existed = os.path.isfile(os.path.join(output_dir, "README.md"))
        original(self, output_dir)
        write_model_card(self, output_dir, replace_text=not existed)

    create_or_update_model_card._smat_card = True
    PeftModel.create_or_update_model_card = create_or_update_model_card


def install_push_to_hub() -> None:
    """Make `PeftModel.push_to_hub` land SMAT's card for SMAT adapters (other peft methods are untouched).

    transformers' `push_to_hub` overwrites README.md with the card already on the Hub or its generic template
    (`library_name: transformers`), so for a model whose active adapter is a SMAT adapter the call goes to
    [`push_smat_to_hub`] with all its arguments (`commit_message`, `commit_description`, `private`, `token`,
    `revision`, `create_pr`, `max_shard_size`, `tags`, plus `subfolder`, `eval_results`, `meta_training`). Run on
    `import smat_peft`; idempotent.
    """
    from peft import PeftModel

    original = PeftModel.push_to_hub
    if getattr(original, "_smat_routed", False):
        return
    accepted = [name for name in inspect.signature(original).parameters if name not in ("self", "repo_id")]
    accepted = [name for name in accepted if name not in ("args", "kwargs")] + list(_SMAT_PUSH_KWARGS)

    @functools.wraps(original)
    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any):
        if _smat_config(self) is None:
            return original(self, repo_id, *args, **kwargs)
        unknown = sorted(k for k in kwargs if k not in accepted)
        if args or unknown:
            raise TypeError(
                f"push_to_hub of a SMAT adapter takes the repo id, then the keyword arguments {', '.join(accepted)}; "
                f"got {', '.join(unknown) if unknown else f'{len(args)} more positional argument(s)'}."
            )
        return push_smat_to_hub(self, repo_id, **kwargs)

    push_to_hub._smat_routed = True
    PeftModel.push_to_hub = push_to_hub
