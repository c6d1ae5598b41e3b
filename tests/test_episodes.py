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
"""Episodes: class splits, fixed and Meta-Dataset variable episodes, reproducibility, images, input errors.

The synthetic datasets encode each row's index in its pixels (red = row % 256, green = row // 256, constant images),
so a test can tell from an episode's pixels exactly which rows it holds.
"""

from __future__ import annotations

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import transformers

from smat_peft.training import EpisodeShape, MetaTrainingArguments
from smat_peft.training.episodes import Episode, EpisodeSampler, split_classes


ALL_TRAIN = (1.0, 0.0, 0.0)
IDENTITY_NORM = dict(image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))


def make_dataset(
    sizes, *, image_size: int = 8, kind: str = "pil", mode: str = "RGB", labels: str = "int", noise: bool = False,
    seed: int = 0,
) -> datasets.Dataset:
    """A tiny image-classification dataset: class `c` has `sizes[c]` rows (or `sizes` rows each if an int).

    kind: "pil" (the `Image` feature, PIL `mode`), "array" (`[H, W, 3]` uint8) or "chw" (`[3, H, W]` uint8).
    labels: "int", "str" or "classlabel". Rows are shuffled so a class's rows are not contiguous. Each image is
    constant and encodes its row (see the module docstring), or is random noise when `noise`.
    """
    if isinstance(sizes, int):
        sizes = [sizes] * 10
    rng = np.random.default_rng(seed)
    row_labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).tolist()
    images = []
    for row in range(len(row_labels)):
        if noise:
            pixels = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
        else:
            pixels = np.zeros((image_size, image_size, 3), dtype=np.uint8)
            pixels[..., 0], pixels[..., 1] = row % 256, row // 256
        if kind == "pil":
            image = PIL.Image.fromarray(pixels, mode="RGB")
            images.append(image if mode == "RGB" else image.convert(mode))
        elif kind == "array":
            images.append(pixels)
        else:
            images.append(pixels.transpose(2, 0, 1))
    names = [f"class_{c:02d}" for c in range(len(sizes))]
    column = [names[c] for c in row_labels] if labels == "str" else row_labels
    if kind != "pil":
        images = np.stack(images)  # one Arrow conversion instead of one per row
    data = datasets.Dataset.from_dict({"image": images, "label": column})
    if kind == "pil":
        data = data.cast_column("image", datasets.Image())
    if labels == "classlabel":
        data = data.cast_column("label", datasets.ClassLabel(names=names))
    return data


def rows_of(pixels: torch.Tensor) -> list[int]:
    """The rows encoded in images normalised with `IDENTITY_NORM`."""
    red, green = (pixels[:, channel, 0, 0].mul(255).round().long() for channel in (0, 1))
    return (red + 256 * green).tolist()


