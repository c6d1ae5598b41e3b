"""Broken adapters fail early with one clear error naming the file; saves are atomic and checksummed."""

import json
import os

import peft.peft_model
import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model

from fakes.fake_hub import fake_hub  # noqa: F401  (pytest fixture)
from smat_peft import AdapterFileNotFoundError, AdapterIntegrityError, export_compact, load_compact
from smat_peft.hub import push_smat_to_hub
from smat_peft.atomic_io import file_sha256
from smat_peft.integrity import COMPACT_WEIGHTS_NAME, SAFETENSORS_NAME
from smat_peft.layer import SmatLayer
from test_export import smat_classifier, task_logits
from tiny_models import make_tiny_model


def untouched(model) -> bool:
    """No SMAT layer was injected into `model` (a failed load must leave the base model as it was)."""
    return not any(isinstance(m, SmatLayer) for m in model.modules()) and "peft_config" not in model.__dict__


@pytest.fixture(params=["full", "compact"])
def saved(request, tmp_path):
    """A saved adapter directory (full, or compact export) and its weights file name."""
    model = smat_classifier()
    if request.param == "full":
        model.save_pretrained(tmp_path)
        return tmp_path, SAFETENSORS_NAME
    export_compact(model, tmp_path)
    return tmp_path, COMPACT_WEIGHTS_NAME


def load(directory, weights_name):
    """Load `directory` the way its kind is loaded; returns the base model (to check it was left untouched)."""
    base = make_tiny_model("vit_cls")
    if weights_name == SAFETENSORS_NAME:
        PeftModel.from_pretrained(base, directory)
    else:
        load_compact(base, directory)
    return base


def failing_load(directory, weights_name, error, match):
    base = make_tiny_model("vit_cls")
    with pytest.raises(error, match=match):
        if weights_name == SAFETENSORS_NAME:
            PeftModel.from_pretrained(base, directory)
        else:
            load_compact(base, directory)
    assert untouched(base)


def test_missing_config_is_named(saved):
    directory, weights_name = saved
    os.remove(directory / "adapter_config.json")
    failing_load(directory, weights_name, ValueError, "adapter_config.json")
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftConfig.from_pretrained(directory)


def test_missing_weights_are_named_before_the_base_model_is_touched(saved):
    directory, weights_name = saved
    os.remove(directory / weights_name)
    failing_load(directory, weights_name, AdapterFileNotFoundError, f"weights are missing.*{weights_name}")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_weights_are_named(saved, keep):
    directory, weights_name = saved
    path = directory / weights_name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    failing_load(directory, weights_name, AdapterIntegrityError, f"{weights_name}.*truncated")


def test_garbage_instead_of_safetensors_is_named(saved):
    directory, weights_name = saved
    (directory / weights_name).write_bytes(b"<html>503 Service Unavailable</html>")
    failing_load(directory, weights_name, AdapterIntegrityError, f"Corrupted SMAT adapter weights .*{weights_name}")


def test_corrupted_header_json_is_named(saved):
    directory, weights_name = saved
    path = directory / weights_name
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    failing_load(directory, weights_name, AdapterIntegrityError, f"{weights_name}: the header is not valid JSON")


def test_flipped_bytes_of_the_same_size_fail_the_checksum(saved):
    directory, weights_name = saved
    path = directory / weights_name
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    failing_load(directory, weights_name, AdapterIntegrityError, f"{weights_name}: its SHA-256 .* records")


def test_newer_adapter_format_asks_to_upgrade(saved):
    directory, weights_name = saved
    config = json.loads((directory / "adapter_config.json").read_text())
    config["smat_format_version"] = 2
    config["a_field_from_the_future"] = True
    (directory / "adapter_config.json").write_text(json.dumps(config))
    upgrade = "adapter_config.json.*format version 2.*pip install -U smat-peft"
    failing_load(directory, weights_name, AdapterIntegrityError, upgrade)
    with pytest.raises(ValueError, match=upgrade):
        PeftConfig.from_pretrained(directory)


