"""The slot layer and the stacked optimizer of the batched engine, against PEFT and torch's AdamW."""
import torch

from fedoa.model.adapters import GLOBAL
from fedoa.model.slots import Routing, SlotBank, routed
from fedoa.training.joint import StackedAdamW


def trained_like(am, seed: int) -> dict:
    """A state with non-zero B (a fresh one's B is zero, which would hide a wrong B)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * (0.1 if ".lora_A." in k else 0.05)
            for k, v in am.fresh_state(seed).items()}


def test_each_row_group_gets_its_own_slot_like_peft_does(tiny):
    am, _ = tiny
    states = [trained_like(am, s) for s in range(3)]
    ids = torch.randint(5, 200, (4, 7))
    mask = torch.ones_like(ids)
    expected = []
    for slot in (2, 0):  # rows 0-1 on slot 2, rows 2-3 on slot 0
        am.set(GLOBAL, states[slot])
        am.use(GLOBAL)
        with torch.no_grad():
            expected.append(am.hidden(ids[:2] if slot == 2 else ids[2:], mask[:2]))
    bank = SlotBank(am, states, trainable=False)
    with torch.no_grad(), routed(am, bank, Routing(torch.tensor([2, 0]), rows=2)):
        got = am.hidden(ids, mask)
    assert torch.allclose(got, torch.cat(expected), atol=1e-5)
    with torch.no_grad():  # routing ends with the context: the PEFT slot is back
        assert torch.allclose(am.hidden(ids[2:], mask[2:]), expected[1], atol=1e-6)


def test_stacked_adamw_matches_torch_per_slot_and_a_masked_slot_does_not_move():
    torch.manual_seed(0)
    start = torch.randn(2, 3, 4)
    stacked = start.clone().requires_grad_(True)
    opt = StackedAdamW([stacked], weight_decay=0.01)
    ref = start[0].clone().requires_grad_(True)
    torch_opt = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.01)
    beta1, beta2 = 0.9, 0.999
    for t in (1, 2, 3):
        grad = torch.randn(2, 3, 4)
        stacked.grad = grad.clone()
        ref.grad = grad[0].clone()
        torch_opt.step()
        frozen = [stacked[1].detach().clone(), opt.exp_avg[0][1].clone(), opt.exp_avg_sq[0][1].clone()]
        opt.step(torch.tensor([True, False]), torch.tensor([0.1, 0.1]),
                 torch.tensor([0.1 / (1 - beta1 ** t)] * 2), torch.tensor([(1 - beta2 ** t) ** 0.5] * 2))
        assert torch.allclose(stacked[0], ref, atol=1e-6)
        # slot 1 had a gradient and (after t = 1) moments, yet nothing of it moved
        assert torch.equal(stacked[1], frozen[0]) and torch.equal(opt.exp_avg[0][1], frozen[1])
        assert torch.equal(opt.exp_avg_sq[0][1], frozen[2])
    assert torch.equal(stacked[1], start[1])
