"""gradient_alignments: streamed dots equal flattened dots, training state untouched."""
import copy

import numpy as np
import pytest
import torch

from dgamix.mixing.alignment import gradient_alignments


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _ce(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def _batches(n: int, seed: int, size: int = 12):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 8, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def _flat_grad(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(_ce(model, batch), params)])


def test_streamed_equals_flattened_dot():
    model, (target, *batches) = _mlp(), _batches(6, seed=1)
    al = gradient_alignments(model, _ce, target, iter(batches))  # a one-shot iterator
    g_t = _flat_grad(model, target)
    expect = [torch.dot(_flat_grad(model, b), g_t).item() for b in batches]
    norms = [_flat_grad(model, b).norm().item() for b in batches]
    assert al.alignments.shape == (5,) and al.alignments.dtype == np.float64
    np.testing.assert_allclose(al.alignments, expect, rtol=1e-5)
    np.testing.assert_allclose(al.grad_norms, norms, rtol=1e-5)
    assert al.target_norm == pytest.approx(g_t.norm().item(), rel=1e-5)


def test_grad_and_optimiser_state_untouched():
    model, (target, *batches) = _mlp(), _batches(4, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _ce(model, batches[0]).backward()
    opt.step()                                       # the optimiser now has moments
    for i, p in enumerate(model.parameters()):       # the training step's pending grads
        p.grad = torch.full_like(p, float(i + 1))
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    opt_state = copy.deepcopy(opt.state_dict())
    model.eval()
    gradient_alignments(model, _ce, target, batches)
    assert not model.training                        # mode left as it was
    for p, g, v in zip(model.parameters(), grads, params):
        assert torch.equal(p.grad, g) and torch.equal(p.detach(), v)
    after = opt.state_dict()
    for key, st in opt_state["state"].items():
        for name, value in st.items():
            assert torch.equal(after["state"][key][name], value)


def test_clip_bounds_norms_and_rescales_dots():
    model, (target, *batches) = _mlp(), _batches(5, seed=3)
    raw = gradient_alignments(model, _ce, target, batches)
    clip = 0.5 * min(raw.grad_norms.min(), raw.target_norm)   # every gradient gets clipped
    al = gradient_alignments(model, _ce, target, batches, clip=clip)
    assert (al.grad_norms <= clip * (1 + 1e-12)).all() and al.target_norm <= clip * (1 + 1e-12)
    cos = raw.alignments / (raw.grad_norms * raw.target_norm)
    np.testing.assert_allclose(al.alignments, cos * clip ** 2, rtol=1e-10)
    with pytest.raises(ValueError, match="clip"):
        gradient_alignments(model, _ce, target, batches, clip=0.0)


def test_unused_and_frozen_parameters_count_as_zero():
    model, (target, *batches) = _mlp(), _batches(3, seed=4)
    ref = gradient_alignments(model, _ce, target, batches)

    def bias_grad(batch):
        return torch.autograd.grad(_ce(model, batch), model[0].bias)[0]

    bias_dot = np.array([torch.dot(bias_grad(b), bias_grad(target)).item() for b in batches])
    wrapped = torch.nn.ModuleDict({"net": model, "unused": torch.nn.Linear(4, 4)})
    model[0].bias.requires_grad_(False)  # frozen: not part of the alignment
    al = gradient_alignments(wrapped, lambda m, batch: _ce(m["net"], batch), target, batches)
    np.testing.assert_allclose(al.alignments, ref.alignments - bias_dot, rtol=1e-5)


def test_runs_under_no_grad_and_with_constant_loss():
    model, (target, *batches) = _mlp(), _batches(3, seed=5)
    ref = gradient_alignments(model, _ce, target, batches)
    with torch.no_grad():
        al = gradient_alignments(model, _ce, target, batches)
    np.testing.assert_array_equal(al.alignments, ref.alignments)
    zero = gradient_alignments(model, lambda m, b: torch.tensor(1.0), target, batches)
    assert (zero.alignments == 0).all() and zero.target_norm == 0.0
    with pytest.raises(ValueError, match="scalar"):
        gradient_alignments(model, lambda m, b: m(b[0]), target, batches)


def test_half_precision_parameters_accumulate_in_float32():
    model, (target, *batches) = _mlp(), _batches(3, seed=6)
    ref = gradient_alignments(model, _ce, target, batches)
    half = copy.deepcopy(model).to(torch.bfloat16)
    cast = [(x.to(torch.bfloat16), y) for x, y in [target, *batches]]
    al = gradient_alignments(half, lambda m, b: _ce(m, b).float(), cast[0], cast[1:])
    np.testing.assert_allclose(al.alignments, ref.alignments, rtol=0.1, atol=1e-3)


def test_a_parameter_subset_equals_the_dots_of_those_gradients_only():
    model, (target, *batches) = _mlp(), _batches(4, seed=3)
    al = gradient_alignments(model, _ce, target, batches, params=r"^2\.")  # the output layer only

    def head_grad(batch):
        w, b = model[2].weight, model[2].bias
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(_ce(model, batch), [w, b])])

    g_t = head_grad(target)
    np.testing.assert_allclose(al.alignments, [torch.dot(head_grad(b), g_t).item() for b in batches], rtol=1e-5)
    np.testing.assert_allclose(al.target_norm, g_t.norm().item(), rtol=1e-5)
    full = gradient_alignments(model, _ce, target, batches)
    assert not np.allclose(full.alignments, al.alignments)  # the subset really is a subset
    with pytest.raises(ValueError, match=r"matches none of the model's trainable parameters \(0\.weight"):
        gradient_alignments(model, _ce, target, batches, params="nothing-like-this")


def test_align_params_is_a_checked_regular_expression():
    from dgamix.mixing.dga import DGAConfig

    assert DGAConfig(align_params=r"blocks\.3\.|ln_f").align_params == r"blocks\.3\.|ln_f"
    with pytest.raises(ValueError, match="not a regular expression"):
        DGAConfig(align_params="blocks[")
