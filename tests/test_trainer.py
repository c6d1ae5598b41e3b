import json
import os
import subprocess
import sys

import pytest
import torch

from smat_peft import MetaTrainingArguments, SmatConfig, SmatMetaTrainer, get_smat_model
from tiny_data import synthetic_domain
from tiny_models import make_tiny_model


TESTS_DIR = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def domains():
    return ({"a": synthetic_domain(40, 8, seed=0), "b": synthetic_domain(40, 8, seed=1)},
            {"c": synthetic_domain(40, 8, seed=2)})


def arguments(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), max_steps=4, tasks_per_update=2, ways=5, shots=2, queries=3,
                  image_size=32, warmup_steps=0, delta_lr=0.05, mask_lr=3000.0, lagrangian_lr=5.0, router_lr=1e-3,
                  eval_steps=0, save_steps=0, logging_steps=1, eval_episodes=4, test_episodes=6,
                  disable_tqdm=True, augment=False)
    values.update(overrides)
    return MetaTrainingArguments(**values)


def smat_model(num_experts=4, sparsity=0.9):
    return get_smat_model(make_tiny_model("vit", seed=0), SmatConfig(num_experts=num_experts, sparsity=sparsity))


class Killed(Exception):
    """A process killed in the middle of training."""


def killed_at(update):
    """A trainer class that dies (raises `Killed`) when update `update` starts."""

    class KilledTrainer(SmatMetaTrainer):
        def _start_update(self, u):
            if u == update:
                raise Killed
            super()._start_update(u)

    return KilledTrainer


def adapter_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "smat_" in k}


def test_meta_training_lowers_the_query_loss_and_meets_the_sparsity_target(tmp_path, domains):
    train, ood = domains
    model = smat_model()
    trainer = SmatMetaTrainer(model, arguments(tmp_path, max_steps=100, teacher_steps=1, eval_steps=50,
                                               logging_steps=10), train_datasets=train, eval_datasets=ood)
    trainer.train()
    losses = [h["query_loss"] for h in trainer.history if "query_loss" in h]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    report = model.sparsity_report()
    for expert in report["per_expert"]:
        # the constraint holds the training masks' expected density at 1 − τ
        assert expert["train_mask_expected_density"] == pytest.approx(0.1, abs=0.02), report["per_expert"]
    assert os.path.exists(tmp_path / "best" / "adapter_config.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_validation_accuracy"] is not None and metrics["train_history"]
    results = trainer.evaluate()
    assert set(results["domains"]) == {"a", "b", "c"}
    assert results["ood_average"]["direct"] == results["domains"]["c"]["direct"]["mean"]
    assert results["domains"]["a"]["direct"]["episodes"] == 6


def test_resume_after_a_kill_is_bit_identical(tmp_path, domains):
    train, _ = domains
    reference = smat_model()
    SmatMetaTrainer(reference, arguments(tmp_path / "ref", max_steps=6), train_datasets=train).train()

    interrupted = smat_model()
    with pytest.raises(Killed):
        killed_at(4)(interrupted, arguments(tmp_path / "run", max_steps=6, save_steps=3), train_datasets=train).train()
    assert (tmp_path / "run" / "latest").read_text() == "checkpoint-3"

    resumed = smat_model()
    SmatMetaTrainer(resumed, arguments(tmp_path / "run", max_steps=6, save_steps=3), train_datasets=train).train(
        resume_from_checkpoint=True)
    expected, actual = adapter_state(reference), adapter_state(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, domains, monkeypatch):
    train, _ = domains
    model = smat_model()
    trainer = SmatMetaTrainer(model, arguments(tmp_path, max_steps=6, save_steps=2), train_datasets=train)
    original = trainer._task_loss

    def poisoned(episode):
        out = original(episode)
        if trainer.global_step == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer, "_task_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss .* update 3 .*checkpoint-2"):
        trainer.train()
    resumed = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=6, save_steps=2), train_datasets=train)
    resumed._load_checkpoint(True)
    assert resumed.global_step == 2


def test_corrupt_checkpoint_is_reported(tmp_path, domains):
    train, _ = domains
    SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=2, save_steps=2), train_datasets=train).train()
    state = tmp_path / "checkpoint-2" / "training_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=4), train_datasets=train)
    with pytest.raises(RuntimeError, match="checkpoint-2.*incomplete or corrupt"):
        trainer.train(resume_from_checkpoint=True)


