import torch

from smat_peft import SmatRouter


def test_weights_are_a_distribution_over_experts():
    router = SmatRouter(feature_dim=32, num_experts=8).eval()
    out = router(torch.randn(5, 32))
    assert out.weights.shape == (8,) and out.logits.shape == (8,) and out.embedding.shape == (32,)
    assert torch.all(out.weights > 0)
    assert torch.isclose(out.weights.sum(), torch.tensor(1.0), atol=1e-6)


def test_weights_are_invariant_to_class_order():
    router = SmatRouter(feature_dim=32, num_experts=8).eval()
    prototypes = torch.randn(7, 32)
    permuted = prototypes[torch.randperm(7)]
    assert torch.allclose(router(prototypes).weights, router(permuted).weights, atol=1e-6)


def test_training_mode_samples_relaxed_bernoulli_noise():
    router = SmatRouter(feature_dim=32, num_experts=8, spectral_norm=False).train()
    prototypes = torch.randn(5, 32)
    first, second = router(prototypes).weights, router(prototypes).weights
    assert not torch.allclose(first, second)
    assert torch.isclose(first.sum(), torch.tensor(1.0), atol=1e-6)


def test_lower_test_temperature_sharpens_the_weights():
    torch.manual_seed(0)
    hot = SmatRouter(feature_dim=32, num_experts=8, test_temperature=5.0).eval()
    torch.manual_seed(0)
    cold = SmatRouter(feature_dim=32, num_experts=8, test_temperature=0.5).eval()
    prototypes = torch.randn(5, 32)
    hot_w, cold_w = hot(prototypes).weights, cold(prototypes).weights
    assert cold_w.max() - cold_w.min() > hot_w.max() - hot_w.min()


def test_eval_weights_use_the_test_temperature_whatever_the_training_buffer_holds():
    # the buffer is whatever the schedule reached in the checkpoint that was kept; the test temperature is fixed
    router = SmatRouter(feature_dim=32, num_experts=8, test_temperature=0.5).eval()
    prototypes = torch.randn(5, 32)
    weights = []
    for buffer in (3.99, 2.86, 0.61):
        router.temperature.fill_(buffer)
        weights.append(router(prototypes).weights)
    assert all(torch.equal(weights[0], w) for w in weights)
    expected = torch.sigmoid(router(prototypes).logits / 0.5)
    assert torch.allclose(weights[0], expected / expected.sum(), atol=1e-6)


def test_anneal_goes_from_the_start_to_the_test_temperature():
    router = SmatRouter(feature_dim=32, num_experts=4, temperature=5.0, test_temperature=0.5)
    assert router.anneal_(0, decay=0.25) == 5.0
    assert router.anneal_(10, decay=0.25) == 2.5 and router.temperature.item() == 2.5
    assert router.anneal_(1000, decay=0.25) == 0.5


def test_keys_and_skill_tokens_are_registered_trainable_parameters():
    # Pitfall P5: in the reference code they are plain tensors, never trained or saved.
    router = SmatRouter(feature_dim=32, num_experts=4, spectral_norm=True)
    names = dict(router.named_parameters())
    assert "keys" in names and "skill_tokens" in names
    state = router.state_dict()
    assert "keys" in state and "skill_tokens" in state and "temperature" in state
    out = router(torch.randn(3, 32))
    (out.logits.sum() + out.weights[0]).backward()
    assert router.keys.grad is not None and router.skill_tokens.grad.abs().sum() > 0


def test_spectral_norm_bounds_the_linear_layers():
    router = SmatRouter(feature_dim=32, num_experts=4, spectral_norm=True).train()
    before = router.qkv.weight.clone()
    router(torch.randn(3, 32))
    assert torch.equal(router.qkv.weight, before)  # forwards do not run the power iteration
    for _ in range(20):
        router.update_spectral_norm()
    router.eval()
    for layer in (router.qkv, router.proj, router.fc1, router.fc2):
        assert torch.linalg.matrix_norm(layer.weight, ord=2) < 1.05
