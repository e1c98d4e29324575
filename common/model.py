"""Base model loading and the LoRA adapter that travels between sites and coordinator.

The adapter state is the set of trainable tensors of the PEFT model: the LoRA A/B matrices of
the target modules and the classification head (saved as a PEFT ``modules_to_save`` module).
The base model's weights never change and never travel.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from common.config import FedsiloConfig
from common.offline_model import resolve_model_source

log = logging.getLogger(__name__)

AdapterState = dict[str, np.ndarray]
LABELS_FILE = "fedsilo_labels.json"


@dataclass
class SiteModel:
    """A loaded base model with its LoRA adapter, kept warm across rounds."""

    model: PeftModel
    tokenizer: object
    labels: list[str]
    source: str

    def adapter_state(self) -> AdapterState:
        return adapter_state(self.model)

    def load_adapter_state(self, state: AdapterState) -> None:
        load_adapter_state(self.model, state)


def quiet_transformers() -> None:
    """Keep weight-loading reports and progress bars out of a site's console."""
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def lora_config(cfg: FedsiloConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )


def build_site_model(
    cfg: FedsiloConfig, labels: list[str], source: str | Path | None = None
) -> SiteModel:
    """Load the base model (hub, local folder or offline conversion) and wrap it in LoRA.

    ``source``: an already resolved model folder. The adapter is initialised from
    ``cfg.seed``, so every process that builds it starts from the same tensors.
    """
    quiet_transformers()
    if source is None:
        source = resolve_model_source(cfg.model.name, cfg.model.source)
    tokenizer = AutoTokenizer.from_pretrained(str(source))

    torch.manual_seed(cfg.seed)
    base = AutoModelForSequenceClassification.from_pretrained(
        str(source),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        dtype=torch.float32,
    )
    try:
        model = get_peft_model(base, lora_config(cfg))
    except ValueError as exc:
        raise ValueError(
            f"lora.target_modules={cfg.lora.target_modules} does not fit {cfg.model.name}: "
            f"{exc}"
        ) from exc
    model.to(pick_device(cfg.train.device)).eval()
    return SiteModel(model=model, tokenizer=tokenizer, labels=list(labels), source=str(source))


def classification_head(model: torch.nn.Module) -> torch.nn.Module:
    """The trained copy of the classification head inside a PEFT model (``modules_to_save``)."""
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and name.split(".")[-1] == "classifier":
            return module.modules_to_save[module.active_adapters[0]]
    raise ValueError("the model has no trainable 'classifier' head")


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but torch sees no CUDA device; install the CUDA "
                         "build of torch or set train.device=cpu")
    return torch.device(setting)


def adapter_state(model: torch.nn.Module) -> AdapterState:
    """The trainable tensors (LoRA matrices and head), as float32 numpy copies."""
    return {
        name: param.detach().to(torch.float32).cpu().numpy().copy()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_adapter_state(model: torch.nn.Module, state: AdapterState) -> None:
    """Copy ``state`` into the model's trainable tensors; names and shapes must match."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"adapter does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = torch.from_numpy(np.asarray(state[name]))
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"adapter tensor {name}: shape {tuple(value.shape)}, "
                    f"model expects {tuple(param.shape)}"
                )
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def save_adapter(site_model: SiteModel, state: AdapterState, dest: Path, base_name: str) -> Path:
    """Write ``state`` as a standard PEFT adapter folder loadable by PeftModel.from_pretrained."""
    site_model.load_adapter_state(state)
    dest.mkdir(parents=True, exist_ok=True)
    site_model.model.peft_config["default"].base_model_name_or_path = base_name
    site_model.model.save_pretrained(str(dest), save_embedding_layers=False)
    (dest / LABELS_FILE).write_text(json.dumps(site_model.labels, ensure_ascii=False, indent=1))
    return dest


def load_for_inference(adapter_dir: Path, base: str | Path) -> tuple[PeftModel, object, list]:
    """Load a saved global adapter on its base model, ready to classify."""
    labels_path = Path(adapter_dir) / LABELS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(
            f"{adapter_dir}: not a fedsilo adapter folder (no {LABELS_FILE}); give a run's "
            "global/ folder"
        )
    quiet_transformers()
    labels = json.loads(labels_path.read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=len(labels), dtype=torch.float32
    )
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer, labels
