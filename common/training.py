"""Local training and evaluation of a site's LoRA model on its own silo."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

# Called after every batch: (epoch index from 0, batches done in the epoch, batches per epoch).
StepCallback = Callable[[int, int, int], None]


@dataclass
class EncodedSplit:
    """Token ids of a split, tokenized once and kept for every round."""

    input_ids: list[list[int]]
    labels: np.ndarray
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_split(
    tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int
) -> EncodedSplit:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return EncodedSplit(
        input_ids=[list(row) for row in ids],
        labels=np.asarray(labels, dtype=np.int64),
        pad_id=int(tokenizer.pad_token_id),
    )


def concat_splits(splits: Sequence[EncodedSplit]) -> EncodedSplit:
    return EncodedSplit(
        input_ids=[row for split in splits for row in split.input_ids],
        labels=np.concatenate([split.labels for split in splits]),
        pad_id=splits[0].pad_id,
    )


def _batches(data: EncodedSplit, batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Index batches of similar length (little padding); shuffled when ``rng`` is given."""
    order = list(range(len(data)))
    if rng is not None:
        rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(data.input_ids[i]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _collate(
    data: EncodedSplit, batch: list[int], device: torch.device
) -> dict[str, torch.Tensor]:
    width = max(len(data.input_ids[i]) for i in batch)
    ids = torch.full((len(batch), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_local(
    model: torch.nn.Module,
    data: EncodedSplit,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    on_step: StepCallback | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train the model's trainable tensors for ``epochs`` on ``data``; seeded and repeatable."""
    if len(data) == 0:
        raise ValueError("no training examples")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()

    device = _device(model)
    model.train()
    started = time.perf_counter()
    total_loss, seen = 0.0, 0
    try:
        for epoch in range(epochs):
            batches = _batches(data, batch_size, rng)
            for step, batch in enumerate(batches, start=1):
                inputs = _collate(data, batch, device)
                targets = torch.from_numpy(data.labels[batch]).to(device)
                loss = loss_fn(model(**inputs).logits, targets)
                if extra_loss is not None:
                    loss = loss + extra_loss()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not math.isfinite(loss.item()):
                    raise FloatingPointError("training loss is not finite; lower the learning rate")
                total_loss += loss.item() * len(batch)
                seen += len(batch)
                if on_step is not None:
                    on_step(epoch, step, len(batches))
    finally:
        model.eval()
    return {
        "train_loss": total_loss / seen,
        "num_examples": float(len(data)),
        "train_time_s": time.perf_counter() - started,
    }


def proximal_term(model: torch.nn.Module, mu: float) -> Callable[[], torch.Tensor]:
    """(mu / 2) * squared distance of the trainable tensors from their values now (FedProx)."""
    anchors = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def term() -> torch.Tensor:
        return (mu / 2) * sum(torch.sum((p - anchor) ** 2) for p, anchor in anchors)

    return term


@torch.no_grad()
def predict(model: torch.nn.Module, data: EncodedSplit, batch_size: int) -> np.ndarray:
    model.eval()
    device = _device(model)
    predictions = np.empty(len(data), dtype=np.int64)
    for batch in _batches(data, batch_size, rng=None):
        logits = model(**_collate(data, batch, device)).logits
        predictions[batch] = logits.argmax(dim=-1).cpu().numpy()
    return predictions


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean F1 over the labels present in ``truth`` or ``predicted``."""
    scores = []
    for label in np.union1d(truth, predicted):
        tp = np.sum((predicted == label) & (truth == label))
        fp = np.sum((predicted == label) & (truth != label))
        fn = np.sum((predicted != label) & (truth == label))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def evaluate(model: torch.nn.Module, data: EncodedSplit, batch_size: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the model on ``data``."""
    if len(data) == 0:
        raise ValueError("no evaluation examples")
    predicted = predict(model, data, batch_size)
    return {
        "accuracy": float(np.mean(predicted == data.labels)),
        "macro_f1": macro_f1(data.labels, predicted),
        "num_examples": float(len(data)),
    }


# ------------------------------------------------------------------------------------------
# A site's own classification head on the global model's features
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def head_features(
    model: torch.nn.Module, head: torch.nn.Module, data: EncodedSplit, batch_size: int
) -> torch.Tensor:
    """What ``head`` (the model's classification head) receives for every row of ``data``.

    A head that reads a sequence is assumed to look at its first token (the <s>/[CLS]
    position, as the RoBERTa and BERT heads do): only that position is kept, and the first
    batch checks that the head's output on it equals the model's logits.
    """
    model.eval()
    device = _device(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    features: torch.Tensor | None = None
    try:
        for batch in _batches(data, batch_size, rng=None):
            captured.clear()
            logits = model(**_collate(data, batch, device)).logits
            seen = captured[-1]
            if seen.dim() == 3:
                if features is None and not torch.allclose(
                    head(seen[:, :1]), logits, atol=1e-5, rtol=1e-4
                ):
                    raise ValueError("the classification head reads more than the first "
                                     "token; set personalize.head_epochs=0 for this model")
                seen = seen[:, :1]
            if features is None:
                features = torch.empty((len(data), *seen.shape[1:]), dtype=seen.dtype,
                                       device=device)
            features[batch] = seen
    finally:
        hook.remove()
    if features is None:
        raise ValueError("no examples")
    return features


def train_head(
    head: torch.nn.Module,
    features: torch.Tensor,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
) -> dict[str, float]:
    """Train ``head`` alone on fixed ``features``; seeded and repeatable."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    targets = torch.from_numpy(labels).to(features.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    total_loss, seen = 0.0, 0
    head.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator).to(features.device)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                loss = loss_fn(head(features[rows]), targets[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(rows)
                seen += len(rows)
    finally:
        head.eval()
    return {
        "train_loss": total_loss / max(seen, 1),
        "num_examples": float(len(targets)),
        "train_time_s": time.perf_counter() - started,
    }


@torch.no_grad()
def evaluate_head(
    head: torch.nn.Module, features: torch.Tensor, labels: np.ndarray
) -> dict[str, float]:
    """Accuracy and macro-F1 of ``head`` on precomputed ``features``."""
    head.eval()
    predicted = head(features).argmax(dim=-1).cpu().numpy()
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "macro_f1": macro_f1(labels, predicted),
        "num_examples": float(len(labels)),
    }