def test_domain_with_too_few_classes_fails_before_training(tmp_path):
    small = {"tiny": synthetic_domain(6, 8, seed=0)}
    with pytest.raises(ValueError, match="tiny"):
        SmatMetaTrainer(smat_model(), arguments(tmp_path), train_datasets=small)


def test_pmf_and_pretrained_baselines_share_the_pipeline(tmp_path, domains):
    train, ood = domains
    backbone = make_tiny_model("vit", seed=0)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    pretrained = SmatMetaTrainer(make_tiny_model("vit", seed=0), arguments(tmp_path / "pre"), train_datasets=train,
                                 eval_datasets=ood).evaluate(modes=("direct",))
    pmf = SmatMetaTrainer(backbone, arguments(tmp_path / "pmf", max_steps=3, dense_lr=1e-3), train_datasets=train,
                          eval_datasets=ood)
    pmf.train()
    assert any(not torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    results = pmf.evaluate(modes=("direct",))
    assert set(results["domains"]) == set(pretrained["domains"]) == {"a", "b", "c"}


def test_fine_tuning_modes_pick_the_learning_rate_on_validation_episodes(tmp_path, domains):
    train, _ = domains
    args = arguments(tmp_path, test_episodes=2, finetune_steps=2, finetune_lr_grid=(0.0, 1e-3),
                     finetune_search_episodes=2)
    trainer = SmatMetaTrainer(smat_model(), args, train_datasets=train)
    results = trainer.evaluate(datasets={"a": train["a"]}, modes=("direct", "full", "lora"))
    for mode in ("full", "lora"):
        entry = results["domains"]["a"][mode]
        assert entry["lr"] in (0.0, 1e-3) and set(entry["lr_search"]) == {"0.0", "0.001"}
        assert 0 <= entry["mean"] <= 100


TWO_PROCESS_SCRIPT = r"""
import argparse, json, os, sys, torch
sys.path.insert(0, {tests!r})
from smat_peft import MetaTrainingArguments, SmatConfig, SmatMetaTrainer, get_smat_model
from tiny_data import synthetic_domain
from tiny_models import make_tiny_model
parser = argparse.ArgumentParser()
parser.add_argument("tasks", type=int)
parser.add_argument("out")
parser.add_argument("--stop_at", type=int, default=None)  # die (cleanly, on every process) when this update starts
parser.add_argument("--resume", action="store_true")
parser.add_argument("--evaluate", default=None)  # after training, meta-test these adapter weights
cli = parser.parse_args()


class Stopped(Exception):
    pass


class StoppingTrainer(SmatMetaTrainer):
    def _start_update(self, u):
        if u == cli.stop_at:
            raise Stopped
        super()._start_update(u)


model = get_smat_model(make_tiny_model("vit", seed=0), SmatConfig(num_experts=4, sparsity=0.9))
if os.environ.get("RANK") == "1":  # a replica that initialised differently: process 0's state must win
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
args = MetaTrainingArguments(output_dir=cli.out, max_steps=3, tasks_per_update=cli.tasks, ways=5, shots=2, queries=3,
    image_size=32, warmup_steps=0, delta_lr=0.05, mask_lr=3000.0, lagrangian_lr=5.0, router_lr=1e-3, eval_steps=3,
    eval_episodes=3, save_steps=1, logging_steps=1, disable_tqdm=True, augment=False, test_episodes=5,
    finetune_steps=2, finetune_lr_grid=[0.0, 1e-3], finetune_search_episodes=3)
train = {{"a": synthetic_domain(40, 8, seed=0)}}
trainer = StoppingTrainer(model, args, train_datasets=train, eval_datasets={{"c": synthetic_domain(40, 8, seed=2)}})
try:
    trainer.train(resume_from_checkpoint="latest" if cli.resume else None)
except Stopped:
    sys.exit(0)
main = trainer.accelerator.is_main_process
if main:
    torch.save({{k: v for k, v in model.state_dict().items() if "smat_" in k}}, cli.out + "/state.pt")
    with open(cli.out + "/validation.json", "w") as f:
        json.dump([h["validation_accuracy"] for h in trainer.history if "validation_accuracy" in h], f)
if cli.evaluate:  # the same weights on every run, so that meta-test results can be compared exactly
    model.load_state_dict(torch.load(cli.evaluate), strict=False)
    results = {{"smat": trainer.evaluate(modes=("direct", "full", "lora")),
               "pretrained": SmatMetaTrainer(make_tiny_model("vit", seed=0), args, train_datasets=train).evaluate(
                   modes=("direct",))}}
    # every process holds the whole results
    with open(f"{{cli.out}}/evaluation-{{trainer.accelerator.process_index}}.json", "w") as f:
        json.dump(results, f)
"""


def _run_script(tmp_path, processes, *arguments):
    script = tmp_path / "train.py"
    script.write_text(TWO_PROCESS_SCRIPT.format(tests=TESTS_DIR))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29533"]
    done = subprocess.run(launcher + [str(script), *map(str, arguments)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_match_one_process_with_two_tasks_per_update(tmp_path):
    """Broadcast from process 0 at start, bucketed all-reduce of the gradients: 2 processes × 1 task == 1 × 2;
    meta-test split across the 2 processes (episodes r::2) and gathered == 1 process, exactly, on both."""
    _run_script(tmp_path, 1, 2, tmp_path / "one", "--evaluate", tmp_path / "one" / "state.pt")
    _run_script(tmp_path, 2, 1, tmp_path / "two", "--evaluate", tmp_path / "one" / "state.pt")
    one, two = torch.load(tmp_path / "one" / "state.pt"), torch.load(tmp_path / "two" / "state.pt")
    for key in one:
        # same episodes and noise; only the order of the floating-point gradient sums differs
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), (key, (one[key] - two[key]).abs().max())
    reference = json.loads((tmp_path / "one" / "evaluation-0.json").read_text())
    assert reference["smat"]["domains"]["c"]["direct"]["episodes"] == 5  # odd: the shards differ in size
    for rank in (0, 1):
        assert json.loads((tmp_path / "two" / f"evaluation-{rank}.json").read_text()) == reference, rank
    # validation during training, split and gathered too (the weights differ by summation order only)
    validation = [json.loads((tmp_path / run / "validation.json").read_text()) for run in ("one", "two")]
    assert len(validation[0]) == 1 and validation[0] == pytest.approx(validation[1])


def test_two_process_resume_matches_the_uninterrupted_two_process_run(tmp_path):
    """2 processes stopped after update 2 (checkpoint-2 saved), resumed under 2 processes == 2 processes through."""
    _run_script(tmp_path, 2, 1, tmp_path / "through")
    _run_script(tmp_path, 2, 1, tmp_path / "resumed", "--stop_at", 2)
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir() and not (tmp_path / "resumed" / "state.pt").exists()
    _run_script(tmp_path, 2, 1, tmp_path / "resumed", "--resume")
    through, resumed = torch.load(tmp_path / "through" / "state.pt"), torch.load(tmp_path / "resumed" / "state.pt")
    assert through.keys() == resumed.keys()
    for key in through:
        assert torch.equal(through[key], resumed[key]), (key, (through[key] - resumed[key]).abs().max())
    # a checkpoint of 2 processes × 1 task per update, resumed by 1 process × 1 task: refused before anything loads
    model = smat_model()
    before = adapter_state(model)
    trainer = SmatMetaTrainer(model, arguments(tmp_path / "resumed", max_steps=3, tasks_per_update=1),
                              train_datasets={"a": synthetic_domain(40, 8, seed=0)})
    with pytest.raises(ValueError, match=r"world_size=2 .*tasks_per_update=1.*--num_processes 2.*--tasks_per_update"):
        trainer.train(resume_from_checkpoint="latest")
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in adapter_state(model).items())


def test_one_dense_expert_control_trains_delta_with_masks_fixed(tmp_path, domains):
    """The M = 1 control: SMAT's objective and optimisers, one expert whose mask stays exactly 1."""
    train, _ = domains
    torch.manual_seed(0)
    config = SmatConfig(num_experts=1, sparsity=0.0, mask_init="dense", train_masks=False, mask_noise=False)
    model = get_smat_model(make_tiny_model("vit", seed=0), config)
    before = adapter_state(model)
    trainer = SmatMetaTrainer(model, arguments(tmp_path, max_steps=3, delta_lr=1e-3), train_datasets=train)
    trainer.train()
    assert "mask" not in trainer.optimizers
    after = adapter_state(model)
    for name in before:
        if "smat_log_alpha" in name:
            assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if "smat_delta" in n)
    assert model.base_model.eval_mask_sparsity().tolist() == [0.0]
    assert trainer.constraint.multipliers.tolist() == [0.0]  # sparsity 0 is always met


