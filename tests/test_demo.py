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
"""`smat-peft demo`: frozen-prefix cache, random-mask control, fast frozen evaluation, plots, arguments; and the
real `--quick` run on the offline assets (builds them once if the cache is empty)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from smat_peft import EpisodeSampler, MetaTrainingArguments, SmatConfig, get_smat_model
from smat_peft.demo import benchmark, plots
from smat_peft.demo.prefix import (
    CachedActivations,
    cached_prefix_activations,
    prefix_activations,
    skip_frozen_prefix,
)
from smat_peft.training import evaluation
from smat_peft.training.evaluation import direct_accuracy, frozen_direct_scores

from tiny_data import synthetic_domain
from tiny_models import IMAGE_SIZE, make_tiny_model, random_pixels


def _tiny_dinov2(layers: int = 3):
    import transformers

    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2,
                                       image_size=IMAGE_SIZE, patch_size=8)
    return transformers.Dinov2Model(config).eval()


def test_skipped_prefix_reproduces_the_full_model():
    model = _tiny_dinov2()
    pixels = random_pixels(4)
    with torch.no_grad():
        full = model(pixel_values=pixels).pooler_output
        hidden = prefix_activations(model, pixels, frozen_layers=2)
    skip_frozen_prefix(model, frozen_layers=2)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=hidden).pooler_output, full, atol=1e-5)
    assert sum(p.numel() for p in model.embeddings.parameters()) == 0


def test_adapter_trained_on_skipped_prefix_loads_onto_full_model(tmp_path):
    skipped = skip_frozen_prefix(_tiny_dinov2(), frozen_layers=2)
    config = SmatConfig(num_experts=2, sparsity=0.5, layers_to_transform=[2], layers_pattern="layer",
                        init_weights=False)
    model = get_smat_model(skipped, config)
    model.save_pretrained(tmp_path)
    full = PeftModel.from_pretrained(_tiny_dinov2(), tmp_path)
    pixels, labels = random_pixels(4), torch.tensor([0, 0, 1, 1])
    hidden = prefix_activations(_tiny_dinov2(), pixels, frozen_layers=2)
    model.eval()
    with torch.no_grad():
        with model.base_model.task(hidden, labels):
            expected = model(pixel_values=hidden).pooler_output
        with full.base_model.task(pixels, labels):
            actual = full(pixel_values=pixels).pooler_output
    assert torch.allclose(actual, expected, atol=1e-5)


def test_frozen_layers_out_of_range():
    with pytest.raises(ValueError, match="frozen_layers"):
        skip_frozen_prefix(_tiny_dinov2(layers=2), frozen_layers=2)
    with pytest.raises(TypeError, match="embeddings"):
        skip_frozen_prefix(torch.nn.Linear(2, 2), frozen_layers=0)


def test_cached_activations_and_sampler(tmp_path):
    model = _tiny_dinov2()
    domain = synthetic_domain(num_classes=6, per_class=4, size=IMAGE_SIZE)
    kwargs = dict(backbone_dir=str(tmp_path), cache=tmp_path / "acts", image_size=IMAGE_SIZE, frozen_layers=1,
                  progress=False)
    activations = cached_prefix_activations(model, {"toy": domain}, **kwargs)
    assert activations["toy"].shape[0] == len(domain)
    files = list((tmp_path / "acts").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    again = cached_prefix_activations(None, {"toy": domain}, **kwargs)  # read back: the model is not needed
    assert torch.equal(again["toy"], activations["toy"])

    cached = CachedActivations(activations)
    sampler = EpisodeSampler({"toy": domain}, ways=2, shots=1, queries=1, num_episodes=2, image_size=IMAGE_SIZE,
                             split_fractions=(1, 0, 0), load_inputs=cached)
    plan, episode = sampler.plan(0), sampler[0]
    rows = [r for part in (plan.support_rows, plan.query_rows) for rs in part for r in rs]
    assert torch.equal(torch.cat([episode.support_pixel_values, episode.query_pixel_values]),
                       activations["toy"][rows].float())
    with pytest.raises(ValueError, match="augment"):
        EpisodeSampler({"toy": domain}, ways=2, shots=1, queries=1, augment=True, split_fractions=(1, 0, 0),
                       load_inputs=cached)
    with pytest.raises(KeyError, match="'other'"):
        EpisodeSampler({"other": domain}, ways=2, shots=1, queries=1, split_fractions=(1, 0, 0),
                       load_inputs=cached)[0]


def test_every_method_adapts_the_same_parameters():
    backbone = skip_frozen_prefix(_tiny_dinov2(3), 1)
    args = benchmark.DemoArguments(frozen_layers=1, num_experts=4)
    expected = set(benchmark.adapted_parameter_names(backbone, 1))
    assert expected and all(n.startswith(("encoder.layer.1.", "encoder.layer.2.", "layernorm.")) for n in expected)
    assert any("norm1" in n for n in expected) and any("lambda1" in n for n in expected)  # norms, layer-scales
    linears = set(benchmark.adapted_parameter_names(backbone, 1, coverage="linears"))
    assert linears < expected and all(n.rsplit(".", 2)[-2] in {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}
                                      for n in linears)
    for coverage, names in (("all", expected), ("linears", linears)):
        args = benchmark.DemoArguments(frozen_layers=1, num_experts=4, coverage=coverage)
        pmf = benchmark.build_model("pmf", backbone, args, 0.9)
        assert {n for n, p in pmf.named_parameters() if p.requires_grad} == names
        for method in benchmark.SMAT_FAMILY:
            model = benchmark.build_model(method, backbone, args, 0.9)
            adapted = {f"{name}.{p}" for name, layer in model.base_model.smat_layers() for p in layer.param_names}
            assert adapted == names, (method, coverage)


def test_controls_are_smat_adapters_with_one_fixed_mask():
    backbone = skip_frozen_prefix(_tiny_dinov2(3), 1)
    args = benchmark.DemoArguments(frozen_layers=1, num_experts=4)
    dense = benchmark.build_model("dense_expert", backbone, args, 0.9).base_model
    random_mask = benchmark.build_model("random_mask", backbone, args, 0.9).base_model
    smat = benchmark.build_model("smat", backbone, args, 0.9).base_model
    assert dense.peft_config["default"].num_experts == random_mask.peft_config["default"].num_experts == 1
    assert dense.eval_mask_sparsity().tolist() == [0.0]
    assert random_mask.eval_mask_sparsity().item() == pytest.approx(0.9, abs=0.03)
    for model in (dense, random_mask):
        assert not any(p.requires_grad for n, p in model.named_parameters() if "smat_log_alpha" in n)
    assert all(p.requires_grad for n, p in smat.named_parameters() if "smat_log_alpha" in n)
    # the method's initialisation: log α ~ N(0, 0.5²), masks dense at the start
    method = benchmark.build_model("smat", backbone, benchmark.DemoArguments(frozen_layers=1, num_experts=4,
                                                                             mask_init_at_target=False), 0.9)
    logits = torch.cat([p.flatten() for n, p in method.named_parameters() if "smat_log_alpha" in n])
    assert logits.mean().item() == pytest.approx(0.0, abs=0.02) and logits.std().item() == pytest.approx(0.5, abs=0.02)
    # the demo's default: the training masks' expected density starts at 1 − τ
    assert smat.expected_density().mean().item() == pytest.approx(0.1, abs=0.03)


def test_a_smat_config_file_sets_smat_config_fields_of_smat_and_its_controls(tmp_path):
    backbone = skip_frozen_prefix(_tiny_dinov2(3), 1)
    path = tmp_path / "smat.yaml"
    path.write_text("mask_dtype: bfloat16\nrouter_num_skill_tokens: 2\nrouter_temperature: 3.0\nnum_experts: 3\n"
                    "sparsity: 0.8\n")
    args = benchmark.DemoArguments(frozen_layers=1, steps=10, tasks_per_update=2, smat_config=str(path))
    assert (args.num_experts, args.sparsity) == (3, 0.8)  # the file's: the flags were left at their defaults
    for method in benchmark.SMAT_FAMILY:
        config = benchmark.smat_config(args, backbone, args.sparsity, method)
        assert config.mask_dtype == "bfloat16" and config.router_num_skill_tokens == 2, method
        assert config.num_experts == (3 if method == "smat" else 1) and config.sparsity == (
            0.0 if method == "dense_expert" else 0.8)
    assert benchmark.smat_config(args, backbone, 0.5).sparsity == 0.5  # the sparsity sweep sets τ
    # the router anneals from the file's start temperature to the test one over the run's 20 tasks
    assert benchmark.training_arguments(args, str(tmp_path)).router_temperature_decay == pytest.approx(2.5 / 20)
    flags = benchmark.DemoArguments(frozen_layers=1, smat_config=str(path), num_experts=2, sparsity=0.7)
    assert benchmark.smat_config(flags, backbone, flags.sparsity).num_experts == 2 and flags.sparsity == 0.7
    # the file's content is part of a run's fingerprint; an empty file is no file
    fingerprint = benchmark.run_fingerprint(args, "smat", 0)
    assert fingerprint != benchmark.run_fingerprint(benchmark.DemoArguments(frozen_layers=1, steps=10,
                                                                            tasks_per_update=2), "smat", 0)
    path.write_text("mask_dtype: float16\nrouter_num_skill_tokens: 2\nrouter_temperature: 3.0\nnum_experts: 3\n"
                    "sparsity: 0.8\n")
    assert benchmark.run_fingerprint(args, "smat", 0) != fingerprint
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert benchmark.run_fingerprint(benchmark.DemoArguments(smat_config=str(empty)), "pmf", 0) == \
        benchmark.run_fingerprint(benchmark.DemoArguments(), "pmf", 0)


@pytest.mark.parametrize("content, match", [
    ('{"mask_dtyp": "bfloat16"}', r"--smat_config .*smat.json: unknown SmatConfig field\(s\) \['mask_dtyp'\]"),
    ('{"target_modules": ["q_proj"]}', r"the demo chooses the adapted modules itself.*\['target_modules'\]"),
    ('{"hard_concrete_gamma": 0.1}', r"--smat_config .*smat.json: .*stretch interval"),
    ('[1, 2]', r"must hold a mapping"),
    ('{"num_experts": 2,', r"smat.json' is not valid JSON"),
])
def test_a_bad_smat_config_file_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "smat.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        benchmark.DemoArguments(smat_config=str(path))


def test_frozen_direct_scores_match_per_episode_accuracy():
    model = make_tiny_model("vit")
    domain = synthetic_domain(num_classes=6, per_class=5, size=IMAGE_SIZE)
    sampler = EpisodeSampler({"a": domain, "b": domain}, ways=3, shots=2, queries=2, num_episodes=6,
                             image_size=IMAGE_SIZE, split_fractions=(1, 0, 0))
    args = MetaTrainingArguments(image_size=IMAGE_SIZE)
    scores = frozen_direct_scores(model, sampler, args)
    expected: dict[str, list[float]] = {}
    for i in range(len(sampler)):
        episode = sampler[i]
        expected.setdefault(episode.domain, []).append(direct_accuracy(model, episode, args, is_smat=False))
    assert scores.keys() == expected.keys()
    for domain_name in scores:
        assert scores[domain_name] == pytest.approx(expected[domain_name])


def test_a_one_expert_smat_model_is_evaluated_once_per_image_with_the_per_episode_numbers():
    domain = synthetic_domain(num_classes=6, per_class=5, size=IMAGE_SIZE)
    sampler = EpisodeSampler({"a": domain}, ways=3, shots=2, queries=2, num_episodes=6, image_size=IMAGE_SIZE,
                             split_fractions=(1, 0, 0))
    args = MetaTrainingArguments(image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    one = get_smat_model(make_tiny_model("vit"), SmatConfig(num_experts=1, sparsity=0.5, mask_init="random_binary",
                                                            train_masks=False, mask_noise=False)).eval()
    with torch.no_grad():
        for name, param in one.named_parameters():
            if "smat_delta" in name:
                param.normal_(0, 0.3)  # a trained-looking δ, so the task weights differ from the backbone's
    frozen = evaluation.task_independent_model(one, sampler[0])
    assert frozen is not None and not hasattr(frozen, "peft_config")
    expected = [direct_accuracy(one, sampler[i], args, is_smat=True) for i in range(len(sampler))]
    assert frozen_direct_scores(frozen, sampler, args)["a"] == pytest.approx(expected)
    assert evaluation.evaluate_episodes(one, sampler, args)["a"]["direct"]["scores"] == pytest.approx(
        [100 * v for v in expected])
    # several experts: the task weights depend on the support set
    eight = get_smat_model(make_tiny_model("vit"), SmatConfig(num_experts=8, sparsity=0.5))
    assert evaluation.task_independent_model(eight, sampler[0]) is None


def test_demo_arguments():
    quick = benchmark.DemoArguments(quick=True)
    assert quick.train_domains == benchmark.QUICK["train_domains"] and quick.steps == benchmark.QUICK["steps"]
    assert benchmark.DemoArguments(quick=True, steps=3).steps == 3  # a flag beats the preset
    assert benchmark.DemoArguments(smat_delta_lr="1e-3,3e-3").smat_delta_lr == [1e-3, 3e-3]
    with pytest.raises(ValueError, match="smat_delta_lr"):
        benchmark.DemoArguments(smat_delta_lr=[1e-3, 1e-3])
    with pytest.raises(ValueError, match="pmf_lr"):
        benchmark.DemoArguments(pmf_lr=[0.0])
    assert benchmark.DemoArguments(sweep_sparsity="0.5,0.9").sweep_sparsity == [0.5, 0.9]
    with pytest.raises(ValueError, match="Unknown domain"):
        benchmark.DemoArguments(train_domains=["imagenet"])
    with pytest.raises(ValueError, match="both"):
        benchmark.DemoArguments(train_domains=["mnist"], ood_domains=["mnist"])
    with pytest.raises(ValueError, match="multiple"):
        benchmark.DemoArguments(image_size=50)
    with pytest.raises(ValueError, match="Sparsity"):
        benchmark.DemoArguments(sweep_sparsity=[0.5, 1.0])


def test_cap_images_per_class():
    domain = synthetic_domain(num_classes=3, per_class=6, size=8)
    capped = benchmark.cap_images_per_class(domain, 4)
    labels = capped["label"]
    assert len(capped) == 12 and all(labels.count(c) == 4 for c in range(3))
    assert benchmark.cap_images_per_class(domain, 10) is domain


def _fake_results() -> dict:
    def per_domain(offset):
        return {d: {"mean": 50.0 + offset, "ci95": 2.0, "episodes": 4, "scores": [50.0 + offset + e for e in (-3, -1, 1, 3)]}
                for d in ("glyphs", "mnist")}

    models = {m: {"direct": {s: per_domain(k) for s in benchmark.SETTINGS}} for k, m in enumerate(benchmark.MODELS)}
    report = {"target": 0.9, "per_expert": [{"expert": m, "eval_mask_sparsity": 0.9, "train_mask_expected_density": 0.1}
                                            for m in range(2)],
              "per_block": {"8": {"eval_mask_sparsity": [0.9, 0.91], "train_mask_expected_density": [0.1, 0.1]}},
              "per_module_type": {"fc1": {"eval_mask_sparsity": [0.89, 0.9], "train_mask_expected_density": [0.1, 0.1]}},
              "overall": {}}
    history = [{"step": s, "expert_mask_at_upper_clip": [0.01 * s, 0.0], "expert_mask_at_lower_clip": [0.1, 0.2],
                "expert_train_mask_expected_density": [0.5 / s, 0.4 / s], "multipliers": [s, 2.0 * s]}
               for s in (1, 2, 3)]
    diagnostics = {"expert_weights": {"glyphs": [0.7, 0.3], "mnist": [0.4, 0.6]},
                   "specialisation": {"score": 0.1, "ci95": [0.05, 0.15], "trained_spread": 0.3, "untrained_spread": 0.2},
                   "mask_saturation": {"at_upper": [0.05, 0.05], "at_lower": [0.8, 0.85]},
                   "eval_mask_overlap": {"mean_jaccard": 0.1, "mean_independent_baseline": 0.05}}
    return {"settings": benchmark.SETTINGS, "models": models, "train_domains": ["glyphs"], "ood_domains": ["mnist"],
            "per_seed": {m: {"0": r} for m, r in models.items()}, "diagnostics_per_seed": {"0": diagnostics},
            "sparsity": report, "diagnostics": diagnostics, "training": {"smat": {"0": {"history": history}}},
            "arguments": {"seed": 0}}


def test_plots_and_tables(tmp_path):
    results = _fake_results()
    paths = plots.plot_all(results, tmp_path)
    assert [Path(p).name for p in paths] == ["sparsity.png", "expert_weights.png", "experts.png", "accuracy.png"]
    for path in paths:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = benchmark.DemoArguments(train_domains=["glyphs"], ood_domains=["mnist"])
    results["summary"] = {m: benchmark.summarize_model(r, args, {"glyphs": 0, "mnist": 0})
                          for m, r in results["models"].items()}
    assert results["summary"]["smat"]["direct"]["5w5s"] == {"id": 54.0, "ood": 54.0}
    table = benchmark.format_table(results)
    assert "| smat | direct | 54.0 | 54.0 |" in table
    assert "| mnist (OOD) | 50.0 ± 2.0 | 51.0 ± 2.0 | 52.0 ± 2.0 | 53.0 ± 2.0 | 54.0 ± 2.0 |" in \
        benchmark.format_domain_table(results)
    results["comparisons"] = benchmark.comparisons(results)
    pmf = next(c for c in results["comparisons"] if c["baseline"] == "pmf" and c["group"] == "ood"
               and c["setting"] == "5w5s")
    assert pmf["difference"] == pytest.approx(3.0) and pmf["ci95"] == pytest.approx([3.0, 3.0]) and pmf["claim"] == "win"
    assert len(results["comparisons"]) == 4 * 3 * 2  # every other model, setting, ID and OOD
    claims = benchmark.claims(results)
    assert claims["smat_vs_pmf_ood_5w5s"].startswith("win (+3.0 points")
    assert claims["smat_vs_random_mask_id_5w1s"].startswith("win (+1.0")
    assert "| pmf | direct | 5w5s | +3.0 [+3.0, +3.0] win | +3.0 [+3.0, +3.0] win |" in benchmark.format_comparisons(results)
    assert Path(plots.plot_comparisons(results, tmp_path / "comparisons.png")).read_bytes()[:4] == b"\x89PNG"
    assert claims["experts_specialise"] and claims["specialisation_score_ci95"] == [0.05, 0.15]
    assert claims["mask_logits_saturated"] == pytest.approx(0.875) and claims["max_train_mask_density_gap"] == 0.0
    sweep = {"pretrained": {s: {"id": 50.0, "ood": 40.0} for s in ("5w5s",)},
             "sweep": {str(t): {"summary": {"5w5s": {"id": 60.0 - t, "ood": 45.0 + t}}} for t in (0.5, 0.9)}}
    assert Path(plots.plot_sweep(sweep, tmp_path / "sweep.png")).exists()


def test_demo_help():
    out = subprocess.run([sys.executable, "-m", "smat_peft.cli", "demo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--quick" in out and "--sweep_sparsity" in out and "--output_dir" in out


def test_demo_quick_end_to_end(tmp_path):
    """The README's main command in its `--quick` form, on the real backbone and images (CI smoke test)."""
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "smat_peft.cli", "demo", "--quick", "--disable_tqdm",
                          "--output_dir", str(out)], capture_output=True, text=True, env={**os.environ})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| smat | direct |" in run.stdout and "Claims:" in run.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == set(benchmark.MODELS)
    for name in ("pretrained", "pmf", "smat"):
        assert set(results["models"][name]) == {"direct", "full", "lora"}
    for entry in results["sparsity"]["per_expert"]:
        assert 0.0 <= entry["eval_mask_sparsity"] <= 1.0 and 0.0 < entry["train_mask_expected_density"] < 1.0
    assert set(results["diagnostics"]["specialisation"]) >= {"score", "ci95", "trained_spread", "untrained_spread"}
    assert results["training"]["smat"]["0"]["history"] and results["claims"]["specialisation_score_ci95"]
    for name in ("pmf", "dense_expert", "random_mask", "smat"):
        assert results["training"][name]["0"]["lr_search"]
        assert (out / "runs" / name / "seed-0" / "result.json").exists()
    assert (out / "runs" / "pmf" / "seed-0" / "pmf_weights.safetensors").exists()
    assert (out / "runs" / "smat" / "seed-0" / "adapter" / "adapter_config.json").exists()
    for name in ("sparsity.png", "expert_weights.png", "experts.png", "accuracy.png"):
        assert (out / name).stat().st_size > 1000
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_average_over_seeds_pairs_episodes():
    per_seed = {s: {"direct": {"5w5s": {"a": {"mean": m, "ci95": 0.0, "episodes": 2, "scores": scores}}}}
                for s, m, scores in (("0", 50.0, [40.0, 60.0]), ("1", 70.0, [60.0, 80.0]))}
    entry = benchmark.average_over_seeds(per_seed)["direct"]["5w5s"]["a"]
    assert entry["scores"] == pytest.approx([50.0, 70.0]) and entry["mean"] == pytest.approx(60.0)
    assert entry["seeds"] == 2 and entry["seed_means"] == [50.0, 70.0]


