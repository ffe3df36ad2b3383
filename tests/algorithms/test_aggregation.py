import pytest
import torch

from fedoa.algorithms.aggregation import fedavg


def test_fedavg_uniform_and_weighted():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[0.0]])}
    b = {"x": torch.tensor([3.0, 6.0]), "y": torch.tensor([[4.0]])}
    avg = fedavg([a, b], [1, 1])
    assert torch.equal(avg["x"], torch.tensor([2.0, 4.0])) and torch.equal(avg["y"], torch.tensor([[2.0]]))
    w = fedavg([a, b], [3, 1])  # by example counts 3 and 1
    assert torch.allclose(w["x"], torch.tensor([1.5, 3.0])) and torch.allclose(w["y"], torch.tensor([[1.0]]))
    assert w["x"].dtype == torch.float32


def test_fedavg_rejects_empty_and_bad_weights():
    with pytest.raises(ValueError):
        fedavg([], [])
    with pytest.raises(ValueError):
        fedavg([{"x": torch.zeros(1)}], [0.0])