def test_expert_diagnostics_are_logged(tmp_path, domains):
    train, _ = domains
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=2, logging_steps=1), train_datasets=train)
    trainer.train()
    logs = [h for h in trainer.history if "query_loss" in h][-1]
    assert len(logs["expert_mask_at_upper_clip"]) == 4 and len(logs["multipliers"]) == 4
    assert len(logs["expert_train_mask_expected_density"]) == 4 and logs["mask_grad_norm"] >= 0
    assert 0.5 <= logs["router_temperature"] <= 5.0


# ---- checkpoints without pickle, runs that don't eat each other ----------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SMAT_PWNED']}",))


def test_checkpoints_hold_no_pickle_and_a_crafted_pickle_never_runs(tmp_path, domains, monkeypatch):
    import pickle

    train, _ = domains
    SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=2, save_steps=2), train_datasets=train).train()
    checkpoint = tmp_path / "checkpoint-2"
    files = {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()}
    assert files == {"training_state.safetensors", "training_state.json", "adapter/adapter_config.json",
                     "adapter/adapter_model.safetensors", "adapter/README.md"}
    # an old-style checkpoint whose training_state.pt runs code when unpickled
    for name in ("training_state.safetensors", "training_state.json"):
        os.remove(checkpoint / name)
    monkeypatch.setenv("SMAT_PWNED", str(tmp_path / "pwned"))
    (checkpoint / "training_state.pt").write_bytes(pickle.dumps({"global_step": _RunsCode()}))
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=4), train_datasets=train)
    with pytest.raises(RuntimeError, match="checkpoint-2.*incomplete or corrupt"):
        trainer.train(resume_from_checkpoint=True)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["adapter weights", "state json", "state tensors"])
