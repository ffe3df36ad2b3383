"""What a client sends up, and at which rank: compressed changes and heterogeneous LoRA ranks.

Compressed uploads (``fed.upload``). A client sends the CHANGE of its global adapter from the one
it received, not the adapter: ``float32`` sends the adapter itself as before; ``bfloat16`` the
change rounded to bfloat16 (2 bytes per value); ``int8`` the change quantized per tensor,
symmetrically: ``q = round(d / s)`` in [-127, 127] with ``s = max|d| / 127`` (1 byte per value plus
one float32 scale per tensor). With error feedback (Seide et al., Interspeech 2014; Karimireddy et
al., ICML 2019): what the rounding lost is kept in the client's private state
(:data:`RESIDUAL`) and added to its next change, so no part of an update is lost for good, only
delayed. The server checks a payload's names, shapes, dtypes and scales (:func:`payload_problem`)
before it decodes it (:func:`decode_upload`): ``global + dequantized change``.

Heterogeneous ranks (``lora.client_ranks``; a node's ``lora-rank``). The global adapter has rank
``lora.r``; a client of rank ``r_c`` receives it cut to its first ``r_c`` components
(:func:`narrow`: the first ``r_c`` rows of each LoRA A, columns of each LoRA B), trains it in a
rank-``lora.r`` slot whose other components are zero (:func:`widen`: zero rows of A and zero
columns of B get zero gradients, so they stay zero under AdamW and the adapter stays rank
``r_c``), and uploads it cut to ``r_c`` again. The server pads each upload with the global
adapter's own values above the client's rank (:func:`pad_change`): HetLoRA's truncation and
zero-padding (Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation
Models", EMNLP 2024), with the CHANGE zero-padded rather than the matrices, as HeteroFL does for
sub-models (Diao et al., ICLR 2021), so the components a client does not hold are not pulled
toward zero. Every adapter keeps the scaling ``lora.alpha / lora.r``: a client's adapter is the
global's first components at the same scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fedoa.model.adapters import AdapterState, state_bytes

FORMATS = ("float32", "bfloat16", "int8")
#: the private-state entry of a client that holds its quantization residual (error feedback)
RESIDUAL = "upload_residual"
#: the payload dtype of each compressed format
PAYLOAD_DTYPE = {"bfloat16": torch.bfloat16, "int8": torch.int8}
INT8_MAX = 127
MAX_SCALE = 1e30  # a scale beyond this is no honest client's


@dataclass
class Upload:
    """A compressed change: one tensor per adapter tensor (bfloat16 or int8), and for int8 the
    float32 scale of each."""

    format: str
    tensors: dict[str, torch.Tensor]
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return state_bytes(self.tensors) + 4 * len(self.scales)


# ---------------------------------------------------------------------------- compression


def _quantize(d: torch.Tensor, fmt: str) -> tuple[torch.Tensor, float, torch.Tensor]:
    """The payload tensor of change ``d`` (float64), its scale, and the change it decodes to."""
    if fmt == "bfloat16":
        q = d.to(torch.bfloat16)
        return q, 0.0, q.double()
    top = float(d.abs().max()) if d.numel() else 0.0
    # the scale travels as float32: the client computes its decoded change with that same float32
    scale = float(torch.tensor(top / INT8_MAX, dtype=torch.float32)) if math.isfinite(top) else math.nan
    if not scale or not math.isfinite(scale):  # all zero (nothing to say) or non-finite (rejected upstream)
        return torch.zeros(d.shape, dtype=torch.int8), scale, torch.zeros_like(d)
    q = torch.round(d / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale, q.double() * scale


def encode_change(state: AdapterState, reference: AdapterState, residual: AdapterState | None, fmt: str
                  ) -> tuple[Upload, AdapterState]:
    """``state - reference + residual`` compressed as ``fmt``, and the new residual (float32)."""
    tensors, scales, left = {}, {}, {}
    for k in sorted(reference):
        d = state[k].double() - reference[k].double()
        if residual is not None and k in residual and residual[k].shape == d.shape:
            d = d + residual[k].double()
        q, scale, back = _quantize(d, fmt)
        tensors[k] = q
        if fmt == "int8":
            scales[k] = scale
        left[k] = torch.nan_to_num(d - back).float()  # a NaN change is rejected; it must not stay behind
    return Upload(fmt, tensors, scales), left


def payload_problem(upload: Upload, reference: AdapterState, fmt: str) -> str:
    """What is wrong with a payload against the adapter its client received ("" when nothing):
    its format, names, shapes and dtypes, and for int8 one finite, non-negative scale per tensor.
    Nothing is decoded."""
    if not isinstance(upload, Upload) or upload.format != fmt:
        return f"the upload is not in format {fmt!r} (fed.upload)"
    names = set(upload.tensors)
    if names != set(reference):
        missing, extra = sorted(set(reference) - names), sorted(names - set(reference))
        return f"tensor names differ from the global adapter's (missing {missing[:2]}, unexpected {extra[:2]})"
    want = PAYLOAD_DTYPE[fmt]
    for k, ref in reference.items():
        t = upload.tensors[k]
        if not isinstance(t, torch.Tensor) or t.shape != ref.shape:
            return f"tensor {k} has shape {tuple(getattr(t, 'shape', ()))}, expected {tuple(ref.shape)}"
        if t.dtype != want:
            return f"tensor {k} has dtype {t.dtype}, expected {want}"
    if fmt == "int8":
        if set(upload.scales) != names:
            return "the int8 scales do not name exactly the upload's tensors"
        for k, s in upload.scales.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= MAX_SCALE:
                return f"tensor {k} has scale {str(s)[:40]}, not a finite number in [0, {MAX_SCALE:g}]"
    elif upload.scales:
        return f"a {fmt} upload has no scales"
    return ""


def decode_upload(upload: Upload, reference: AdapterState) -> AdapterState:
    """``reference + change`` in the reference's dtypes (after :func:`payload_problem` passed)."""
    out = {}
    for k, ref in reference.items():
        change = upload.tensors[k].double() * (upload.scales[k] if upload.format == "int8" else 1.0)
        out[k] = (ref.double() + change).to(ref.dtype)
    return out


