"""Competitive vision networks: the stochastic LWTA activation, model conversion and the ``_cvn<U>`` names."""

from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from discover_ray.cvn import (
    LWTA,
    active_fractions,
    collect_kl,
    lwta_modules,
    reset_stats,
    seed_sampling,
    set_deterministic,
    set_kl_tracking,
    to_cvn,
    tracking,
)
from discover_ray.cvn import lwta as lwta_impl
from discover_ray.models import ModelSpec, load_model
from discover_ray.models.cifar_resnet import cifar_resnet

RESNET20 = "models/cifar10-resnet/resnet20-12fca82f.th"
TINY_DEIT = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 10}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def winners_per_block(out: torch.Tensor, u: int, axis: int) -> torch.Tensor:
    """Non-zero count of every block of ``u`` contiguous units along ``axis``."""
    shape = (*out.shape[:axis], out.shape[axis] // u, u, *out.shape[axis + 1 :])
    return (out.reshape(shape) != 0).sum(dim=axis + 1)


def as_blocks(x: torch.Tensor, u: int, axis: int) -> torch.Tensor:
    return x.reshape(*x.shape[:axis], x.shape[axis] // u, u, *x.shape[axis + 1 :])


def replayed_noise(blocks: torch.Tensor, axis: int, seed: int) -> torch.Tensor:
    """The noise a module seeded with ``seed`` adds on its first call, replayed by its documented formula.

    U = 2: one logistic L = logit(u) per block (on unit 0; unit 1 gets 0, only the difference matters);
    U > 2: a Gumbel g = −log(−log(u + ε) + ε) per unit.
    """
    generator = torch.Generator().manual_seed(seed)
    if blocks.shape[axis] == 2:
        u = torch.rand(blocks.select(axis, 0).shape, generator=generator, dtype=blocks.dtype)
        logistic = torch.logit(u, eps=1e-8)
        return torch.stack((logistic, torch.zeros_like(logistic)), dim=axis)
    u = torch.rand(blocks.shape, generator=generator, dtype=blocks.dtype)
    return -torch.log(-torch.log(u + 1e-8) + 1e-8)


def reference_lwta(x: torch.Tensor, u: int, axis: int, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """x ⊙ (h + y − stopgrad(y)), y = softmax((x + noise)/τ), h its one-hot argmax, written out for autograd.

    For U = 2 with the logistic noise on unit 0, y_0 = σ((x0 − x1 + L)/τ), the 2-way Gumbel-softmax.
    """
    blocks = as_blocks(x, u, axis)
    scores = blocks + noise
    soft = torch.softmax(scores / tau, dim=axis + 1)
    hard = F.one_hot(scores.argmax(dim=axis + 1), u).movedim(-1, axis + 1).to(x.dtype)
    return (blocks * (hard + (soft - soft.detach()))).reshape(x.shape)


def reference_kl(x: torch.Tensor, u: int, axis: int) -> torch.Tensor:
    log_q = torch.log_softmax(as_blocks(x, u, axis), dim=axis + 1)
    return (log_q.exp() * (log_q + math.log(u))).sum(dim=axis + 1).mean()


# -- the activation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "dim", "axis"),
    [
        ((6, 24), "auto", 1),
        ((3, 5, 24), "auto", 2),
        ((2, 24, 4, 5), "auto", 1),
        ((3, 5, 24), -1, 2),
        ((2, 24, 3, 3), 1, 1),
    ],
)
@pytest.mark.parametrize("u", [2, 4, 8])
def test_one_winner_per_block_keeps_its_value(shape, dim, axis, u):
    torch.manual_seed(0)
    x = torch.randn(shape)
    out = LWTA(u, dim=dim)(x)
    assert out.shape == x.shape
    assert torch.all(winners_per_block(out, u, axis) == 1)  # conv maps: per spatial position
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # raw value, bit for bit; losers exactly 0
    assert torch.count_nonzero(out).item() / out.numel() == 1 / u  # sparsity exactly 1/U


def test_negative_winners_keep_their_value():
    torch.manual_seed(1)
    x = -torch.rand(500, 4) - 0.5  # every unit negative
    out = LWTA(4)(x)
    assert torch.all(winners_per_block(out, 4, 1) == 1)
    assert torch.all(out.sum(dim=1) < 0)
    assert torch.equal(out[out != 0], x[out != 0])
    block = torch.tensor([[-2.0, -0.5, -1.0, -3.0]])
    assert torch.equal(LWTA(4, deterministic=True)(block), torch.tensor([[0.0, -0.5, 0.0, 0.0]]))


@pytest.mark.parametrize("tau", [0.67, 5.0])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("logits", [[1.0, 0.25, -0.5, 2.0], [0.7, -0.4]], ids=["U4", "U2"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "autograd"])
def test_winner_frequencies_follow_softmax_of_x(tau, conv, logits, grad):
    # Each winner count is Binomial(n, p_k) with p = softmax(x) whatever τ (the Gumbel-max trick; for U = 2
    # the logistic form). A 5σ band per unit has a false-alarm chance below 4 × 6e-7; the seed is fixed, so
    # the test is deterministic anyway.
    logits = torch.tensor(logits)  # no zero: a winning 0 would not show
    u, n = len(logits), 100_000
    module = LWTA(u, tau=tau)
    module.reseed(7)
    if conv:  # (B, C, H, W): n samples as 20 images of 50×100 positions
        x = logits.view(1, u, 1, 1).expand(20, u, 50, 100).contiguous().requires_grad_(grad)
        counts = (module(x) != 0).sum(dim=(0, 2, 3)).double()
    else:
        x = logits.expand(n, u).contiguous().requires_grad_(grad)
        counts = (module(x) != 0).sum(dim=0).double()
    p = torch.softmax(logits.double(), 0)
    sigma = torch.sqrt(n * p * (1 - p))
    assert counts.sum() == n
    assert torch.all((counts - n * p).abs() < 5 * sigma), (counts / n, p)


@pytest.mark.parametrize("u", [2, 4])
def test_straight_through_gradients_reach_the_weights_also_of_losers(u):
    torch.manual_seed(3)
    linear = nn.Linear(5, 8)
    act = LWTA(u)
    act.reseed(11)
    inputs = torch.randn(1, 5)
    out = act(linear(inputs))
    (out * torch.arange(1.0, 9.0)).sum().backward()
    losers = (out[0] == 0).nonzero().flatten()
    assert len(losers) == 8 - 8 // u
    row_norms = linear.weight.grad.abs().sum(dim=1)
    assert torch.all(row_norms > 0)  # winners by x·ξ, losers only through y_soft
    # the same graph written out by hand, with the module's noise replayed from its seed
    x = linear(inputs).detach().requires_grad_(True)
    noise = replayed_noise(as_blocks(x.detach(), u, 1), 2, seed=11)
    expected = reference_lwta(x, u, 1, noise, tau=0.67)
    (expected * torch.arange(1.0, 9.0)).sum().backward()
    x2 = linear(inputs).detach().requires_grad_(True)
    act.reseed(11)
    out2 = act(x2)
    assert torch.equal(out2, expected.detach())
    (out2 * torch.arange(1.0, 9.0)).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    # deterministic winners have no soft path: loser rows get nothing
    linear.zero_grad()
    act.deterministic = True
    out = act(linear(inputs))
    out.sum().backward()
    assert torch.all(linear.weight.grad[out[0] == 0] == 0)


LAYOUTS = [((6, 24), -1, 1), ((3, 5, 24), "auto", 2), ((2, 24, 3, 4), "auto", 1)]


@pytest.mark.parametrize(("shape", "dim", "axis"), LAYOUTS, ids=["dense", "tokens", "conv"])
@pytest.mark.parametrize("u", [2, 3, 4])
@pytest.mark.parametrize("tau", [0.67, 2.0])
def test_output_gradients_and_kl_match_the_written_out_graph_in_float64(shape, dim, axis, u, tau):
    torch.manual_seed(u)
    x = (2 * torch.randn(shape, dtype=torch.float64)).requires_grad_(True)
    weights = torch.randn(shape, dtype=torch.float64)
    act = LWTA(u, tau=tau, dim=dim).train()
    act.reseed(5)
    out = act(x)
    kl = act.pop_kl()
    assert out.dtype == kl.dtype == torch.float64
    grad, = torch.autograd.grad((out * weights).sum() + 3 * kl, x)

    ref_x = x.detach().clone().requires_grad_(True)
    noise = replayed_noise(as_blocks(ref_x.detach(), u, axis), axis + 1, seed=5)
    expected = reference_lwta(ref_x, u, axis, noise, tau)
    expected_kl = reference_kl(ref_x, u, axis)
    expected_grad, = torch.autograd.grad((expected * weights).sum() + 3 * expected_kl, ref_x)
    assert torch.equal(out, expected.detach())  # same winners, raw values, exact zeros
    torch.testing.assert_close(kl, expected_kl.detach(), rtol=0, atol=1e-7 * u)  # no ε inside the log
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("u", [2, 4])
@pytest.mark.parametrize("conv", [False, True])
def test_backward_matches_finite_differences_of_the_straight_through_surrogate(u, conv):
    # With the noise and the winners h fixed, the straight-through Jacobian of x ⊙ (h + y − stopgrad(y)) at
    # x0 is that of G(x) = x ⊙ h + x0 ⊙ y(x): checked here against central differences of G (float64).
    torch.manual_seed(10 + u)
    shape, axis = ((2, 2 * u, 2, 1), 1) if conv else ((3, 2 * u), 1)
    x0 = torch.randn(shape, dtype=torch.float64)
    weights = torch.randn(shape, dtype=torch.float64)
    act = LWTA(u, tau=0.67).train()
    act.reseed(3)
    x = x0.clone().requires_grad_(True)
    out = act(x)
    grad, = torch.autograd.grad((out * weights).sum(), x)
    noise = replayed_noise(as_blocks(x0, u, axis), axis + 1, seed=3)
    hard = as_blocks(out.detach() != 0, u, axis).to(x0.dtype)

    def surrogate(z: torch.Tensor) -> torch.Tensor:
        soft = torch.softmax((as_blocks(z, u, axis) + noise) / 0.67, dim=axis + 1)
        return ((as_blocks(z, u, axis) * hard + as_blocks(x0, u, axis) * soft).reshape(shape) * weights).sum()

    step = 1e-6
    numeric = torch.zeros_like(x0).view(-1)
    for i in range(numeric.numel()):
        delta = torch.zeros_like(numeric)
        delta[i] = step
        numeric[i] = (surrogate(x0 + delta.view(shape)) - surrogate(x0 - delta.view(shape))) / (2 * step)
    torch.testing.assert_close(grad, numeric.view(shape), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("u", [2, 4])
@pytest.mark.parametrize("deterministic", [False, True])
def test_kl_gradient_passes_gradcheck(u, deterministic):
    torch.manual_seed(u)
    act = LWTA(u, deterministic=deterministic).train()

    def kl_of(x: torch.Tensor) -> torch.Tensor:
        act.reseed(1)
        act(x)
        return act.pop_kl()

    x = (3 * torch.randn(2, 4 * u, 2, 3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(kl_of, (x,))


def test_two_competitors_use_one_logistic_draw_equivalent_to_two_gumbels(monkeypatch):
    # Same noise: feeding the U = 2 path L = g0 − g1 from the Gumbels the general path draws gives the same
    # winners, output and straight-through gradients (softmax((x + g)/τ)_0 = σ((x0 − x1 + g0 − g1)/τ)).
    torch.manual_seed(6)
    blocks = torch.randn(4, 16, 2, 5, 5, dtype=torch.float64)
    weights = torch.randn_like(blocks)
    x_general = blocks.clone().requires_grad_(True)
    out_general, kl_general = lwta_impl._BlockLWTA.apply(x_general, 2, 0.67, torch.Generator().manual_seed(2), True)
    grad_general, = torch.autograd.grad((out_general * weights).sum() + 5 * kl_general, x_general)

    uniform = torch.rand(blocks.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform + 1e-8) + 1e-8)
    logistic = gumbel[:, :, 0] - gumbel[:, :, 1]
    monkeypatch.setattr(lwta_impl, "_logistic_noise", lambda like, generator: logistic.clone())
    x_pair = blocks.clone().requires_grad_(True)
    out_pair, kl_pair = lwta_impl._PairLWTA.apply(x_pair, 2, 0.67, None, True)
    grad_pair, = torch.autograd.grad((out_pair * weights).sum() + 5 * kl_pair, x_pair)
    assert torch.equal(out_pair, out_general)
    torch.testing.assert_close(kl_pair, kl_general, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_pair, grad_general, rtol=1e-10, atol=1e-12)


def test_two_competitor_paths_agree_in_distribution():
    # The U = 2 path (one logistic draw per block) and the general path (two Gumbels) sample the same
    # Bernoulli(σ(x0 − x1)): their counts over n blocks differ by less than 5σ of the difference.
    n = 200_000
    blocks = torch.tensor([0.9, -0.3]).view(1, 2, 1).expand(n, 2, 1).contiguous()
    with torch.no_grad():
        pair, _ = lwta_impl._PairLWTA.apply(blocks, 1, 0.67, torch.Generator().manual_seed(1), False)
        general, _ = lwta_impl._BlockLWTA.apply(blocks, 1, 0.67, torch.Generator().manual_seed(2), False)
    p = torch.sigmoid(torch.tensor(1.2, dtype=torch.float64))
    sigma = torch.sqrt(n * p * (1 - p))
    first_pair, first_general = (float((out[:, 0] != 0).sum()) for out in (pair, general))
    assert (pair != 0).sum() == (general != 0).sum() == n
    assert abs(first_pair - first_general) < 5 * math.sqrt(2) * sigma
    assert abs(first_pair - n * p) < 5 * sigma and abs(first_general - n * p) < 5 * sigma


@pytest.mark.parametrize("u", [2, 3, 4])
@pytest.mark.parametrize("conv", [False, True])
def test_ties_and_nan_blocks_follow_argmax(u, conv):
    # Deterministic winners on inputs full of ties: the first maximum wins, as with argmax; a block holding
    # a NaN gives NaN where the NaN is and 0 elsewhere, as x·one_hot(argmax) does.
    torch.manual_seed(u)
    values = torch.randint(-2, 2, (6, 4 * u, 3, 3) if conv else (50, 4 * u)).double()
    values[0, 1] = float("nan")
    axis = 1
    expected = values * lwta_impl._one_hot(as_blocks(values, u, axis), axis + 1).reshape(values.shape)
    out = LWTA(u, deterministic=True)(values)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    ties = lwta_impl._winners(as_blocks(values[1:], u, axis), axis + 1, torch.float64)
    assert torch.equal(ties, lwta_impl._one_hot(as_blocks(values[1:], u, axis), axis + 1))


@pytest.mark.parametrize("u", [2, 4])
def test_without_autograd_the_same_seed_gives_the_same_sample_and_kl(u):
    torch.manual_seed(8)
    x = torch.randn(4, 8 * u, 3, 3)
    act = LWTA(u).train()
    act.reseed(4)
    with_graph = act(x.clone().requires_grad_(True))
    kl_graph = act.pop_kl()
    act.reseed(4)
    with torch.no_grad():
        plain = act(x)
    assert torch.equal(plain, with_graph.detach())
    assert torch.equal(act.pop_kl(), kl_graph.detach())


def test_two_competitor_kl_is_stable_for_large_differences():
    x = torch.tensor([[0.0, math.log(3.0), 100.0, -100.0, -30.0, 60.0, 7.0, 7.0]], requires_grad=True)
    act = LWTA(2).train()
    act(x)
    kl = act.pop_kl()
    # blocks: q = (1/4, 3/4); ≈ one-hot; ≈ one-hot; uniform
    one_hot = math.log(2)
    expected = (0.25 * math.log(0.5) + 0.75 * math.log(1.5) + 2 * one_hot + 0.0) / 4
    assert math.isfinite(kl.item()) and abs(kl.item() - expected) < 1e-6
    kl.backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad[0, 2:6], torch.zeros(4), rtol=0, atol=1e-20)


def test_kl_matches_its_closed_form_and_accumulates():
    act = LWTA(4)
    # block 1: q = (1, 1, 1, 5)/8; block 2: q uniform → KL 0; mean over the 2 blocks
    x = torch.tensor([[0.0, 0.0, 0.0, math.log(5.0), 0.3, 0.3, 0.3, 0.3]], requires_grad=True)
    expected = (3 / 8 * math.log(4 / 8) + 5 / 8 * math.log(4 * 5 / 8) + 0.0) / 2
    act.train()
    act(x)
    kl = act.pop_kl()
    assert kl is not None and kl.ndim == 0
    assert abs(kl.item() - expected) < 1e-6
    model = nn.Sequential(act).train()
    model(x)
    model(x)  # a module called twice per forward adds both calls
    copy.deepcopy(model)  # e.g. an EMA copy mid-step: the pending KL stays with the original
    total = collect_kl(model)
    assert abs(total.item() - 2 * expected) < 1e-6
    total.backward()
    assert x.grad is not None and torch.any(x.grad != 0)
    assert collect_kl(model).item() == 0.0  # collected means reset
    model.eval()
    model(x)
    assert act.pop_kl() is None  # eval costs nothing
    set_kl_tracking(model, True)
    model(x)
    assert abs(collect_kl(model).item() - expected) < 1e-6
    set_kl_tracking(model, False)
    model.train()
    model(x)
    assert act.pop_kl() is None


@pytest.mark.parametrize("u", [2, 4])
def test_deterministic_mode_is_argmax_and_draws_no_randomness(u):
    torch.manual_seed(4)
    x = torch.randn(16, 12)
    expected = x * F.one_hot(x.view(16, 12 // u, u).argmax(-1), u).view(16, 12)
    state = torch.get_rng_state()
    for act in (LWTA(u, deterministic=True), LWTA(u, tau=0.0)):
        assert torch.equal(act(x), expected)
        assert torch.equal(act(x), expected)
    assert torch.equal(torch.get_rng_state(), state)
    model = nn.Sequential(LWTA(u), LWTA(u))
    set_deterministic(model, True)
    positive = x.abs() + 0.1  # (a negative winner would lose to its zeroed rivals in the second module)
    assert torch.equal(model(positive), LWTA(u, tau=0)(positive))  # positive winners stay winners
    set_deterministic(model, False)
    assert not torch.equal(model(torch.randn(64, 12)), model[1](model[0](torch.randn(64, 12))))


@pytest.mark.parametrize("u", [2, 4])
def test_seeded_sampling_reproduces_and_seeds_differ(u):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 16), LWTA(u), nn.Linear(16, 16), LWTA(u))
    x = torch.randn(32, 8)
    state = torch.get_rng_state()
    seed_sampling(model, 0)
    first = model(x)
    second = model(x)
    assert not torch.equal(first, second)  # the stream goes on
    seed_sampling(model, 0)
    assert torch.equal(model(x), first)
    assert torch.equal(model(x), second)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    seed_sampling(model, 1)
    assert not torch.equal(model(x), first)
    # modules get their own streams: the same input is split differently by the two modules
    seed_sampling(model, 0)
    same = torch.randn(32, 16)
    assert not torch.equal(model[1](same) != 0, model[3](same) != 0)
    # copies and pickles restart from the seed
    seed_sampling(model, 0)
    clone = copy.deepcopy(model)
    pickled = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone(x), first) and torch.equal(pickled(x), first)
    seed_sampling(model, None)  # back to the global RNG
    torch.manual_seed(9)
    a = model(x)
    torch.manual_seed(9)
    assert torch.equal(model(x), a)


def test_one_competitor_is_the_plain_activation():
    x = torch.randn(4, 7, 5, 5)
    assert torch.equal(LWTA(1)(x), F.relu(x))
    assert torch.equal(LWTA(1, fallback="gelu")(x), F.gelu(x))
    assert torch.equal(LWTA(1, fallback="gelu_tanh")(x), F.gelu(x, approximate="tanh"))
    model = cifar_resnet("cifar_resnet20").eval()
    twin = to_cvn(copy.deepcopy(model), 1)
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(twin(image), model(image))


def test_sizes_that_do_not_divide_and_bad_arguments_are_explained():
    with pytest.raises(
        ValueError, match=r"U=4 .*size 10 .*not divisible by 4.*Choose a U that divides 10 \(e\.g\. \[2, 5, 10\]\)"
    ):
        LWTA(4)(torch.randn(2, 10))
    with pytest.raises(ValueError, match="size 6"):
        LWTA(4)(torch.randn(1, 6, 3, 3))  # conv: the channel axis
    with pytest.raises(ValueError, match="positive integer"):
        LWTA(0)
    with pytest.raises(ValueError, match="fallback"):
        LWTA(2, fallback="tanh")


@pytest.mark.parametrize("u", [2, 8])
def test_half_precision_inputs_keep_dtype_and_winners(u):
    x = torch.randn(8, 3, 16).to(torch.bfloat16).requires_grad_(True)
    act = LWTA(u).train()
    out = act(x)
    assert out.dtype == torch.bfloat16
    assert torch.all(winners_per_block(out, u, 2) <= 1)  # a bf16 zero may win
    assert torch.equal(out[out != 0], x[out != 0])
    kl = act.pop_kl()
    assert kl.dtype == torch.float32  # the noise and the KL are computed in float32
    (out.float().sum() + kl).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_active_fractions_are_measured_only_while_tracking():
    model = nn.Sequential(nn.Linear(4, 24), LWTA(4), nn.Linear(24, 24), LWTA(8), nn.Linear(24, 4))
    x = torch.randn(10, 4)
    model(x)
    assert active_fractions(model) == {}
    with tracking(model):
        model(x)
        model(x)
    assert active_fractions(model) == {"1": 1 / 4, "3": 1 / 8}
    assert not any(m.track_stats for _, m in lwta_modules(model))
    model(x)
    assert active_fractions(model) == {"1": 1 / 4, "3": 1 / 8}
    reset_stats(model)
    assert active_fractions(model) == {}
    with tracking(model, kl=True):
        model.eval()
        model(x)
    assert collect_kl(model).item() > 0
    assert all(m.track_kl is None for _, m in lwta_modules(model))


# -- conversion ----------------------------------------------------------------------------------
def test_convert_tiny_deit_replaces_only_the_mlp_activations():
    import timm

    model = timm.create_model("deit_tiny_patch16_224", **TINY_DEIT)
    params = n_params(model)
    to_cvn(model, 16)
    assert [name for name, _ in lwta_modules(model)] == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert not any(isinstance(m, nn.GELU) for m in model.modules())  # nothing else in timm's ViT is a GELU
    assert all(m.competitors == 16 and m.fallback == "gelu" for _, m in lwta_modules(model))
    assert n_params(model) == params
    with tracking(model):
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert active_fractions(model)["blocks.0.mlp.act"] == 1 / 16  # (B, T, 768) tokens, last axis


def test_convert_resnet18_replaces_every_relu():
    import timm

    model = timm.create_model("resnet18", num_classes=10)
    params = n_params(model)
    to_cvn(model, 4)
    names = [name for name, _ in lwta_modules(model)]
    assert len(names) == 17 and names[0] == "act1" and "layer4.1.act2" in names
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert n_params(model) == params
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_convert_cifar_resnet_by_type_or_by_name():
    model = to_cvn(cifar_resnet("cifar_resnet20"), 2, tau=1.67)
    names = [name for name, _ in lwta_modules(model)]
    assert len(names) == 19 and names[:3] == ["relu", "layer1.0.relu1", "layer1.0.relu2"]
    assert all(m.tau == 1.67 for _, m in lwta_modules(model))
    assert n_params(model) == n_params(cifar_resnet("cifar_resnet20"))
    assert torch.isfinite(model(torch.rand(2, 3, 32, 32))).all()
    some = to_cvn(cifar_resnet("cifar_resnet20"), 4, names=["layer3.2.relu2"])
    assert [name for name, _ in lwta_modules(some)] == ["layer3.2.relu2"]
    with pytest.raises(ValueError, match="no module named 'layer3.2.relu3'.*close: layer3.2.relu2"):
        to_cvn(cifar_resnet("cifar_resnet20"), 4, names=["layer3.2.relu3"])
    with pytest.raises(ValueError, match="'layer1.0.conv1' is a Conv2d, not one of the activations"):
        to_cvn(cifar_resnet("cifar_resnet20"), 4, names=["layer1.0.conv1"])


def test_a_shared_activation_becomes_one_shared_lwta():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 8), relu, nn.Linear(8, 8), relu)
    to_cvn(model, 2)
    assert isinstance(model[1], LWTA) and model[1] is model[3]
    assert len(lwta_modules(model)) == 1


