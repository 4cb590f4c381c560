"""The typed schema of the composed config, and the checks a type alone cannot express.

Hydra composes `conf/config.yaml` on top of `TrainConfig` (registered as `base_config`), so
`d_model=abc` fails at compose time with the key's name. `validate()` adds the checks that
relate values (d_model % num_heads) or ranges (dropout in [0, 1)), before any work is done; a new
check on a value goes there, raising UserError (one line naming the key, exit code 2).

The hyperparameters sit flat at the root under the book's names; tooling settings that are
not hyperparameters live in nested nodes (`wandb.*`) or are listed in `NOT_H_PARAMS`.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import MISSING as DATACLASS_MISSING
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from trainer.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum with one member per value, named as it: the values a key may take, checked by
    Hydra when it composes the config (a wrong one fails there, naming the key and the choices)."""
    return Enum(name, [(v, v) for v in values], type=str, module=__name__)


Device = choices("Device", "auto", "cpu", "cuda", "mps")
LRSchedule = choices("LRSchedule", "constant", "cosine")
# The model's architecture (trainer.model): the first value of each is the book's.
Activation = choices("Activation", "relu", "gelu", "gelu_tanh", "swiglu")
Norm = choices("Norm", "layernorm", "rmsnorm")
Positions = choices("Positions", "sinusoidal", "learned", "rope")
Init = choices("Init", "pytorch", "scaled")
WeightDecayOn = choices("WeightDecayOn", "all", "matrices")
# The corpus (trainer.data.sources)
Format = choices("Format", "text", "csv", "jsonl", "parquet", "hf")
DocumentSeparator = choices("DocumentSeparator", "newline", "eot", "none")


class Dtype(str, Enum):
    auto = "auto"  # bf16 autocast where the hardware has bf16 (CUDA; CPUs with AVX512-BF16/AMX), else float32
    float32 = "float32"
    bfloat16 = "bfloat16"


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "gpt-trainer"
    entity: Optional[str] = None
    # online | offline | disabled; null = online when logged in (or WANDB_API_KEY set), else offline
    mode: Optional[str] = None
    group: Optional[str] = None  # null = the sweep's dir name, so one sweep is one group
    name: Optional[str] = None  # null = the job's overrides, e.g. "learning_rate=0.0003"
    tags: list[str] = field(default_factory=list)
    # samples and checkpoints in W&B (trainer.samples)
    samples: int = 2  # generations from fixed valid-split prompts at each eval, into a W&B Table and samples.md; 0 = off
    log_checkpoints: bool = False  # upload model.ckpt (alias latest) and best.ckpt (alias best) as an artifact at the end