def assert_same_episode(first: Episode, second: Episode) -> None:
    assert (first.domain, first.index, first.classes) == (second.domain, second.index, second.classes)
    for name in ("support_pixel_values", "support_labels", "query_pixel_values", "query_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


# ---- class splits


def test_split_classes_is_disjoint_complete_and_nonempty():
    for num_classes in (3, 7, 50):
        splits = split_classes(range(num_classes), seed=0)
        parts = [set(splits[name]) for name in ("train", "validation", "test")]
        assert all(parts) and sum(map(len, parts)) == num_classes
        assert set().union(*parts) == set(range(num_classes))
    assert [len(v) for v in split_classes(range(100), seed=0).values()] == [70, 15, 15]
    assert split_classes(range(5), seed=1, fractions=ALL_TRAIN) == {"train": [0, 1, 2, 3, 4], "validation": [],
                                                                    "test": []}


def test_split_classes_is_deterministic_and_independent_of_input_order():
    classes = [f"c{i}" for i in range(40)]
    reference = split_classes(classes, seed=3)
    shuffled = list(np.random.default_rng(0).permutation(classes)) + classes[:5]  # numpy strings, duplicates
    assert split_classes(shuffled, seed=3) == reference
    assert split_classes(np.arange(40), seed=3) == split_classes(list(range(40)), seed=3)
    assert split_classes(classes, seed=4) != reference


def test_split_classes_rejects_bad_fractions():
    with pytest.raises(ValueError, match="split_fractions"):
        split_classes(range(10), seed=0, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="split_fractions"):
        split_classes(range(10), seed=0, fractions=(1.2, -0.2, 0.0))


def test_samplers_with_the_same_split_seed_use_disjoint_classes_per_split():
    data = make_dataset([6] * 30, image_size=2)
    expected = split_classes(range(30), seed=5)
    seen = {}
    for split in ("train", "validation", "test"):
        sampler = EpisodeSampler(data, split=split, ways=3, shots=1, queries=1, split_seed=5, seed=1)
        seen[split] = {c for i in range(40) for c in sampler.plan(i).classes}
        assert seen[split] <= set(expected[split])
    assert not (seen["train"] & seen["validation"]) and not (seen["train"] & seen["test"])
    assert not (seen["validation"] & seen["test"])


# ---- fixed and variable episodes


def test_fixed_episode_has_the_requested_ways_shots_queries_and_consistent_labels():
    data = make_dataset([12] * 8)
    labels = data["label"]
    sampler = EpisodeSampler(data, ways=5, shots=3, queries=4, split_fractions=ALL_TRAIN, image_size=8,
                             **IDENTITY_NORM)
    for index in range(3):
        episode = sampler[index]
        assert episode.support_pixel_values.shape == (15, 3, 8, 8) and episode.query_pixel_values.shape == (20, 3, 8, 8)
        assert episode.support_pixel_values.dtype == torch.float32
        assert episode.support_labels.dtype == torch.int64 and episode.query_labels.dtype == torch.int64
        assert torch.bincount(episode.support_labels).tolist() == [3] * 5
        assert torch.bincount(episode.query_labels).tolist() == [4] * 5
        assert len(episode.classes) == episode.ways == 5 and len(set(episode.classes)) == 5
        support_rows, query_rows = rows_of(episode.support_pixel_values), rows_of(episode.query_pixel_values)
        assert len(set(support_rows + query_rows)) == 35  # no image twice, support and query disjoint
        for rows, episode_labels in ((support_rows, episode.support_labels), (query_rows, episode.query_labels)):
            assert [labels[row] for row in rows] == [episode.classes[k] for k in episode_labels.tolist()]


def test_variable_episodes_respect_the_meta_dataset_bounds():
    sizes = np.random.default_rng(0).integers(2, 300, size=60).tolist()
    data = make_dataset(sizes, kind="array", image_size=1)
    class_sizes = dict(zip(*np.unique(data["label"], return_counts=True)))
    for caps in (dict(), dict(max_ways=12, max_support=40, max_support_per_class=6, max_queries=3)):
        sampler = EpisodeSampler(data, variable=True, split_fractions=ALL_TRAIN, seed=2, image_size=4, **caps)
        max_ways, max_support = caps.get("max_ways", 50), caps.get("max_support", 500)
        per_class, max_queries = caps.get("max_support_per_class", 100), caps.get("max_queries", 10)
        ways_seen, totals = set(), []
        for index in range(150):
            plan = sampler.plan(index)
            ways_seen.add(plan.ways)
            assert 5 <= plan.ways <= max_ways
            assert 1 <= min(plan.shots) and max(plan.shots) <= per_class
            assert sum(plan.shots) <= max_support
            smallest = min(class_sizes[c] for c in plan.classes)
            assert set(plan.queries) == {min(max_queries, smallest // 2)}  # balanced, Meta-Dataset's rule
            rows = [r for part in (plan.support_rows, plan.query_rows) for rs in part for r in rs]
            assert len(set(rows)) == len(rows)
            totals.append(sum(plan.shots))
        assert min(ways_seen) <= 7 and max(ways_seen) >= max_ways - 3  # the whole range of ways is used
        assert len(set(totals)) > 20  # support sizes vary
    episode = sampler.episode(0)  # decoding agrees with the plan
    plan = sampler.plan(0)
    assert episode.support_pixel_values.shape[0] == sum(plan.shots) == len(episode.support_labels)
    assert torch.bincount(episode.support_labels, minlength=plan.ways).tolist() == plan.shots


def test_variable_episodes_are_class_imbalanced_toward_larger_classes():
    data = make_dataset([10] * 10 + [200] * 10, kind="array", image_size=1)
    sampler = EpisodeSampler(data, variable=True, split_fractions=ALL_TRAIN, max_ways=20, max_support_per_class=100)
    small, large = [], []
    for index in range(100):
        plan = sampler.plan(index)
        for label, shots in zip(plan.classes, plan.shots):
            (small if label < 10 else large).append(shots)
    assert np.mean(large) > 3 * np.mean(small)


# ---- reproducibility


def test_episode_depends_only_on_seed_rank_and_index_whatever_the_workers():
    data = make_dataset([8] * 10)
    kwargs = dict(ways=3, shots=2, queries=2, split_fractions=ALL_TRAIN, image_size=8, augment=True, seed=7)
    sampler = EpisodeSampler(data, num_episodes=5, **kwargs)
    direct = [sampler.episode(i) for i in range(5)]
    assert_same_episode(sampler.episode(3), direct[3])
    assert_same_episode(EpisodeSampler(data, num_episodes=100, **kwargs).episode(3), direct[3])
    for num_workers in (0, 2):
        loaded = list(sampler.loader(num_workers=num_workers))
        assert [e.index for e in loaded] == list(range(5))
        for first, second in zip(loaded, direct):
            assert_same_episode(first, second)
    resumed = list(sampler.loader(start=3))
    assert [e.index for e in resumed] == [3, 4]
    assert_same_episode(resumed[0], direct[3])


def test_different_seeds_and_ranks_give_different_episodes():
    data = make_dataset([8] * 20, image_size=2)
    kwargs = dict(ways=5, shots=1, queries=1, split_fractions=ALL_TRAIN)
    reference = [EpisodeSampler(data, **kwargs).plan(i) for i in range(10)]
    for other in (dict(seed=1), dict(rank=1, world_size=2)):
        plans = [EpisodeSampler(data, **kwargs, **other).plan(i) for i in range(10)]
        assert [p.support_rows for p in plans] != [p.support_rows for p in reference]
    with pytest.raises(ValueError, match="rank"):
        EpisodeSampler(data, rank=2, world_size=2, **kwargs)


def test_domain_weights_are_respected():
    domains = {"a": make_dataset([4] * 6, image_size=1, kind="array"),
               "b": make_dataset([4] * 6, image_size=1, kind="array")}
    kwargs = dict(ways=2, shots=1, queries=1, split_fractions=ALL_TRAIN)
    for weights, expected in ((None, 0.5), ({"a": 3.0, "b": 1.0}, 0.75), ({"a": 1.0}, 1.0)):
        sampler = EpisodeSampler(domains, domain_weights=weights, **kwargs)
        share = np.mean([sampler.plan(i).domain == "a" for i in range(400)])
        assert abs(share - expected) < 0.07, (weights, share)
    with pytest.raises(ValueError, match="unknown domains"):
        EpisodeSampler(domains, domain_weights={"c": 1.0}, **kwargs)


# ---- bad input


def test_too_few_classes_in_the_split_raises_naming_domain_split_and_counts():
    data = make_dataset([5] * 20, image_size=1, kind="array")
    with pytest.raises(ValueError) as error:
        EpisodeSampler({"birds": data}, split="test", ways=5, shots=1, queries=1)  # 3 test classes
    assert all(word in str(error.value) for word in ("'birds'", "'test'", "3 classes", "ways`=5"))
    with pytest.raises(ValueError, match="'birds'"):
        EpisodeSampler({"birds": data}, split="validation", variable=True)


def test_min_images_policy_error_names_the_domain_and_the_classes():
    data = make_dataset([10] * 6 + [3, 2], image_size=1, kind="array")
    with pytest.raises(ValueError) as error:
        EpisodeSampler({"fungi": data}, ways=5, shots=2, queries=2, split_fractions=ALL_TRAIN,
                       min_images_policy="error")
    message = str(error.value)
    assert "'fungi'" in message and "6 (3)" in message and "7 (2)" in message and "min_images_policy" in message


def test_min_images_policy_skip_leaves_small_classes_out():
    data = make_dataset([10] * 6 + [3, 2], image_size=1, kind="array")
    sampler = EpisodeSampler({"fungi": data}, ways=5, shots=2, queries=2, split_fractions=ALL_TRAIN)
    assert sampler.describe()["fungi"]["skipped_classes"] == [6, 7]
    assert {c for i in range(50) for c in sampler.plan(i).classes} == set(range(6))
    with pytest.raises(ValueError, match="'fungi'.*only 6 of its 8 classes"):
        EpisodeSampler({"fungi": data}, ways=7, shots=2, queries=2, split_fractions=ALL_TRAIN)


def test_missing_columns_raise_naming_the_column_and_the_available_ones():
    data = make_dataset(4, image_size=1, kind="array")
    with pytest.raises(ValueError, match=r"no image column 'img'.*\['image', 'label'\]"):
        EpisodeSampler(data, image_column="img", ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"no label column 'fine_label'.*\['image', 'label'\]"):
        EpisodeSampler(data, label_column="fine_label", ways=2, shots=1, queries=1)


def test_an_episode_shape_and_its_fields_as_keywords_give_the_same_sampler():
    data = make_dataset([4] * 10, image_size=1, kind="array")
    shape = EpisodeShape(ways=3, shots=1, queries=2)
    by_shape = EpisodeSampler(data, shape, split_fractions=ALL_TRAIN)
    by_keywords = EpisodeSampler(data, ways=3, shots=1, queries=2, split_fractions=ALL_TRAIN)
    assert by_keywords.shape == shape
    assert [by_shape.plan(i) for i in range(5)] == [by_keywords.plan(i) for i in range(5)]
    with pytest.raises(TypeError, match="not both"):
        EpisodeSampler(data, shape, ways=3)
    with pytest.raises(TypeError, match=r"\['wayz'\]"):
        EpisodeSampler(data, wayz=3)


def test_episode_shape_validation_names_the_field():
    for field, value in (("ways", 0), ("shots", 0), ("queries", -1), ("max_support_per_class", 0)):
        with pytest.raises(ValueError, match=f"`{field}` must be a positive integer, got {value}"):
            EpisodeShape(**{field: value})
    with pytest.raises(ValueError, match="raise `max_ways`"):
        EpisodeShape(variable=True, ways=6, max_ways=5)
    EpisodeShape(ways=6, max_ways=5)  # fixed episodes ignore `max_ways`


def test_meta_training_arguments_give_their_episode_shape():
    args = MetaTrainingArguments(variable_ways_shots=True, ways=3, shots=2, queries=4, max_ways=9, max_support=60)
    assert args.episode_shape == EpisodeShape(variable=True, ways=3, shots=2, queries=4, max_ways=9, max_support=60)
    assert MetaTrainingArguments().episode_shape == EpisodeShape()
    with pytest.raises(ValueError, match="raise `max_ways`"):
        MetaTrainingArguments(variable_ways_shots=True, ways=6, max_ways=5)


def test_load_inputs_replaces_decoding_with_one_input_per_row():
    data = make_dataset([4] * 6, image_size=1, kind="array")
    table = {"default": torch.arange(len(data), dtype=torch.float32).view(-1, 1, 1) * torch.ones(1, 2, 3)}
    calls = []

    def load_inputs(domain, rows):
        calls.append((domain, rows))
        return table[domain][rows]

    sampler = EpisodeSampler(data, ways=3, shots=1, queries=2, split_fractions=ALL_TRAIN, load_inputs=load_inputs)
    plan, episode = sampler.plan(0), sampler[0]
    rows = [r for part in (plan.support_rows, plan.query_rows) for rs in part for r in rs]
    assert calls == [("default", rows)]
    assert torch.equal(torch.cat([episode.support_pixel_values, episode.query_pixel_values]), table["default"][rows])
    assert torch.equal(sampler.pixel_values("default", [2, 0]), table["default"][[2, 0]])
    with pytest.raises(ValueError, match="augment"):
        EpisodeSampler(data, ways=3, shots=1, queries=2, split_fractions=ALL_TRAIN, load_inputs=load_inputs,
                       augment=True)
    for wrong in (lambda d, rows: table[d][rows].long(), lambda d, rows: table[d][rows[:1]], lambda d, rows: rows):
        with pytest.raises(ValueError, match="one input per row"):
            EpisodeSampler(data, ways=3, shots=1, queries=2, split_fractions=ALL_TRAIN, load_inputs=wrong)[0]


# ---- images


def test_image_processor_resizes_and_normalises():
    data = make_dataset([6] * 6, image_size=20, noise=True)
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    sampler = EpisodeSampler(data, ways=3, shots=2, queries=1, split_fractions=ALL_TRAIN, image_processor=processor)
    episode, plan = sampler.episode(0), sampler.plan(0)
    assert episode.support_pixel_values.shape == (6, 3, 32, 32) and episode.query_pixel_values.shape == (3, 3, 32, 32)
    rows = [r for rs in plan.support_rows for r in rs]
    expected = processor(images=data[rows]["image"], return_tensors="pt")["pixel_values"]
    assert torch.allclose(episode.support_pixel_values, expected)
    augmented = EpisodeSampler(data, ways=3, shots=2, queries=1, split_fractions=ALL_TRAIN,
                               image_processor=processor, augment=True).episode(0)
    assert augmented.support_pixel_values.shape == (6, 3, 32, 32)


def test_only_the_sampled_rows_are_decoded():
    data = make_dataset([6] * 10)
    decoded = []

    def counting_transform(batch):
        decoded.append(len(batch["image"]))
        return batch

    data.set_transform(counting_transform)
    sampler = EpisodeSampler(data, ways=3, shots=2, queries=1, split_fractions=ALL_TRAIN, image_size=8)
    assert decoded == []  # indexing the labels read no image
    episode = sampler.episode(0)
    assert sum(decoded) == len(episode.support_labels) + len(episode.query_labels) == 9


@pytest.mark.parametrize("kind, mode", [("pil", "L"), ("pil", "RGBA"), ("pil", "P"), ("array", "RGB"), ("chw", "RGB")])
def test_grayscale_rgba_palette_and_arrays_become_rgb(kind, mode):
    data = make_dataset([4] * 5, kind=kind, mode=mode, image_size=6)
    if kind == "chw":
        data = data.with_format("torch")
    sampler = EpisodeSampler(data, ways=2, shots=1, queries=1, split_fractions=ALL_TRAIN, image_size=8,
                             **IDENTITY_NORM)
    episode = sampler.episode(0)
    assert episode.support_pixel_values.shape == (2, 3, 8, 8)
    if mode == "L":
        assert torch.equal(episode.support_pixel_values[:, 0], episode.support_pixel_values[:, 2])
    if mode in ("RGB", "RGBA"):
        labels = make_dataset([4] * 5, image_size=1, kind="array")["label"]
        rows = rows_of(episode.support_pixel_values)
        assert [labels[r] for r in rows] == episode.classes


@pytest.mark.parametrize("labels", ["str", "classlabel"])
def test_string_and_classlabel_labels(labels):
    data = make_dataset([4] * 5, labels=labels, kind="array", image_size=4)
    sampler = EpisodeSampler(data, ways=3, shots=1, queries=2, split_fractions=ALL_TRAIN, image_size=4,
                             **IDENTITY_NORM)
    episode = sampler.episode(1)
    expected_type = str if labels == "str" else int
    assert all(isinstance(c, expected_type) for c in episode.classes)
    column = data["label"]
    assert [column[r] for r in rows_of(episode.query_pixel_values)] == [
        episode.classes[k] for k in episode.query_labels.tolist()
    ]


def test_augmentation_changes_pixels_but_keeps_shapes_labels_and_determinism():
    data = make_dataset([6] * 6, image_size=16, noise=True)
    kwargs = dict(ways=3, shots=2, queries=2, split_fractions=ALL_TRAIN, image_size=12)
    plain = EpisodeSampler(data, **kwargs).episode(4)
    augmented = EpisodeSampler(data, augment=True, **kwargs).episode(4)
    assert augmented.support_pixel_values.shape == plain.support_pixel_values.shape == (6, 3, 12, 12)
    assert augmented.query_pixel_values.shape == plain.query_pixel_values.shape
    assert augmented.classes == plain.classes and torch.equal(augmented.query_labels, plain.query_labels)
    assert not torch.allclose(augmented.support_pixel_values, plain.support_pixel_values, atol=1e-2)
    assert not torch.allclose(augmented.query_pixel_values, plain.query_pixel_values, atol=1e-2)
    assert_same_episode(EpisodeSampler(data, augment=True, **kwargs).episode(4), augmented)


# ---- reporting and Dataset protocol


def test_describe_reports_classes_per_split_and_images():
    domains = {"a": make_dataset([5] * 20, image_size=1, kind="array"),
               "b": make_dataset([7] * 40, image_size=1, kind="array")}
    report = EpisodeSampler(domains, ways=2, shots=1, queries=1).describe()
    assert report["a"]["classes"] == {"train": 14, "validation": 3, "test": 3}
    assert report["b"]["classes"] == {"train": 28, "validation": 6, "test": 6}
    assert report["a"]["sampled_classes"] == 14 and report["a"]["images"] == 70 and report["b"]["images"] == 196
    assert report["a"]["rows"] == 100 and report["a"]["probability"] == 0.5


def test_dataset_protocol_length_bounds_and_device_move():
    sampler = EpisodeSampler(make_dataset([3] * 4, image_size=1, kind="array"), ways=2, shots=1, queries=1,
                             split_fractions=ALL_TRAIN, num_episodes=4, image_size=2)
    assert len(sampler) == 4 and len(sampler.loader(start=4)) == 0
    with pytest.raises(IndexError):
        sampler[4]
    moved = sampler[0].to("cpu")
    assert moved.query_labels.device.type == "cpu" and moved.ways == 2


def test_shuffled_selected_and_memory_mapped_datasets_index_the_right_rows(tmp_path):
    original = make_dataset([6] * 8)
    labels = original["label"]
    original.save_to_disk(str(tmp_path / "data"))
    variants = {
        "shuffled": original.shuffle(seed=3).select(range(40)),  # an indices mapping over the Arrow table
        "memory_mapped": datasets.load_from_disk(str(tmp_path / "data")),
        "undecoded": original.cast_column("image", datasets.Image(decode=False)),
    }
    for name, data in variants.items():
        sampler = EpisodeSampler(data, ways=3, shots=2, queries=1, split_fractions=ALL_TRAIN, image_size=8,
                                 **IDENTITY_NORM)
        episode = sampler.episode(2)
        rows = rows_of(episode.support_pixel_values)  # rows of the original dataset
        assert [labels[r] for r in rows] == [episode.classes[k] for k in episode.support_labels.tolist()], name
