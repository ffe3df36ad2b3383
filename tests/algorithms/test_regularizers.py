import math

import pytest
import torch

from fedoa.algorithms.regularizers import distance

H_P = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
H_G = torch.tensor([[1.0, 0.0], [0.0, 4.0]])


def test_values_against_hand_computation():
    # differences: [0, 2] and [3, 0]
    assert distance("frobenius", H_P, H_G).item() == pytest.approx(math.sqrt(4 + 9))
    assert distance("mse", H_P, H_G).item() == pytest.approx((4 + 9) / 2)
    cos1 = (1 * 1 + 2 * 0) / (math.sqrt(5) * 1)
    cos2 = (3 * 0 + 4 * 4) / (5 * 4)
    assert distance("cosine", H_P, H_G).item() == pytest.approx(((1 - cos1) + (1 - cos2)) / 2, rel=1e-6)


def test_frobenius_is_torch_dist_of_the_reference():
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    assert distance("frobenius", a, b).item() == pytest.approx(torch.dist(a, b, p=2).item(), rel=1e-6)


def test_zero_distance_has_finite_gradient():
    h = torch.ones(3, 4, requires_grad=True)
    distance("frobenius", h, torch.ones(3, 4)).backward()
    assert torch.isfinite(h.grad).all()


def test_unknown_distance():
    with pytest.raises(ValueError, match="unknown distance"):
        distance("l7", H_P, H_G)