def test_profiles_seeds_and_bad_values():
    full = benchmark.DemoArguments(profile="full")
    assert full.training_seeds == [0, 1, 2] and full.test_episodes >= 100 and full.variable_test_episodes >= 50
    assert 0.0 in full.finetune_lr_grid and len(full.finetune_lr_grid) >= 6 and full.finetune_steps == 50
    assert full.finetune_search_episodes * len(full.train_domains) >= 5  # validation episodes of the training domains
    assert full.finetune_seeds == 1 and not full.search_lr_every_seed
    assert benchmark.DemoArguments(profile="full", test_episodes=7).test_episodes == 7  # a flag beats the profile
    with pytest.raises(ValueError, match="profile"):
        benchmark.DemoArguments(profile="huge")
    with pytest.raises(ValueError, match="training_seeds"):
        benchmark.DemoArguments(training_seeds=[0, 0])
    with pytest.raises(ValueError, match="including 0"):
        benchmark.DemoArguments(finetune_lr_grid=[1e-4, 1e-3])
    with pytest.raises(ValueError, match="test_episodes"):
        benchmark.DemoArguments(test_episodes=0)
    with pytest.raises(ValueError, match="coverage"):
        benchmark.DemoArguments(coverage="norms")
    with pytest.raises(ValueError, match="finetune_seeds"):
        benchmark.DemoArguments(finetune_seeds=0)