@dataclass
class TrainConfig:
    # model (conf/model/*)
    d_model: int = 80
    num_blocks: int = 6
    num_heads: int = 4
    context_length: int = 128
    dropout: float = 0.1
    tie_weights: bool = False  # the head shares the token embedding's matrix
    # architecture variants (defaults: the book's model; trainer.model.ARCH_DEFAULTS for checkpoints without them)
    activation: Activation = Activation.relu  # the feed-forward's: relu | gelu | gelu_tanh (GPT-2's) | swiglu
    norm: Norm = Norm.layernorm  # layernorm | rmsnorm
    positions: Positions = Positions.sinusoidal  # sinusoidal (added) | learned (added) | rope (rotates q and k)
    init: Init = Init.pytorch  # pytorch (torch's module defaults) | scaled (GPT-2's N(0, 0.02))
    bias: bool = True  # biases in the Linears and norms; false: none anywhere (qkv and head included)
    qkv_bias: bool = False  # a bias in the fused q, k, v projection (GPT-2's; the book's has none)
    head_bias: bool = True  # a bias in the output head (the book's; GPT-2's has none)
    init_from: Optional[str] = None  # a transformers GPT-2 dir (or hub name) to start from (trainer.init_from)
    # optimizer (conf/optimizer/*)
    optimizer: str = "adamw"  # a name in trainer.optim.OPTIMIZERS (conf/optimizer/<name>.yaml sets it)
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    weight_decay_on: WeightDecayOn = WeightDecayOn.all  # all parameters, or only matrices (2-D: Linears, embeddings)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    lr_schedule: LRSchedule = LRSchedule.constant
    warmup_iters: int = 0
    min_lr: float = 0.0
    grad_clip: float = 0.0  # 0 = no clipping
    gradient_accumulation_steps: int = 1  # effective batch = batch_size x this x world_size (torchrun ranks)
    # data (conf/data/*)
    data_path: Optional[str] = MISSING  # a file, a dir (every file under it) or a glob; null = the synthetic corpus
    # text | csv | jsonl | parquet | hf; null = csv when text_column is set, else the file raw (as the book)
    format: Optional[Format] = None
    text_column: Optional[str] = None  # csv, parquet, hf: the column; jsonl: the field
    document_separator: Optional[DocumentSeparator] = None  # after each document; null = none for text, else newline
    hf_split: str = "train"  # format=hf: the dataset's split
    hf_config: Optional[str] = None  # format=hf: the dataset's config (subset) name
    train_split: float = 0.9
    encoding: str = "cl100k_base"
    vocab_compaction: bool = True  # train over only the token ids present in the corpus
    # training loop (the book's defaults)
    batch_size: int = 2
    max_iters: int = 500
    eval_interval: int = 50
    eval_iters: int = 10  # each eval averages over this many effective batches of fixed windows
    eval_seed: int = 1337  # draws those windows: the same for every run of a sweep, whatever its TORCH_SEED
    final_eval_windows: int = 1024  # the final eval's valid windows, evenly spaced over the split; 0 = every one
    TORCH_SEED: int = 1337
    # device (conf/device/*)
    device: Device = Device.auto
    dtype: Dtype = Dtype.auto
    compile: bool = False
    num_threads: int = 0  # CPU threads for torch; 0 = the cores shared by the parallel jobs, one left free
    # budgets and early stopping (0 = off): stop cleanly, evaluated and saved, where the first runs out
    max_time: float = 0.0  # seconds of training, the resumed parts of the run included
    max_tokens: int = 0  # training tokens, all ranks (never more: stops before the step that would pass it)
    early_stopping_patience: int = 0  # stop after this many evals in a row without a better valid loss
    # run management (not hyperparameters)
    checkpoint_interval: int = 0  # 0 = at every eval
    resume: Optional[str] = None  # a run dir, a checkpoint file, or "auto"
    progress: Optional[bool] = None  # null = a progress bar when attached to a terminal
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # sweep preview (trainer.plan)
    plan: bool = False  # print each job's size, FLOPs and estimated time, then exit without training
    prepare: bool = False  # tokenize the corpus into the cache, then exit (python -m trainer.prepare)


# Root keys that steer the tooling, not the model or its training: kept out of h_params.
NOT_H_PARAMS = frozenset({"resume", "progress", "checkpoint_interval", "wandb", "num_threads", "plan", "prepare"})


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=TrainConfig)


def plain(value: Any) -> Any:
    """A config value without its Enum wrapper: cfg.device is Device.cpu, plain(cfg.device) is "cpu"."""
    return value.value if isinstance(value, Enum) else value


@functools.cache
def schema_defaults() -> dict[str, Any]:
    """TrainConfig's root keys that have a default, each at it, plain ("relu", not Activation.relu)."""
    return {f.name: plain(f.default) for f in fields(TrainConfig) if f.default not in (DATACLASS_MISSING, MISSING)}