def test_shared_cifar_checkpoint_loads_into_its_twin(shared):
    loaded = load_model(ModelSpec("cifar_resnet20_cvn2", checkpoint=str(shared / RESNET20)))
    assert loaded.checkpoint_id.startswith("12fca82f")
    assert len(lwta_modules(loaded.model)) == 19


def test_load_model_builds_twins():
    from PIL import Image

    loaded = load_model(ModelSpec(name="cifar_resnet20_cvn2"))
    assert loaded.preprocess(Image.new("RGB", (200, 180))).shape == (3, 32, 32)  # CIFAR preprocessing
    assert {m.competitors for _, m in lwta_modules(loaded.model)} == {2}
    assert getattr(loaded.model.get_submodule("layer3.2.relu2"), "competitors", 1) == 2  # what dissection reads
    with torch.no_grad():
        assert loaded.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    timm_twin = load_model(ModelSpec(name="resnet18_cvn4", kwargs={"num_classes": 10}))
    assert len(lwta_modules(timm_twin.model)) == 17
    with pytest.raises(ValueError, match="unknown model 'resnet_9000_cvn4'.*_cvn<U> suffix"):
        load_model(ModelSpec("resnet_9000_cvn4"))


def test_importing_the_package_does_not_import_timm():
    code = "import sys, discover_ray.cvn, discover_ray.models; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
