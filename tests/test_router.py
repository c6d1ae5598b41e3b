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


def test_lower_temperature_sharpens_the_weights():
    router = SmatRouter(feature_dim=32, num_experts=8).eval()
    prototypes = torch.randn(5, 32)
    router.temperature.fill_(5.0)
    hot = router(prototypes).weights
    router.temperature.fill_(0.5)
    cold = router(prototypes).weights
    assert cold.max() - cold.min() > hot.max() - hot.min()


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