def test_a_damaged_checkpoint_never_resumes_silently(tmp_path, domains, damage):
    train, _ = domains
    SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=2, save_steps=2), train_datasets=train).train()
    checkpoint = tmp_path / "checkpoint-2"
    if damage == "state json":
        record = json.loads((checkpoint / "training_state.json").read_text())
        record["tree"]["global_step"] = 1
        (checkpoint / "training_state.json").write_text(json.dumps(record))
        match = "training_state.json was changed"
    else:
        path = checkpoint / ("adapter/adapter_model.safetensors" if damage == "adapter weights"
                             else "training_state.safetensors")
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF  # a bit flip in a tensor value: same size, valid header
        path.write_bytes(bytes(data))
        match = "SHA-256"
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=4), train_datasets=train)
    with pytest.raises(RuntimeError, match=f"checkpoint-2.*{match}"):
        trainer.train(resume_from_checkpoint=True)


def test_rerunning_into_a_previous_run_is_refused_then_resumed_or_overwritten(tmp_path, domains):
    train, _ = domains

    with pytest.raises(Killed):
        killed_at(5)(smat_model(), arguments(tmp_path, max_steps=6, save_steps=2), train_datasets=train).train()
    assert (tmp_path / "latest").read_text() == "checkpoint-4"
    # the same command again: refused, nothing deleted
    with pytest.raises(ValueError, match="previous run.*checkpoint-4.*--resume_from_checkpoint latest.*overwrite"):
        SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=6, save_steps=2), train_datasets=train).train()
    assert sorted(os.listdir(tmp_path / "checkpoint-4"))
    # resumed through the arguments (as `--resume_from_checkpoint latest` does)
    resumed = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=6, save_steps=2,
                                                      resume_from_checkpoint="latest"), train_datasets=train)
    resumed.train()
    assert resumed.history[0]["step"] == 1 and resumed.global_step == 6
    # start anew: the old run's checkpoints are deleted first, and rotation keeps the new run's
    fresh = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=3, save_steps=1, overwrite_output_dir=True,
                                                    save_total_limit=2), train_datasets=train)
    fresh.train()
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "latest").read_text() == "checkpoint-3"


