"""Training state without pickle: any nested state round-trips through safetensors + JSON, checksums guard it."""

import random

import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from smat_peft.training.serialization import TrainingStateError, load_state, save_state


def nested_state():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 2, 10)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    scheduler.step()
    shared = torch.arange(6.0)
    return {
        "optimizers": {"router": optimizer.state_dict()},  # int keys, tuples (betas), None, bools
        "schedulers": {"router": scheduler.state_dict()},
        # a state added later (e.g. a constraint object's state_dict), with no change to the serialiser
        "constraint": {"multipliers": torch.zeros(4), "steps": 7, "by_expert": {0: 0.5, 1: float("inf")}},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        "views": [shared, shared[:3]],  # tensors sharing memory
        "history": [{"loss": 1.25, "step": 1}],
        "__odd_key": None,
    }


def assert_same(a, b, path=""):
    assert type(a) is type(b) or isinstance(a, dict), (path, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype, path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def test_any_nested_state_round_trips_exactly(tmp_path):
    state = nested_state()
    save_state(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_state.json", "training_state.safetensors"]
    loaded = load_state(tmp_path)
    assert_same(state, loaded)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(4))])
    optimizer.load_state_dict(loaded["optimizers"]["router"])
    random.setstate(loaded["rng"]["python"])
    np.random.set_state(loaded["rng"]["numpy"])


def test_an_edited_record_or_flipped_tensor_bit_is_refused(tmp_path):
    save_state(nested_state(), tmp_path)
    text = (tmp_path / "training_state.json").read_text()
    assert text.count('"steps": 7') == 1
    (tmp_path / "training_state.json").write_text(text.replace('"steps": 7', '"steps": 8'))
    with pytest.raises(TrainingStateError, match="training_state.json was changed"):
        load_state(tmp_path)
    save_state(nested_state(), tmp_path)
    data = bytearray((tmp_path / "training_state.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "training_state.safetensors").write_bytes(bytes(data))
    with pytest.raises(TrainingStateError, match="training_state.safetensors is corrupted: its SHA-256"):
        load_state(tmp_path)


def test_objects_that_would_need_pickle_are_refused_naming_the_entry(tmp_path):
    with pytest.raises(TrainingStateError, match="entry /extra/fn of type function without pickle"):
        save_state({"extra": {"fn": lambda: 0}}, tmp_path)
