"""Continuous featurization on hand-checked inputs: DoubleNormLog step by step, Log1pAbs, ClipLog1pAbs, ZScoreLog."""

import math

import torch

from common.featurization import ClipLog1pAbs, DoubleNormLog, Log1pAbs, ZScoreLog, signed_log1p

E = math.e
EPS = 1e-5
# signed_log1p maps these to [[0, 1], [-2, 0]]: NaN and -inf become 0, e-1 -> 1, -(e^2-1) -> -2.
CONTINUOUS = torch.tensor([[float("nan"), E - 1], [-(E**2 - 1), float("-inf")]])
BINARY = torch.tensor([[1.0], [0.0]])


def test_signed_log1p():
    torch.testing.assert_close(signed_log1p(CONTINUOUS), torch.tensor([[0.0, 1.0], [-2.0, 0.0]]))


def test_double_norm_log_without_norms_is_log_clamp_concat():
    f = DoubleNormLog(2, 1, batch_norm=False, layer_norm=False, clip_magnitude=1.5)
    assert f.output_dim == 3
    torch.testing.assert_close(f(CONTINUOUS, BINARY), torch.tensor([[0.0, 1.0, 1.0], [-1.5, 0.0, 0.0]]))


def test_double_norm_log_batch_norm_clamp_layer_norm():
    f = DoubleNormLog(2, 1, batch_norm=True, clip_magnitude=0.9, layer_norm=True)
    f.train()
    # BatchNorm with batch statistics: col 0 [0, -2] -> [1, -1]/sqrt(1+eps); col 1 [1, 0] -> [1, -1]*0.5/sqrt(.25+eps)
    a = 1 / math.sqrt(1 + EPS)
    b = 0.5 / math.sqrt(0.25 + EPS)
    # clamp to +-0.9, then concat binary
    rows = [[min(a, 0.9), min(b, 0.9), 1.0], [-min(a, 0.9), -min(b, 0.9), 0.0]]
    expected = []
    for row in rows:
        mean = sum(row) / 3
        var = sum((v - mean) ** 2 for v in row) / 3
        expected.append([(v - mean) / math.sqrt(var + EPS) for v in row])
    torch.testing.assert_close(f(CONTINUOUS, BINARY), torch.tensor(expected))
    # Eval mode uses the running statistics (updated once with momentum 0.1 from mean 0 / var 1).
    f.eval()
    bn = f.batch_norm
    torch.testing.assert_close(bn.running_mean, torch.tensor([-0.1, 0.05]))
    logged = torch.tensor([[0.0, 1.0], [-2.0, 0.0]])
    normed = ((logged - bn.running_mean) / torch.sqrt(bn.running_var + EPS)).clamp(-0.9, 0.9)
    expected_eval = torch.nn.functional.layer_norm(torch.cat([normed, BINARY], 1), (3,))
    torch.testing.assert_close(f(CONTINUOUS, BINARY), expected_eval)


def test_non_finite_values_are_counted_in_training():
    f = Log1pAbs(2, 1)
    f(CONTINUOUS, BINARY)
    f(CONTINUOUS, BINARY)
    assert f.pop_non_finite_count() == 4
    assert f.pop_non_finite_count() == 0
    f.eval()
    f(CONTINUOUS, BINARY)
    assert f.pop_non_finite_count() == 0


def test_finite_inputs_take_the_one_check_path_with_the_same_values():
    # All finite: one check of the sum, no count; a sum that overflows (finite values near the float32 maximum)
    # falls back to the value-by-value path, which counts nothing either; one NaN is counted.
    f = Log1pAbs(2, 1)
    for continuous, non_finite in ((torch.tensor([[1.0, -2.0], [0.0, 3e3]]), 0),
                                   (torch.full((2, 2), 3e38), 0),
                                   (torch.tensor([[1.0, float("nan")], [0.0, 3e38]]), 1)):
        out = f(continuous, BINARY)
        torch.testing.assert_close(out[:, :2], signed_log1p(continuous))
        assert f.pop_non_finite_count() == non_finite
    assert torch.isinf(torch.full((2, 2), 3e38).sum())


def test_log1p_abs_and_clip_log1p_abs():
    torch.testing.assert_close(
        Log1pAbs(2, 1)(CONTINUOUS, BINARY), torch.tensor([[0.0, 1.0, 1.0], [-2.0, 0.0, 0.0]])
    )
    clipped = ClipLog1pAbs(2, 1, clip_magnitude=0.5)(CONTINUOUS, BINARY)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.5, 1.0], [-0.5, 0.0, 0.0]]))


def test_zscore_log_standardizes_the_log_and_keeps_constant_columns():
    f = ZScoreLog(
        mean=torch.tensor([-1.0, 0.5]), std=torch.tensor([2.0, 0.0]), num_binary=1, clip_magnitude=None
    )
    # col 0: ([0, -2] + 1) / 2; col 1 has std 0: only centred, ([1, 0] - 0.5) / 1
    torch.testing.assert_close(f(CONTINUOUS, BINARY), torch.tensor([[0.5, 0.5, 1.0], [-0.5, -0.5, 0.0]]))
    clipped = ZScoreLog(torch.tensor([-1.0, 0.5]), torch.tensor([0.1, 1.0]), 1, clip_magnitude=3.0)
    torch.testing.assert_close(
        clipped(CONTINUOUS, BINARY), torch.tensor([[3.0, 0.5, 1.0], [-3.0, -0.5, 0.0]])
    )


def test_double_norm_log_gradients_are_those_of_the_clamped_formula():
    # The clip's backward passes the gradient where |x| < clip_magnitude and none beyond, as torch.clamp's does
    # (they differ only at exactly +-clip_magnitude); the parameters' gradients follow.
    g = torch.Generator().manual_seed(0)
    continuous = torch.randn(64, 5, generator=g) * 20
    continuous[3, 1] = float("nan")
    binary = (torch.rand(64, 2, generator=g) < 0.5).float()
    f = DoubleNormLog(5, 2, clip_magnitude=0.7)
    f.train()
    upstream = torch.randn(64, 7, generator=g)
    (f(continuous, binary) * upstream).sum().backward()
    bn, ln = f.batch_norm, f.layer_norm
    weight, bias = bn.weight.detach().clone().requires_grad_(), bn.bias.detach().clone().requires_grad_()
    ln_weight, ln_bias = ln.weight.detach().clone().requires_grad_(), ln.bias.detach().clone().requires_grad_()
    logged = torch.nan_to_num(continuous, nan=0.0)
    logged = torch.sign(logged) * torch.log1p(logged.abs())
    normed = torch.nn.functional.batch_norm(logged, None, None, weight, bias, training=True)
    assert ((normed.abs() - 0.7).abs() > 1e-6).all() and (normed.abs() > 0.7).any()
    out = torch.nn.functional.layer_norm(torch.cat([normed.clamp(-0.7, 0.7), binary], 1), (7,), ln_weight, ln_bias)
    (out * upstream).sum().backward()
    for mine, reference in ((bn.weight, weight), (bn.bias, bias), (ln.weight, ln_weight), (ln.bias, ln_bias)):
        torch.testing.assert_close(mine.grad, reference.grad)
    assert f.pop_non_finite_count() == 1