def test_rotation_never_deletes_the_checkpoint_just_saved(tmp_path, domains):
    train, _ = domains
    SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=6, save_steps=2, save_total_limit=5),
                    train_datasets=train).train()
    # resume from an earlier checkpoint while later ones exist: the new checkpoints must survive rotation
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=6, save_steps=1, save_total_limit=2),
                              train_datasets=train)
    trainer.args.max_steps = 3
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    latest = (tmp_path / "latest").read_text()
    assert latest == "checkpoint-3" and (tmp_path / latest).is_dir()


def test_an_empty_latest_file_is_named(tmp_path, domains):
    train, _ = domains
    SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=2, save_steps=2), train_datasets=train).train()
    (tmp_path / "latest").write_text("")
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=4), train_datasets=train)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'latest'} names nothing .the file is empty"):
        trainer.train(resume_from_checkpoint=True)


def test_resuming_with_a_changed_learning_rate_warns_and_names_it(tmp_path, domains):
    train, _ = domains
    SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=2, save_steps=2), train_datasets=train).train()
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=3, delta_lr=0.5), train_datasets=train)
    with pytest.warns(UserWarning, match=r"delta_lr: 0\.05 → 0\.5.*max_steps: 2 → 3"):
        trainer.train(resume_from_checkpoint=True)


def test_a_checkpoint_recording_the_old_lora_argument_names_resumes_without_a_spurious_warning(tmp_path, domains):
    from smat_peft.training.arguments import RENAMED_ARGUMENTS
    from smat_peft.training.serialization import load_state, save_state
    from smat_peft.training.trainer import STATE_STEM

    train, _ = domains
    SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=2, save_steps=2), train_datasets=train).train()
    checkpoint = str(tmp_path / "checkpoint-2")
    # as a release before the rename recorded them: lora_r, lora_alpha, lora_dropout, lora_lr_multiplier
    state = load_state(checkpoint, STATE_STEM)
    for old, new in RENAMED_ARGUMENTS.items():
        state["arguments"][old] = state["arguments"].pop(new)
    save_state(state, checkpoint, STATE_STEM)

    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=3), train_datasets=train)
    with pytest.warns(UserWarning, match="differ from the run") as caught:
        trainer.train(resume_from_checkpoint=checkpoint)
    changed = [str(w.message) for w in caught if "differ from the run" in str(w.message)]
    assert len(changed) == 1 and "max_steps: 2 → 3" in changed[0] and "lora" not in changed[0]
    # a real change is still named, under the new name, against the old record
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=3, finetune_lora_r=4), train_datasets=train)
    with pytest.warns(UserWarning, match="finetune_lora_r: 8 → 4"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_the_old_lora_argument_names_still_work_with_a_future_warning():
    with pytest.warns(FutureWarning) as caught:
        args = MetaTrainingArguments(lora_r=4, lora_lr_multiplier=5.0)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "`lora_r` is deprecated" in messages[0] and "`finetune_lora_r` instead" in messages[0]
    assert "`lora_lr_multiplier` is deprecated" in messages[1] and "`finetune_lora_lr_multiplier`" in messages[1]
    assert (args.finetune_lora_r, args.finetune_lora_lr_multiplier, args.lora_r, args.lora_lr_multiplier) == (4, 5.0,
                                                                                                            None, None)
    assert (args.finetune_lora_alpha, args.finetune_lora_dropout) == (32, 0.1)
    with pytest.raises(ValueError, match="`lora_alpha` is the deprecated name of `finetune_lora_alpha`"):
        MetaTrainingArguments(lora_alpha=16, finetune_lora_alpha=64)


def test_pmf_checkpoints_resume_without_pickle(tmp_path, domains):
    train, _ = domains
    SmatMetaTrainer(make_tiny_model("vit", seed=0), arguments(tmp_path, max_steps=2, save_steps=2, dense_lr=1e-3),
                    train_datasets=train).train()
    assert not list(tmp_path.rglob("*.pt")) and (tmp_path / "checkpoint-2" / "adapter" / "model_state.json").exists()
    model = make_tiny_model("vit", seed=1)
    trainer = SmatMetaTrainer(model, arguments(tmp_path, max_steps=2, dense_lr=1e-3), train_datasets=train)
    trainer._load_checkpoint(True)
    assert trainer.global_step == 2


KILLED_RUN_SCRIPT = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
from safetensors.torch import save_file
from smat_peft import MetaTrainingArguments, SmatConfig, SmatMetaTrainer, get_smat_model
from tiny_data import synthetic_domain
from tiny_models import make_tiny_model
out, kill_at = sys.argv[1], int(sys.argv[2])
calls, replace = [0], os.replace

def dying_replace(src, dst, *args, **kwargs):  # kill -9 at the kill_at-th file move (0: never)
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst, *args, **kwargs)