# ---------------------------------------------------------------------------- heterogeneous ranks


def _is_a(key: str) -> bool:
    return ".lora_A." in key


def rank_of(state: AdapterState) -> int:
    """The LoRA rank of a state (rows of its A matrices)."""
    return next(t.shape[0] for k, t in state.items() if _is_a(k))


def narrow(state: AdapterState, rank: int) -> AdapterState:
    """The first ``rank`` components: A's first rows, B's first columns (the state itself at its own rank)."""
    if rank_of(state) == rank:
        return state
    return {k: (t[:rank] if _is_a(k) else t[:, :rank]).clone() for k, t in state.items()}


def widen(state: AdapterState, rank: int) -> AdapterState:
    """``state`` in a rank-``rank`` slot: the components above its own rank are zero."""
    own = rank_of(state)
    if own == rank:
        return state
    out = {}
    for k, t in state.items():
        shape = (rank, t.shape[1]) if _is_a(k) else (t.shape[0], rank)
        z = torch.zeros(shape, dtype=t.dtype)
        if _is_a(k):
            z[:own] = t
        else:
            z[:, :own] = t
        out[k] = z
    return out


def pad_change(state: AdapterState, global_state: AdapterState) -> AdapterState:
    """A client's rank-``r_c`` upload at the global adapter's rank: the global's own values above
    ``r_c`` (the change there is zero)."""
    own = rank_of(state)
    if own == rank_of(global_state):
        return state
    out = {}
    for k, g in global_state.items():
        t = g.clone()
        if _is_a(k):
            t[:own] = state[k]
        else:
            t[:, :own] = state[k]
        out[k] = t
    return out