def schema_default(key: str) -> Any:
    """TrainConfig's default for a root key; None where it has none."""
    return schema_defaults().get(key)


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a run's config.yaml, a checkpoint's) with the root keys added to the schema
    since it was written, at their defaults: a run made before `activation` existed was a relu run."""
    return {**schema_defaults(), **saved}


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys: {"wandb": {"mode": x}} -> {"wandb.mode": x}."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def h_params_of(cfg: DictConfig) -> dict[str, Any]:
    """The flat dict of hyperparameters, resolved, under the book's names."""
    root = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return {k: plain(v) for k, v in root.items() if k not in NOT_H_PARAMS and k != "hydra"}


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first bad key; the types were checked at compose time."""

    refuse_unknown_keys(cfg)
    if OmegaConf.is_missing(cfg, "data_path"):
        raise UserError("data_path: missing: data=text needs a file, e.g. data=text data_path=corpus.txt")

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(f"{key}={plain(OmegaConf.select(cfg, key))}: {what}")

    for key in ("d_model", "num_blocks", "num_heads", "context_length", "batch_size", "max_iters",
                "eval_interval", "eval_iters", "gradient_accumulation_steps"):
        need(cfg[key] > 0, key, "must be a positive integer")
    for key in ("warmup_iters", "checkpoint_interval", "num_threads", "max_tokens", "early_stopping_patience",
                "final_eval_windows"):
        need(cfg[key] >= 0, key, "must be zero or a positive integer")
    need(cfg.max_time >= 0, "max_time", "must be zero (no time budget) or a positive number of seconds")
    need(cfg.d_model % cfg.num_heads == 0, "d_model",
         f"must be divisible by num_heads={cfg.num_heads}")
    need(0.0 <= cfg.dropout < 1.0, "dropout", "must be in [0, 1)")
    head_size = cfg.d_model // cfg.num_heads
    need(plain(cfg.positions) != "rope" or head_size % 2 == 0, "positions",
         f"needs an even head size, d_model/num_heads = {head_size}")  # it rotates channels in pairs
    need(cfg.learning_rate > 0, "learning_rate", "must be positive")
    need(0.0 <= cfg.min_lr <= cfg.learning_rate, "min_lr", "must be in [0, learning_rate]")
    need(cfg.weight_decay >= 0, "weight_decay", "must be zero or positive")
    need(0.0 <= cfg.beta1 < 1.0, "beta1", "must be in [0, 1)")
    need(0.0 <= cfg.beta2 < 1.0, "beta2", "must be in [0, 1)")
    need(cfg.eps > 0, "eps", "must be positive")
    need(0.0 <= cfg.momentum < 1.0, "momentum", "must be in [0, 1)")
    from trainer.optim import OPTIMIZERS  # torch's optimizers: imported only once a run is checked

    need(cfg.optimizer in OPTIMIZERS, "optimizer", f"not a registered optimizer ({', '.join(OPTIMIZERS)})")
    need(cfg.grad_clip >= 0, "grad_clip", "must be zero (off) or positive")
    need(0.0 < cfg.train_split < 1.0, "train_split", "must be between 0 and 1")
    validate_data(cfg)
    need(cfg.warmup_iters <= cfg.max_iters, "warmup_iters", f"must not exceed max_iters={cfg.max_iters}")
    need(cfg.wandb.samples >= 0, "wandb.samples", "must be zero (off) or a positive number of prompts")
    mode = cfg.wandb.mode
    need(mode in (None, "online", "offline", "disabled"), "wandb.mode",
         "must be online, offline, disabled or null")


def validate_data(cfg: DictConfig) -> None:
    """The data keys that only make sense together (the files themselves are checked as they are read)."""
    fmt = plain(cfg.format)
    if fmt in ("csv", "parquet", "jsonl", "hf") and not cfg.text_column:
        raise UserError(f"text_column: missing: format={fmt} reads one column (or field), e.g. text_column=text")
    if fmt == "text" and cfg.text_column:
        raise UserError(f"text_column={cfg.text_column}: format=text reads the file raw; for a CSV column use data=csv")
    if cfg.data_path is None and fmt not in (None, "text"):
        raise UserError(f"format={fmt}: needs data_path (the synthetic corpus is generated text)")


# unknown keys: `+key=value` adds a key even to the typed schema (Hydra opens the struct for
# appends), so a typo would train silently and be stored in config.yaml and W&B.
def refuse_unknown_keys(cfg: DictConfig, schema: type = TrainConfig, prefix: str = "") -> None:
    """UserError for the first key the schema (TrainConfig, and its nested dataclasses) does not know."""
    known = {f.name: f for f in fields(schema)}
    for key in cfg.keys():
        name = f"{prefix}{key}"
        if name == "hydra":
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise UserError(f"{name}: no such key{hint}")
        factory = known[key].default_factory
        sub = factory() if callable(factory) else None  # a nested node's schema (WandbConfig)
        if is_dataclass(sub) and isinstance(cfg[key], DictConfig):
            refuse_unknown_keys(cfg[key], type(sub), f"{name}.")