os.replace = dying_replace
model = get_smat_model(make_tiny_model("vit", seed=0), SmatConfig(num_experts=4, sparsity=0.9))
args = MetaTrainingArguments(output_dir=out, max_steps=3, tasks_per_update=1, ways=5, shots=2, queries=3,
    image_size=32, warmup_steps=0, delta_lr=0.05, mask_lr=3000.0, lagrangian_lr=5.0, router_lr=1e-3, eval_steps=0,
    save_steps=1, logging_steps=1, disable_tqdm=True, augment=False)
trainer = SmatMetaTrainer(model, args, train_datasets={{"a": synthetic_domain(40, 8, seed=0)}})
try:  # what a user does after a crash: resume the latest checkpoint, or start anew if none was completed
    trainer.train(resume_from_checkpoint="latest")
except FileNotFoundError:
    trainer.train()
state = {{k: v.contiguous() for k, v in model.state_dict().items() if "smat_" in k}}
save_file(state, os.path.join(out, "final.safetensors"))
print("moves", calls[0])
"""


def _run_killable(script, out, kill_at):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), str(out), str(kill_at)], capture_output=True, text=True,
                          timeout=300, env=env)


def _kill_and_rerun(tmp_path, kill_points):
    from safetensors.torch import load_file

    script = tmp_path / "train.py"
    script.write_text(KILLED_RUN_SCRIPT.format(tests=TESTS_DIR))
    (tmp_path / "reference").mkdir()
    done = _run_killable(script, tmp_path / "reference", 0)
    assert done.returncode == 0, done.stderr[-3000:]
    moves = int(done.stdout.split("moves")[-1])
    reference = load_file(tmp_path / "reference" / "final.safetensors")
    for kill_at in kill_points(moves):
        out = tmp_path / f"killed-at-{kill_at}"
        out.mkdir()
        killed = _run_killable(script, out, kill_at)
        assert killed.returncode == -9, (kill_at, killed.stderr[-3000:])
        rerun = _run_killable(script, out, 0)  # resumes the last complete checkpoint
        assert rerun.returncode == 0, (kill_at, rerun.stderr[-3000:])
        final = load_file(out / "final.safetensors")
        assert all(torch.equal(reference[k], final[k]) for k in reference), f"kill at move {kill_at}"
        assert not [n for n in os.listdir(out) if ".tmp" in n], f"temporaries left after kill at move {kill_at}"


def test_kill_9_during_checkpoint_saves_then_resume_is_bit_identical(tmp_path):
    # two instants of the second checkpoint's save: inside its adapter's save, and just before `latest` is written
    _kill_and_rerun(tmp_path, lambda moves: [moves // 3 + 2, 2 * moves // 3])


@pytest.mark.slow
def test_kill_9_at_every_file_move_of_a_training_run_then_resume_is_bit_identical(tmp_path):
    _kill_and_rerun(tmp_path, lambda moves: range(1, moves + 1))


def test_a_diverging_loss_stops_training_with_a_clear_error(tmp_path, domains):
    train, _ = domains
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=6, lagrangian_lr=1e30), train_datasets=train)
    # λ grows by ~1e29 in one update; the next update's mask gradients overflow (the loss itself stays small: the
    # Lagrangian and the penalty cancel in value), and clipping an infinite norm would silently zero them
    with pytest.raises(FloatingPointError, match="'mask' parameters is inf.*diverging"):
        trainer.train()


def test_test_temperature_is_the_configs_whatever_checkpoint_early_stopping_kept(tmp_path, domains):
    """The router's eval weights use SmatConfig.router_test_temperature, not the training buffer of the kept
    checkpoint (which early stopping may take from mid-schedule)."""
    train, _ = domains
    model = smat_model()
    trainer = SmatMetaTrainer(model, arguments(tmp_path, max_steps=4, eval_steps=1, load_best_model_at_end=True,
                                               router_temperature_decay=0.5), train_datasets=train)
    trainer.train()
    smat = model.base_model
    router = smat.smat_router["default"]
    assert router.temperature.item() > 0.5  # the kept checkpoint's (or the schedule's) training temperature
    model.eval()
    prototypes = torch.randn(5, router.feature_dim)
    out = smat.route(prototypes)
    expected = torch.sigmoid(out.logits / smat.peft_config["default"].router_test_temperature)
    assert torch.allclose(out.weights, expected / expected.sum(), atol=1e-6)
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert saved["router_test_temperature"] == 0.5


# ---- mixed precision: the fp16 loss scaler ---------------------------------------------------------------------
def _one_update(tmp_path, domains, scaler=None):
    train, _ = domains
    torch.manual_seed(0)
    model = smat_model()
    trainer = SmatMetaTrainer(model, arguments(tmp_path, max_steps=1), train_datasets=train)
    trainer.accelerator.scaler = scaler  # what Accelerate makes for mixed_precision="fp16" on a GPU
    before = adapter_state(model)
    model.train()
    logs = trainer.training_step([trainer.train_sampler.episode(0), trainer.train_sampler.episode(1)])
    return trainer, before, adapter_state(model), logs


def test_fp16_loss_scaling_gives_the_fp32_update(tmp_path, domains):
    _, before, plain, _ = _one_update(tmp_path / "a", domains)
    trainer, _, scaled, logs = _one_update(tmp_path / "b", domains, torch.amp.GradScaler("cpu", init_scale=2.0**16))
    for name in before:
        if "smat_delta" in name or "smat_log_alpha" in name:
            assert torch.allclose(scaled[name], plain[name], rtol=1e-3, atol=1e-6), name
    assert any(not torch.equal(before[n], scaled[n]) for n in before if "smat_delta" in n)
    assert logs[0]["step_skipped"] is False and logs[0]["loss_scale"] == 2.0**16
    assert logs[0]["mask_grad_norm"] < 1e3  # clipped and logged after unscaling, not 65,536× too large


def test_fp16_step_is_skipped_on_inf_and_the_scale_lowered(tmp_path, domains):
    trainer, before, after, logs = _one_update(tmp_path, domains, torch.amp.GradScaler("cpu", init_scale=2.0**127))
    assert logs[0]["step_skipped"] is True and logs[0]["loss_scale"] < 2.0**127
    for name in before:  # every optimizer skipped: no parameter moved (buffers of the update's start may)
        if not name.endswith(("._u", "._v", ".temperature")):
            assert torch.equal(before[name], after[name]), name
    assert trainer.schedulers["delta"].last_epoch == 0  # schedules do not advance on a skipped step


def test_mixed_precision_defaults_to_the_launch_configuration(tmp_path, domains, monkeypatch):
    from accelerate.state import AcceleratorState

    train, _ = domains
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    try:
        trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=1), train_datasets=train)
        assert trainer.args.mixed_precision is None and trainer.accelerator.mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_resumed_fp16_run_restores_its_loss_scale(tmp_path, domains):
    train, _ = domains
    first = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=1, save_steps=1), train_datasets=train)
    first.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    first.train()
    scale = first.accelerator.scaler.get_scale()
    second = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=1), train_datasets=train)
    second.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**3)
    second.train(resume_from_checkpoint=True)
    assert second.accelerator.scaler.get_scale() == scale == 2.0**10


def test_report_to_none_means_no_trackers(tmp_path, domains):
    train, _ = domains
    assert MetaTrainingArguments(report_to="none").report_to == []
    assert MetaTrainingArguments(report_to=["none"]).report_to == []
    with pytest.raises(ValueError, match="report_to"):
        MetaTrainingArguments(report_to=["none", "wandb"])
    trainer = SmatMetaTrainer(smat_model(), arguments(tmp_path, max_steps=1, report_to="none"), train_datasets=train)
    trainer.train()  # no tracker is initialised, nothing raises inside Accelerate


def test_unsupported_launches_are_refused_before_any_step():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from smat_peft.training.trainer import _refuse_unsupported_launch

    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ValueError, match=f"{kind.value}.*--multi_gpu"):
            _refuse_unsupported_launch(SimpleNamespace(distributed_type=kind, gradient_accumulation_steps=1))
    with pytest.raises(ValueError, match="tasks_per_update"):
        _refuse_unsupported_launch(SimpleNamespace(distributed_type=DistributedType.NO, gradient_accumulation_steps=4))
    _refuse_unsupported_launch(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, gradient_accumulation_steps=1))
