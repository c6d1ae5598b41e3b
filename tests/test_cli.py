"""The `smat-peft` command line: `push` (through a fake Hub) and `export`, called in-process via `main([...])`."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel

from fakes.fake_hub import FAKE_TOKEN, fake_hub  # noqa: F401  (pytest fixture)
from smat_peft import load_compact
from smat_peft.cli import build_parser, main
from smat_peft.integrity import COMPACT_WEIGHTS_NAME, SAFETENSORS_NAME
from test_export import smat_classifier, task_logits
from tiny_models import make_tiny_model


@pytest.fixture
def adapter_dir(tmp_path):
    model = smat_classifier()
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", model


def test_parser_has_one_sub_command_per_add_function():
    parser = build_parser()
    args = parser.parse_args(["push", "dir", "user/repo", "--private", "--revision", "v1", "--subfolder", "a/b",
                              "--commit-message", "msg", "--token", "t", "--base-model", "facebook/dino-vits16"])
    assert (args.command, args.private, args.revision, args.subfolder) == ("push", True, "v1", "a/b")
    assert (args.commit_message, args.token, args.base_model) == ("msg", "t", "facebook/dino-vits16")
    args = parser.parse_args(["export", "dir", "out", "--delta-dtype", "bfloat16"])
    assert (args.command, args.delta_dtype, args.base_model, args.verify) == ("export", "bfloat16", None, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "dir", "out", "--delta-dtype", "int8"])


@pytest.mark.parametrize("command", ["push", "export", "assets"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: smat-peft {command}" in capsys.readouterr().out


def test_push_uploads_the_folder_with_the_smat_card_without_a_base_model(fake_hub, adapter_dir, support):
    directory, model = adapter_dir
    (directory / "optimizer.pt").write_bytes(b"training state, not uploaded")
    status = main(["push", str(directory), "user/smat-vit", "--private", "--revision", "v1", "--subfolder", "smat",
                   "--commit-message", "first adapter", "--token", FAKE_TOKEN, "--base-model", "org/tiny-vit"])
    assert status == 0
    repo = fake_hub.repo("user/smat-vit")
    assert repo.private and repo.history("v1")[-1].message == "first adapter"
    files = fake_hub.files("user/smat-vit", revision="v1")
    assert {"smat/README.md", "smat/adapter_config.json", f"smat/{SAFETENSORS_NAME}"} <= set(files)
    assert "smat/optimizer.pt" not in files
    card = files["smat/README.md"].decode()
    assert "base_model: org/tiny-vit" in card and "smat-peft" in card
    assert 'PeftModel.from_pretrained(base, "user/smat-vit", revision="v1", subfolder="smat")' in card

    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), "user/smat-vit", revision="v1", subfolder="smat")
    assert torch.equal(task_logits(loaded.eval(), support), task_logits(model, support))


def test_push_a_compact_export_and_load_it_from_the_hub(fake_hub, adapter_dir, tmp_path, support):
    directory, model = adapter_dir
    assert main(["export", str(directory), str(tmp_path / "compact"), "--delta-dtype", "float32"]) == 0
    assert main(["push", str(tmp_path / "compact"), "user/smat-vit-compact"]) == 0
    files = fake_hub.files("user/smat-vit-compact")
    assert COMPACT_WEIGHTS_NAME in files and SAFETENSORS_NAME not in files
    assert 'load_compact(base, "user/smat-vit-compact")' in files["README.md"].decode()

    loaded = load_compact(make_tiny_model("vit_cls"), "user/smat-vit-compact")
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))


def test_push_of_a_broken_adapter_fails_with_one_line_and_uploads_nothing(fake_hub, adapter_dir, capsys):
    directory, _ = adapter_dir
    os.remove(directory / SAFETENSORS_NAME)
    assert main(["push", str(directory), "user/smat-vit"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("smat-peft push: error: SMAT adapter weights are missing") and SAFETENSORS_NAME in err
    assert not fake_hub.repos


def test_export_writes_a_compact_adapter_that_reproduces_the_outputs(adapter_dir, tmp_path, support, capsys):
    directory, model = adapter_dir
    assert main(["export", str(directory), str(tmp_path / "compact"), "--delta-dtype", "float32"]) == 0
    assert "smaller than adapter_model.safetensors" in capsys.readouterr().out
    loaded = load_compact(make_tiny_model("vit_cls"), tmp_path / "compact")
    assert torch.equal(task_logits(loaded, support), task_logits(model, support))


def test_export_verifies_on_a_base_model(adapter_dir, tmp_path, capsys):
    directory, _ = adapter_dir
    make_tiny_model("vit_cls").save_pretrained(tmp_path / "base")
    status = main(["export", str(directory), str(tmp_path / "compact"), "--delta-dtype", "float32",
                   "--base-model", str(tmp_path / "base")])
    assert status == 0
    out = capsys.readouterr().out
    assert "Verified on the base model: max |full − compact| over a random task's outputs = 0" in out


def test_export_verify_without_a_recorded_base_model_says_what_to_pass(adapter_dir, tmp_path, capsys):
    directory, _ = adapter_dir
    assert main(["export", str(directory), str(tmp_path / "compact"), "--verify"]) == 1
    assert "pass --base-model" in capsys.readouterr().err


def test_export_of_a_missing_directory_fails_with_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("smat-peft export: error:") and "nothing" in err and "Traceback" not in err


def test_console_script_help():
    script = shutil.which("smat-peft", path=os.path.dirname(sys.executable)) or shutil.which("smat-peft")
    assert script, "the `smat-peft` console script is not installed: run `pip install -e .`"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "push" in result.stdout and "export" in result.stdout


# ---- meta-train / evaluate ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_assets(tmp_path_factory):
    import sys as _sys

    _sys.path.insert(0, os.path.dirname(__file__))
    from tiny_data import synthetic_domain

    root = tmp_path_factory.mktemp("cli-assets")
    make_tiny_model("vit").save_pretrained(root / "vit")
    for name, seed in (("a", 0), ("b", 1)):
        synthetic_domain(40, 8, seed=seed).save_to_disk(str(root / name))
    return root


def test_meta_train_then_evaluate_from_the_command_line(training_assets, tmp_path, capsys):
    root = training_assets
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_name_or_path: {root / 'vit'}\nnum_experts: 2\ntrain_datasets: ['a={root / 'a'}']\n"
        "max_steps: 50\ntasks_per_update: 1\nways: 5\nshots: 2\nqueries: 2\nimage_size: 32\nwarmup_steps: 0\n"
        "eval_steps: 0\nsave_steps: 0\ndisable_tqdm: true\ntest_episodes: 3\n"
    )
    out = tmp_path / "run"
    assert main(["meta-train", "--config", str(config), "--max_steps", "2", "--output_dir", str(out)]) == 0
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "checkpoint-2").is_dir()
    history = json.loads((out / "metrics.json").read_text())["train_history"]
    assert history[-1]["step"] == 2  # the flag overrode the config file's max_steps
    capsys.readouterr()
    assert main(["evaluate", "--config", str(config), "--adapter_name_or_path", str(out / "adapter"),
                 "--eval_datasets", f"b={root / 'b'}", "--output_dir", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| a |" in table and "| b |" in table and "OOD average" in table
    evaluation = json.loads((out / "metrics.json").read_text())["evaluation"]
    assert evaluation["domains"]["b"]["direct"]["episodes"] == 3


def test_pmf_trained_then_evaluated_from_the_command_line(training_assets, tmp_path, capsys):
    from transformers import AutoModel

    from smat_peft.training.serialization import load_state

    root = training_assets
    config = _tiny_run_config(root, tmp_path)
    out = tmp_path / "pmf"
    assert main(["meta-train", "--config", str(config), "--method", "pmf", "--dense_lr", "0.01",
                 "--output_dir", str(out)]) == 0
    assert "model written to" in capsys.readouterr().out
    saved = out / "model"
    assert (saved / "config.json").exists() and (saved / "model.safetensors").exists()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))  # nothing pickled
    trained = AutoModel.from_pretrained(saved).state_dict()  # what `evaluate --model_name_or_path` loads
    checkpoint = load_state(str(out / "checkpoint-2" / "adapter"), "model_state")  # the trainer's own copy
    assert trained.keys() == checkpoint.keys() and all(torch.equal(trained[k], checkpoint[k]) for k in trained)
    initial = AutoModel.from_pretrained(root / "vit").state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)  # it did train
    assert main(["evaluate", "--config", str(config), "--method", "pmf", "--model_name_or_path", str(saved),
                 "--test_episodes", "3", "--eval_datasets", f"b={root / 'b'}", "--output_dir", str(tmp_path / "pmf-eval")]) == 0
    table = capsys.readouterr().out
    assert "| a |" in table and "| b |" in table and "OOD average" in table
    evaluation = json.loads((tmp_path / "pmf-eval" / "metrics.json").read_text())["evaluation"]
    assert evaluation["domains"]["b"]["direct"]["episodes"] == 3


def test_unknown_config_keys_are_refused(training_assets, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"max_stepz": 3}))
    assert main(["meta-train", "--config", str(config)]) == 1
    assert "Unknown keys" in capsys.readouterr().err


def test_meta_train_help_lists_every_training_argument(capsys):
    with pytest.raises(SystemExit):
        main(["meta-train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--inner_steps", "--distillation_direction", "--tasks_per_update", "--train_datasets", "--config"):
        assert flag in text


def test_the_old_lora_flags_still_work_hidden_from_help(capsys):
    from smat_peft.cli import _training_dataclasses

    with pytest.raises(SystemExit):
        main(["meta-train", "--help"])
    text = capsys.readouterr().out
    assert "--finetune_lora_r" in text and "--lora_r" not in text and "--lora_lr_multiplier" not in text
    args = build_parser().parse_args(["meta-train", "--lora_r", "4", "--finetune_lora_dropout", "0.2"])
    with pytest.warns(FutureWarning, match="use `finetune_lora_r` instead .`--finetune_lora_r`"):
        training_args = _training_dataclasses(args)[2]
    assert (training_args.finetune_lora_r, training_args.finetune_lora_dropout) == (4, 0.2)


def hostile_adapter_dir(directory, tmp_path):
    """An adapter directory that also holds training state, a checkpoint and a symlink to a file outside it."""
    (directory / "training_args.bin").write_bytes(b"pickled training arguments")
    checkpoint = directory / "checkpoint-3"
    checkpoint.mkdir()
    for name in ("adapter_config.json", SAFETENSORS_NAME):
        (checkpoint / name).write_bytes((directory / name).read_bytes())
    (checkpoint / "training_state.json").write_text("{}")
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("a system file")
    os.symlink(secret, directory / "x.safetensors")
    (directory / "notes.txt").write_text("my notes")
    return directory


def test_push_uploads_only_the_adapter_files(fake_hub, adapter_dir, tmp_path):
    directory = hostile_adapter_dir(adapter_dir[0], tmp_path)
    assert main(["push", str(directory), "user/smat-vit"]) == 0
    files = set(fake_hub.files("user/smat-vit")) - {".gitattributes"}
    assert files == {"README.md", "adapter_config.json", SAFETENSORS_NAME}


def test_push_dry_run_lists_the_files_and_contacts_nobody(fake_hub, adapter_dir, tmp_path, capsys):
    directory = hostile_adapter_dir(adapter_dir[0], tmp_path)
    assert main(["push", str(directory), "user/smat-vit", "--dry-run", "--include", "*.txt", "--subfolder", "s"]) == 0
    out = capsys.readouterr().out
    listed = [line.strip() for line in out.splitlines()[1:]]
    assert listed == ["s/README.md", "s/adapter_config.json", f"s/{SAFETENSORS_NAME}", "s/notes.txt"]
    assert not fake_hub.repos


@pytest.mark.parametrize("pattern", ["checkpoint-3/*", "training_args.bin"])
def test_push_include_never_uploads_training_state(fake_hub, adapter_dir, tmp_path, capsys, pattern):
    directory = hostile_adapter_dir(adapter_dir[0], tmp_path)
    assert main(["push", str(directory), "user/smat-vit", "--include", pattern]) == 1
    assert "never uploads" in capsys.readouterr().err
    assert not fake_hub.repos


def test_push_refuses_weights_that_are_a_symlink_out_of_the_folder(fake_hub, adapter_dir, tmp_path, capsys):
    directory, _ = adapter_dir
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(directory / SAFETENSORS_NAME, outside)
    os.symlink(outside, directory / SAFETENSORS_NAME)
    assert main(["push", str(directory), "user/smat-vit"]) == 1
    assert "outside" in capsys.readouterr().err and not fake_hub.repos


def _tiny_run_config(root, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_name_or_path: {root / 'vit'}\nnum_experts: 2\ntrain_datasets: ['a={root / 'a'}']\n"
        "max_steps: 2\ntasks_per_update: 1\nways: 5\nshots: 2\nqueries: 2\nimage_size: 32\nwarmup_steps: 0\n"
        "eval_steps: 0\nsave_steps: 1\ndisable_tqdm: true\n"
    )
    return config


def test_two_meta_train_runs_with_the_same_seed_are_bit_identical(training_assets, tmp_path):
    from safetensors.torch import load_file

    config = _tiny_run_config(training_assets, tmp_path)
    for run in ("one", "two"):
        assert main(["meta-train", "--config", str(config), "--seed", "3", "--output_dir", str(tmp_path / run)]) == 0
    one = load_file(tmp_path / "one" / "adapter" / SAFETENSORS_NAME)
    two = load_file(tmp_path / "two" / "adapter" / SAFETENSORS_NAME)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    # the initial adapter is seeded too: another seed gives other router weights from the start
    assert main(["meta-train", "--config", str(config), "--seed", "4", "--output_dir", str(tmp_path / "three")]) == 0
    three = load_file(tmp_path / "three" / "adapter" / SAFETENSORS_NAME)
    assert any(not torch.equal(one[k], three[k]) for k in one if "router" in k)


def test_rerunning_meta_train_into_a_previous_run_is_refused_and_resumable(training_assets, tmp_path, capsys):
    config = _tiny_run_config(training_assets, tmp_path)
    out = str(tmp_path / "run")
    assert main(["meta-train", "--config", str(config), "--output_dir", out]) == 0
    capsys.readouterr()
    assert main(["meta-train", "--config", str(config), "--output_dir", out, "--max_steps", "3"]) == 1
    err = capsys.readouterr().err
    assert "previous run" in err and "--resume_from_checkpoint latest" in err and "--overwrite_output_dir" in err
    assert main(["meta-train", "--config", str(config), "--output_dir", out, "--max_steps", "3",
                 "--resume_from_checkpoint", "latest"]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["train_history"]
    assert [entry["step"] for entry in history] == [2, 3]  # continued from step 2, not restarted
    assert main(["meta-train", "--config", str(config), "--output_dir", out, "--overwrite_output_dir"]) == 0
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-2"]


def test_push_with_the_hub_down_or_an_empty_token_fails_with_one_line(adapter_dir, monkeypatch, capsys):
    from huggingface_hub import constants

    directory, _ = adapter_dir
    assert main(["push", str(directory), "user/smat-vit", "--token", ""]) == 1
    assert "--token is empty" in capsys.readouterr().err
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    assert main(["push", str(directory), "user/smat-vit", "--token", FAKE_TOKEN]) == 1
    err = capsys.readouterr().err
    assert err.startswith("smat-peft push: error:") and len(err.strip().splitlines()) == 1


def test_smat_config_file_sets_a_new_adapter_and_is_checked(tmp_path):
    import json

    from smat_peft.cli import smat_config_from_args
    from smat_peft.training.cli_args import ModelArguments

    path = tmp_path / "smat.json"
    path.write_text(json.dumps({"num_experts": 4, "mask_dtype": "bfloat16", "layers_to_transform": [1],
                                "layers_pattern": "layer", "router_test_temperature": 0.7}))
    config = smat_config_from_args(ModelArguments(smat_config=str(path)))
    assert config.num_experts == 4 and config.mask_dtype == "bfloat16" and config.layers_to_transform == [1]
    assert config.router_test_temperature == 0.7 and config.sparsity == 0.9
    assert smat_config_from_args(ModelArguments(smat_config=str(path), num_experts=2)).num_experts == 2  # a flag wins
    yaml_path = tmp_path / "smat.yaml"
    yaml_path.write_text("num_experts: 3\nmask_noise: false\n")
    assert smat_config_from_args(ModelArguments(smat_config=str(yaml_path))).mask_noise is False
    path.write_text(json.dumps({"num_expert": 4}))
    with pytest.raises(ValueError, match=r"unknown SmatConfig field\(s\) \['num_expert'\]"):
        smat_config_from_args(ModelArguments(smat_config=str(path)))
    path.write_text(json.dumps({"sparsity": 1.5}))
    with pytest.raises(ValueError, match=r"--smat_config .*sparsity"):
        smat_config_from_args(ModelArguments(smat_config=str(path)))


def test_push_and_export_take_both_spellings_and_one_default_each():
    from smat_peft.cli import build_parser

    parser = build_parser()
    for spelling in ("--commit_message", "--commit-message"):
        args = parser.parse_args(["push", "adapter", "me/repo", spelling, "hello", "--dry_run", "--base_model", "b"])
        assert args.commit_message == "hello" and args.dry_run and args.base_model == "b"
    args = parser.parse_args(["export", "adapter", "out", "--delta_dtype", "bfloat16"])
    assert args.delta_dtype == "bfloat16"
    for command in ("push", "export"):
        out = subprocess.run([sys.executable, "-m", "smat_peft.cli", command, "--help"], capture_output=True,
                             text=True, check=True).stdout
        for line in out.split("\n  --")[1:]:
            assert line.count("default") <= 1, line  # the formatter's default, not a second one in the text