def test_newer_compact_format_asks_to_upgrade(tmp_path):
    export_compact(smat_classifier(), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["compact"]["format_version"] = 7
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    upgrade = "compact SMAT export in format version 7.*Upgrade smat-peft"
    failing_load(tmp_path, COMPACT_WEIGHTS_NAME, AdapterIntegrityError, upgrade)


def test_config_that_is_not_json_is_named(tmp_path):
    export_compact(smat_classifier(), tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "SMAT", ')
    failing_load(tmp_path, COMPACT_WEIGHTS_NAME, AdapterIntegrityError, "adapter_config.json is not valid JSON")


def test_another_architecture_names_both_classes(saved):
    directory, weights_name = saved
    base = make_tiny_model("dinov2")
    with pytest.raises(ValueError, match="for a ViTForImageClassification, but the base model is a Dinov2Model"):
        if weights_name == SAFETENSORS_NAME:
            PeftModel.from_pretrained(base, directory)
        else:
            load_compact(base, directory)
    assert untouched(base)


def test_compact_export_onto_other_shapes_is_refused_before_injection(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    export_compact(smat_classifier(), tmp_path)
    wider = ViTForImageClassification(ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=64, image_size=32, patch_size=8, num_labels=5))
    with pytest.raises(ValueError, match="does not fit this ViTForImageClassification.*shape"):
        load_compact(wider, tmp_path)
    assert untouched(wider)


# ------------------------------------------------------------------------------------------------------------------
# saving
def test_save_records_the_weights_checksum_in_every_adapter_config(tmp_path):
    from smat_peft import SmatConfig

    model = smat_classifier()
    model.add_adapter("second", SmatConfig(num_experts=2, init_weights=False, target_modules=["fc1"]))
    model.save_pretrained(tmp_path / "adapter")
    for folder in (tmp_path / "adapter", tmp_path / "adapter" / "second"):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["weights_sha256"] == file_sha256(folder / SAFETENSORS_NAME)
        assert config["smat_format_version"] == 1
    assert os.listdir(tmp_path) == ["adapter"]  # no staging directory left behind
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path / "adapter")
    (tmp_path / "adapter" / "second" / SAFETENSORS_NAME).write_bytes(b"")
    with pytest.raises(AdapterIntegrityError, match=f"second/{SAFETENSORS_NAME}"):
        loaded.load_adapter(tmp_path / "adapter" / "second", adapter_name="second")  # checked too
    assert "second" not in loaded.peft_config


def test_a_crash_mid_save_leaves_the_previous_adapter_loadable(tmp_path, support, monkeypatch):
    model = smat_classifier()
    model.save_pretrained(tmp_path / "adapter")
    expected = task_logits(model, support)
    before = {name: (tmp_path / "adapter" / name).read_bytes() for name in os.listdir(tmp_path / "adapter")}

    with torch.no_grad():  # a further training step
        for name, param in model.named_parameters():
            if "smat_delta" in name:
                param.mul_(2)

    def crash_after_half(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a partial file
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", crash_after_half)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "adapter")
    monkeypatch.undo()

    assert {name: (tmp_path / "adapter" / name).read_bytes() for name in os.listdir(tmp_path / "adapter")} == before
    assert os.listdir(tmp_path) == ["adapter"]
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path / "adapter").eval()
    assert torch.equal(task_logits(loaded, support), expected)


def test_save_keeps_an_existing_model_card_and_other_files(tmp_path):
    model = smat_classifier()
    model.save_pretrained(tmp_path)
    with open(tmp_path / "README.md", "a") as f:
        f.write("\nNotes kept across saves.\n")
    (tmp_path / "optimizer.pt").write_bytes(b"not ours")
    model.save_pretrained(tmp_path)
    assert "Notes kept across saves." in (tmp_path / "README.md").read_text()
    assert (tmp_path / "optimizer.pt").read_bytes() == b"not ours"


def test_other_peft_methods_save_as_before(tmp_path):
    model = get_peft_model(make_tiny_model("vit_cls"), LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    assert "weights_sha256" not in json.loads((tmp_path / "adapter_config.json").read_text())
    PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# Hub
def test_a_corrupted_hub_adapter_is_refused_before_the_base_model_is_touched(fake_hub):
    push_smat_to_hub(smat_classifier(), "user/smat-vit", revision="v1", subfolder="smat")
    repo = fake_hub.repo("user/smat-vit")
    commit = repo.commits[repo.branches["v1"]]
    data = bytearray(commit.files[f"smat/{SAFETENSORS_NAME}"])
    data[-5] ^= 0xFF
    commit.files[f"smat/{SAFETENSORS_NAME}"] = bytes(data)

    base = make_tiny_model("vit_cls")
    with pytest.raises(AdapterIntegrityError, match="SHA-256.*user/smat-vit"):
        PeftModel.from_pretrained(base, "user/smat-vit", revision="v1", subfolder="smat")
    assert untouched(base)


def test_a_hub_adapter_without_weights_is_refused(fake_hub):
    push_smat_to_hub(smat_classifier(), "user/smat-vit")
    repo = fake_hub.repo("user/smat-vit")
    del repo.commits[repo.branches["main"]].files[SAFETENSORS_NAME]
    base = make_tiny_model("vit_cls")
    missing = f"Hub repo user/smat-vit has adapter_config.json but no {SAFETENSORS_NAME}"
    with pytest.raises(AdapterFileNotFoundError, match=missing):
        PeftModel.from_pretrained(base, "user/smat-vit")
    assert untouched(base)


# ------------------------------------------------------------------------------------------------------------------
# kill -9 during saves and exports
def _killed_at_replace(k, save):
    """Run `save()` in a forked child that dies (os._exit, no cleanup, like kill -9) at its k-th `os.replace`, before
    (even k) or after (odd k) the call; return whether the child got that far."""
    import signal

    pid = os.fork()
    if pid == 0:  # child
        calls, original = [0], os.replace

        def dying_replace(src, dst, *args, **kwargs):
            calls[0] += 1
            if calls[0] == k // 2 + 1 and k % 2 == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            original(src, dst, *args, **kwargs)
            if calls[0] == k // 2 + 1:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = dying_replace
        try:
            save()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def _kill_at_every_step(tmp_path, support, save, load):
    """Kill a save over an existing adapter at every file move; the directory must load as the old or the new one."""
    old, new = smat_classifier(), smat_classifier(binary=False)
    save(old, tmp_path / "old")
    save(new, tmp_path / "new")
    old_logits, new_logits = task_logits(load(tmp_path / "old"), support), task_logits(load(tmp_path / "new"), support)
    assert not torch.equal(old_logits, new_logits)
    outcomes, k = set(), 0
    while True:
        directory = tmp_path / f"run{k}" / "adapter"
        save(old, directory)
        if not _killed_at_replace(k, lambda: save(new, directory)):
            break  # the save finished before its k-th move: every instant was covered
        logits = task_logits(load(directory), support)
        assert torch.equal(logits, old_logits) or torch.equal(logits, new_logits), f"kill at step {k}"
        outcomes.add("new" if torch.equal(logits, new_logits) else "old")
        save(new, directory)  # the next save cleans up after the killed one
        assert [n for n in os.listdir(directory.parent) if n != "adapter"] == [], f"stale temporaries at step {k}"
        k += 1
    assert k >= 4 and outcomes == {"old", "new"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_kill_at_any_instant_of_save_pretrained_leaves_the_old_or_the_new_adapter(tmp_path, support):
    _kill_at_every_step(
        tmp_path, support, lambda model, d: model.save_pretrained(d),
        lambda d: PeftModel.from_pretrained(make_tiny_model("vit_cls"), d).eval(),
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_kill_at_any_instant_of_export_leaves_the_old_or_the_new_export(tmp_path, support):
    _kill_at_every_step(
        tmp_path, support, lambda model, d: export_compact(model, d, delta_dtype="float32"),
        lambda d: load_compact(make_tiny_model("vit_cls"), d),
    )


_KILL_LOOP = r"""
import sys, torch, smat_peft
from test_export import smat_classifier
target, seed = sys.argv[1], int(sys.argv[2])
model = smat_classifier(binary=False)
print("ready", flush=True)
while True:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "smat_delta" in name:
                param.add_(0.01)
    model.save_pretrained(target)
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "kill"), reason="needs kill -9")
def test_kill_9_during_repeated_save_pretrained_always_leaves_a_loadable_adapter(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    tests_dir = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
    target = tmp_path / "adapter"
    smat_classifier().save_pretrained(target)
    rng = random.Random(0)
    for trial in range(20):
        process = subprocess.Popen([sys.executable, "-c", _KILL_LOOP, str(target), str(trial)], env=env,
                                   stdout=subprocess.PIPE, cwd=tests_dir)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        PeftModel.from_pretrained(make_tiny_model("vit_cls"), target)  # raises if the kill broke it
    smat_classifier().save_pretrained(target)
    assert os.listdir(tmp_path) == ["adapter"]


# ------------------------------------------------------------------------------------------------------------------
# every load path checks what it loads, and a failed load leaves the caller's model as it was
def _rewrite_header(path, edit):
    """Edit the JSON header of a safetensors file in place, keeping its length (padded with spaces)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= size
    path.write_bytes(data[:8] + raw.ljust(size, b" ") + data[8 + size:])


@pytest.mark.parametrize("content", [b'{"peft_type": "SMAT", "num_exp', b'\xff\xfe{"peft_type": "SMAT"}'],
                         ids=["truncated", "not-utf8"])
def test_a_broken_adapter_config_is_named_by_peft_model_from_pretrained(tmp_path, content):
    smat_classifier().save_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_bytes(content)
    failing_load(tmp_path, SAFETENSORS_NAME, AdapterIntegrityError, "adapter_config.json is not valid JSON")


def test_an_edited_number_of_experts_is_refused_before_the_base_model_is_touched(tmp_path):
    smat_classifier().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["num_experts"] = 8
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    failing_load(tmp_path, SAFETENSORS_NAME, AdapterIntegrityError, "num_experts=8.*holds 4 experts")


def test_a_smat_config_relabelled_as_lora_is_refused(tmp_path):
    smat_classifier().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["peft_type"] = "LORA"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    failing_load(tmp_path, SAFETENSORS_NAME, AdapterIntegrityError, "peft_type='LORA' but holds a SMAT adapter")


def test_an_unknown_dtype_in_the_safetensors_header_is_named(saved):
    directory, weights_name = saved
    path = directory / weights_name

    def edit(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["dtype"] = "Q9"

    _rewrite_header(path, edit)
    failing_load(directory, weights_name, AdapterIntegrityError, f"{weights_name}: tensor .* unknown dtype 'Q9'")


def test_overlapping_byte_ranges_in_the_safetensors_header_are_named(saved):
    directory, weights_name = saved
    path = directory / weights_name

    def edit(header):
        by_size = {}
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                by_size.setdefault(end - begin, []).append(name)
        first, second = next(names for size, names in by_size.items() if size and len(names) > 1)[:2]
        header[second]["data_offsets"] = header[first]["data_offsets"]  # two tensors on the same bytes

    _rewrite_header(path, edit)
    failing_load(directory, weights_name, AdapterIntegrityError, f"{weights_name}: the byte range .* overlaps")


def test_an_adapter_on_another_checkpoint_of_the_same_architecture_is_refused(saved, support):
    directory, weights_name = saved
    other = make_tiny_model("vit_cls", seed=1)  # same class and shapes, other weights
    with pytest.raises(AdapterIntegrityError, match="trained on other base weights.*check_base_weights=False"):
        if weights_name == SAFETENSORS_NAME:
            PeftModel.from_pretrained(other, directory)
        else:
            load_compact(other, directory)
    assert untouched(other)  # the failed load was rolled back
    if weights_name == SAFETENSORS_NAME:  # the explicit override
        PeftModel.from_pretrained(other, directory, check_base_weights=False)
    else:
        load_compact(other, directory, check_base_weights=False)
    assert not untouched(other)


def test_the_base_weights_check_tolerates_a_bf16_base_model(tmp_path):
    smat_classifier().save_pretrained(tmp_path)
    PeftModel.from_pretrained(make_tiny_model("vit_cls").to(torch.bfloat16), tmp_path)


def test_load_adapter_onto_other_base_weights_is_refused_and_removed(tmp_path):
    smat_classifier().save_pretrained(tmp_path / "a")
    loaded = PeftModel.from_pretrained(make_tiny_model("vit_cls"), tmp_path / "a")
    other = get_peft_model(make_tiny_model("vit_cls", seed=1), loaded.peft_config["default"].__class__(
        num_experts=4, init_weights=False, modules_to_save=["classifier"]))
    other.save_pretrained(tmp_path / "b")
    with pytest.raises(AdapterIntegrityError, match="other base weights"):
        loaded.load_adapter(tmp_path / "b", adapter_name="second")
    assert "second" not in loaded.peft_config


def test_an_unreachable_hub_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    base = make_tiny_model("vit_cls")
    with pytest.raises(AdapterFileNotFoundError, match="Cannot reach the Hub.*HF_HUB_OFFLINE"):
        PeftModel.from_pretrained(base, "nobody/no-such-adapter-xyz")
    assert untouched(base)
