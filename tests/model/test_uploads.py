"""Compressed uploads and heterogeneous ranks, piece by piece (src/fedoa/model/uploads.py)."""
from __future__ import annotations

import math

import pytest
import torch

from fedoa.model.uploads import (
    Upload,
    decode_upload,
    encode_change,
    narrow,
    pad_change,
    payload_problem,
    rank_of,
    widen,
)

A, B = "m.q_proj.lora_A.weight", "m.q_proj.lora_B.weight"


def state(rank=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {A: torch.randn(rank, 6, generator=g) * scale, B: torch.randn(5, rank, generator=g) * scale}


def test_int8_is_a_quarter_of_the_bytes_and_each_value_is_within_half_a_step():
    ref, new = state(seed=0), state(seed=1)
    up, residual = encode_change(new, ref, None, "int8")
    assert {k: t.dtype for k, t in up.tensors.items()} == {A: torch.int8, B: torch.int8}
    assert up.nbytes == 4 * 6 + 5 * 4 + 4 * 2  # one byte per value, one float32 scale per tensor
    assert payload_problem(up, ref, "int8") == ""
    got = decode_upload(up, ref)
    for k in ref:
        step = up.scales[k]
        assert step == pytest.approx((new[k] - ref[k]).abs().max().item() / 127, rel=1e-6)
        assert (got[k] - new[k]).abs().max() <= step / 2 + 1e-6
        # what was lost is exactly what the client keeps for next time
        assert torch.allclose(got[k] + residual[k], new[k], atol=1e-6)


def test_bfloat16_is_half_the_bytes():
    ref, new = state(seed=0), state(seed=1)
    up, _ = encode_change(new, ref, None, "bfloat16")
    assert up.nbytes == 2 * (4 * 6 + 5 * 4) and not up.scales
    got = decode_upload(up, ref)
    assert all(torch.allclose(got[k], new[k], rtol=1e-2, atol=1e-2) for k in ref)


def test_error_feedback_keeps_the_sum_of_many_small_changes():
    """A change far below one int8 step is lost for good without error feedback; with it the
    decoded changes add up to the true sum (within one step)."""
    ref = state(seed=0)
    big = {A: torch.zeros(4, 6), B: torch.zeros(5, 4)}
    big[A][0, 0] = 1.0  # sets the step of tensor A to 1/127
    tiny = {k: torch.full_like(v, 1e-3) for k, v in ref.items()}
    rounds, residual, kept, dropped = 50, None, {k: torch.zeros_like(v, dtype=torch.float64) for k, v in ref.items()}, \
        {k: torch.zeros_like(v, dtype=torch.float64) for k, v in ref.items()}
    for _ in range(rounds):
        change = {k: big[k] + tiny[k] for k in ref}
        new = {k: ref[k] + change[k] for k in ref}
        up, residual = encode_change(new, ref, residual, "int8")
        plain, _ = encode_change(new, ref, None, "int8")
        for k in ref:
            kept[k] += decode_upload(up, ref)[k].double() - ref[k].double()
            dropped[k] += decode_upload(plain, ref)[k].double() - ref[k].double()
    want = rounds * 1e-3
    assert abs(kept[A][1, 1].item() - want) <= 1 / 127  # error feedback: within one step of the truth
    assert dropped[A][1, 1].item() == 0.0  # without it: 1e-3 < half a step, every round rounds it away


@pytest.mark.parametrize("tamper, reason", [
    (lambda u: setattr(u, "format", "bfloat16"), "not in format"),
    (lambda u: u.tensors.pop(B), "tensor names"),
    (lambda u: u.tensors.__setitem__("evil", torch.zeros(1, dtype=torch.int8)), "unexpected ['evil']"),
    (lambda u: u.tensors.__setitem__(A, torch.zeros(3, 6, dtype=torch.int8)), "shape"),
    (lambda u: u.tensors.__setitem__(A, torch.zeros(4, 6)), "dtype"),
    (lambda u: u.scales.__setitem__(A, math.nan), "scale nan"),
    (lambda u: u.scales.__setitem__(A, -1.0), "scale -1"),
    (lambda u: u.scales.__setitem__(A, math.inf), "scale inf"),
    (lambda u: u.scales.pop(A), "scales do not name"),
])
def test_a_malformed_int8_payload_is_named_before_anything_is_decoded(tamper, reason):
    ref = state(seed=0)
    up, _ = encode_change(state(seed=1), ref, None, "int8")
    tamper(up)
    assert reason in payload_problem(up, ref, "int8")


def test_a_non_finite_change_gives_a_rejected_scale_and_leaves_no_residual():
    ref = state(seed=0)
    bad = {k: torch.full_like(v, math.nan) for k, v in ref.items()}
    up, residual = encode_change(bad, ref, None, "int8")
    assert "scale nan" in payload_problem(up, ref, "int8")
    assert all(torch.isfinite(t).all() for t in residual.values())


def test_ranks_cut_widen_and_pad():
    g = state(rank=4, seed=0)
    cut = narrow(g, 2)
    assert rank_of(cut) == 2 and torch.equal(cut[A], g[A][:2]) and torch.equal(cut[B], g[B][:, :2])
    assert narrow(g, 4) is g and widen(g, 4) is g
    wide = widen(cut, 4)
    assert torch.equal(wide[A][:2], g[A][:2]) and not wide[A][2:].any() and not wide[B][:, 2:].any()
    # the server pads a rank-2 upload with the global's own values above rank 2: zero change there
    changed = {k: v + 1 for k, v in cut.items()}
    padded = pad_change(changed, g)
    assert torch.equal(padded[A][2:], g[A][2:]) and torch.equal(padded[B][:, 2:], g[B][:, 2:])
    assert torch.equal(padded[A][:2], g[A][:2] + 1)
    assert torch.equal(pad_change(cut, g)[A], g[A])


def test_zero_components_of_a_lora_slot_stay_zero_under_adamw():
    """Why a rank-r client can train in a rank-R slot: the rows of A and columns of B above r get
    zero gradients and stay exactly zero (also with weight decay)."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(widen({A: torch.randn(2, 6), B: torch.randn(5, 2)}, 4)[A])
    b = torch.nn.Parameter(widen({A: torch.randn(2, 6), B: torch.randn(5, 2)}, 4)[B])
    opt = torch.optim.AdamW([a, b], lr=0.1, weight_decay=0.1)
    for _ in range(20):
        x = torch.randn(8, 6)
        loss = ((x @ a.T @ b.T) - torch.randn(8, 5)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert a[:2].abs().sum() > 0 and not a[2:].any() and not b[:, 2:].any()


def test_upload_is_a_plain_dataclass_of_tensors():
    up = Upload("int8", {A: torch.zeros(2, 2, dtype=torch.int8)}, {A: 0.0})
    assert up.nbytes == 4 + 4