def test_run_fingerprint_tracks_what_a_run_computes():
    args = benchmark.DemoArguments()
    same = benchmark.DemoArguments(output_dir="elsewhere", training_seeds=[0, 1], disable_tqdm=True,
                                   pmf_lr=[1e-5])  # other output, seeds, another method's lr
    assert benchmark.run_fingerprint(args, "smat", 0) == benchmark.run_fingerprint(same, "smat", 0)
    assert benchmark.run_fingerprint(args, "smat", 0) != benchmark.run_fingerprint(args, "smat", 1)
    assert benchmark.run_fingerprint(args, "smat", 0) != benchmark.run_fingerprint(
        benchmark.DemoArguments(steps=41), "smat", 0)
    assert benchmark.run_fingerprint(args, "pmf", 0) != benchmark.run_fingerprint(same, "pmf", 0)


def test_an_interrupted_demo_resumes_and_redoes_only_what_is_missing_or_corrupt(tmp_path, monkeypatch):
    calls = []

    def evaluated(method):
        scores = [50.0 + len(method), 60.0]
        return {"direct": {s: {d: {"mean": 55.0, "ci95": 1.0, "episodes": 2, "scores": scores}
                               for d in ("glyphs", "mnist")} for s in benchmark.SETTINGS}}

    class FakeSmat:
        def record_eval_results(self, results, meta_training=None):
            self.recorded = results

        def sparsity_report(self):
            return {"target": 0.9, "per_expert": [{"expert": 0, "eval_mask_sparsity": 0.9,
                                                   "train_mask_expected_density": 0.1}]}

    class FakeModel:
        base_model = FakeSmat()

    grids = {}

    def train_method(method, backbone, args, out, train, activations, training_seed=None, sparsity=None, grid=None):
        calls.append((method, training_seed))
        grids[method, training_seed] = grid
        return FakeModel(), None, {"lr": 1.0 + training_seed, "lr_search": {"1": 0.5}}

    def save(method, model, directory, args):
        (directory / "adapter").mkdir(parents=True, exist_ok=True)
        (directory / "adapter" / "adapter_config.json").write_text("{}")
        return str(directory)

    diagnostics = {"specialisation": {"score": 0.0, "ci95": [-0.1, 0.1]},
                   "mask_saturation": {"at_upper": [0.0], "at_lower": [0.0]},
                   "eval_mask_overlap": {"mean_jaccard": 0.1, "mean_independent_baseline": 0.1}}
    monkeypatch.setattr(benchmark, "prepare", lambda args: ({"glyphs": None, "mnist": None}, None, None, "dir"))
    monkeypatch.setattr(benchmark, "adapted_parameter_names", lambda *a, **k: ["w"])
    monkeypatch.setattr(benchmark, "train_method", train_method)
    monkeypatch.setattr(benchmark, "evaluate_model", lambda model, name, *a, **k: evaluated(name))
    monkeypatch.setattr(benchmark, "expert_diagnostics", lambda *a, **k: diagnostics)
    monkeypatch.setattr(benchmark, "_save_trained_model", save)
    monkeypatch.setattr(plots, "plot_all", lambda results, out: [])
    args = benchmark.DemoArguments(output_dir=str(tmp_path), train_domains=["glyphs"], ood_domains=["mnist"],
                                   training_seeds=[0, 1], disable_tqdm=True)
    first = benchmark.run_demo(args)
    assert sorted(calls) == sorted((m, s) for m in benchmark.TRAINED for s in (0, 1))
    # the first seed searches the method's grid, the second trains at the lr it chose
    assert all(grids[m, 0] is None and grids[m, 1] == [1.0] for m in benchmark.TRAINED)
    assert first["models"]["smat"]["direct"]["5w5s"]["glyphs"]["seeds"] == 2
    assert {c["claim"] for c in first["comparisons"]} <= {"win", "tie", "loss"}

    calls.clear()
    (tmp_path / "runs" / "pmf" / "seed-1" / "result.json").write_text("{ truncated")  # a corrupt partial result
    (tmp_path / "runs" / "smat" / "seed-0" / "result.json").unlink()  # killed before it was written
    second = benchmark.run_demo(args)
    assert sorted(calls) == [("pmf", 1), ("smat", 0)]
    assert second["summary"] == first["summary"]
