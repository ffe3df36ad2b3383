"""Pieces both transports share: a client's round (from the adapter it receives to what it sends),
the metrics line of a client update, which models are evaluated, and how a model is activated
for scoring."""
from __future__ import annotations

from fedoa.algorithms.base import Algorithm, ClientContext, ClientUpdate, Phase
from fedoa.config import RunConfig
from fedoa.kinds import ZERO_SHOT
from fedoa.model.adapters import AdapterState, state_bytes, state_digest
from fedoa.model.mixing import mixer_off
from fedoa.model.slots import SlotModel
from fedoa.model.uploads import RESIDUAL, encode_change, narrow, widen
from fedoa.runtime.trust import drill


#: the keys of a metrics line that the server writes; a client's metric of the same name is kept
#: as ``client.<name>`` and can never overwrite them
RESERVED = frozenset({"round", "client", "phase", "kind", "records", "steps", "examples", "seconds", "reused",
                      "update_norm", "accepted", "bytes"})


def phase_line(round_: int, client: str, ph: Phase) -> dict:
    """One line of ``metrics.jsonl``: a local training phase of a client update (the client's own
    metrics beside the server's keys, never over them)."""
    metrics = {(f"client.{k}" if k in RESERVED or k.startswith("client.") else k): v for k, v in ph.metrics.items()}
    return {
        **metrics, "round": round_, "client": client, "phase": ph.phase,
        "steps": ph.steps, "examples": ph.examples, "seconds": round(ph.seconds, 3),
        **({"reused": True} if ph.reused else {}),
    }


def eval_kinds(cfg: RunConfig, algo: Algorithm) -> list[str]:
    """The model kinds a run evaluates, in report order."""
    return list(algo.evaluated) + ([ZERO_SHOT] if cfg.eval.zero_shot else [])


def model_identity(algo: Algorithm, kind: str, client: str) -> str:
    """Models with the same identity are the same model and are evaluated once per test set."""
    return ZERO_SHOT if kind == ZERO_SHOT else algo.eval_identity(kind, client)


def batches_clients(cfg: RunConfig, device) -> bool:
    """``runtime.batch_clients`` resolved: 'auto' batches on CUDA only (on CPU training measured slower)."""
    mode = cfg.runtime.batch_clients
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def model_fingerprint(kind: str, global_state: AdapterState) -> str | None:
    """A name of a model's content for score caches (shared models only: the base model, a global adapter)."""
    if kind == ZERO_SHOT:
        return ZERO_SHOT
    return f"global:{state_digest(global_state)}" if kind == "global" else None


def activate_model(ctx: ClientContext, algo: Algorithm, kind: str, global_state: AdapterState) -> str | None:
    """Make ``kind`` (of the client of ``ctx``) the model that forward passes use; return its
    fingerprint for score caches."""
    if kind == ZERO_SHOT:
        mixer_off(ctx.am)
        ctx.am.use(None)
    else:
        algo.setup_eval(ctx, kind, global_state)
    return model_fingerprint(kind, global_state)


def describe_model(ctx: ClientContext, algo: Algorithm, kind: str,
                   global_state: AdapterState) -> tuple[SlotModel | None, str | None]:
    """``kind`` (of the client of ``ctx``) as slot adapters for batched evaluation (None: it must
    be activated and scored alone), and its fingerprint."""
    model = SlotModel(None) if kind == ZERO_SHOT else algo.eval_model(ctx, kind, global_state)
    return model, model_fingerprint(kind, global_state)


def client_rank(cfg: RunConfig, client: str) -> int:
    """A client's LoRA rank as the run's config declares it (``lora.client_ranks``, else ``lora.r``)."""
    return cfg.lora.client_ranks.get(client, cfg.lora.r)


def client_round(algo: Algorithm, ctx: ClientContext, received: AdapterState, round_: int, rank: int) -> ClientUpdate:
    """What a client does with the global adapter it received (cut to its ``rank``): the method's
    update in the model's rank-``lora.r`` slot (zero above ``rank``), then :func:`client_upload`."""
    start = widen(received, ctx.cfg.lora.r)
    return client_upload(ctx.cfg, ctx.name, ctx.state, algo.client_update(ctx, start, round_), received, rank)


def client_upload(cfg: RunConfig, client: str, private: dict, update: ClientUpdate, received: AdapterState,
                  rank: int) -> ClientUpdate:
    """What a client sends of its ``update``: the poisoning drill, the state cut to its ``rank`` and,
    with ``fed.upload`` other than float32, compressed as the change from ``received`` plus the
    residual kept in its ``private`` state from its last upload (error feedback)."""
    start = widen(received, cfg.lora.r)
    update = drill(cfg.attack, client, update, start)
    if update.state is None:
        return update
    update.state = narrow(update.state, rank)
    if cfg.fed.upload != "float32":
        update.upload, private[RESIDUAL] = encode_change(update.state, received, private.get(RESIDUAL), cfg.fed.upload)
        update.state = None
    return update


def upload_bytes(update: ClientUpdate) -> int:
    """Bytes of what a client sent up: its compressed payload, else its adapter state."""
    if update.upload is not None:
        return update.upload.nbytes
    return state_bytes(update.state) if update.state is not None else 0
