"""Hard-parameter-sharing multi-task networks on sparse binary fingerprints.

f_i(x) = h_i(g(x)): a shared trunk g (one or two hidden layers, ReLU, dropout, no BatchNorm, so
that probe forwards such as TAG's lookahead never touch running statistics) and one logistic
head h_i per task. The first layer reads the sparse input directly: with about 50 of 2048 bits
set, x @ W1 is the sum of 50 rows of W1, which ``EmbeddingBag(mode="sum")`` computes without
densifying x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, CPU otherwise; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class SparseBatch:
    """A batch of sparse binary rows in EmbeddingBag form.

    ``indices``: int64 ``(nnz,)`` set-bit columns, concatenated row by row;
    ``offsets``: int64 ``(batch,)`` start of each row in ``indices``.
    """

    indices: torch.Tensor
    offsets: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.offsets.shape[0])

    @classmethod
    def from_csr(
        cls, X: sp.csr_matrix, rows: np.ndarray | None = None, device: torch.device | None = None
    ) -> SparseBatch:
        """Rows ``rows`` (default all) of a 0/1 CSR matrix."""
        sub = X if rows is None else X[rows]
        sub = sp.csr_matrix(sub)
        indices = torch.from_numpy(sub.indices.astype(np.int64))
        offsets = torch.from_numpy(sub.indptr[:-1].astype(np.int64))
        if device is not None:
            indices, offsets = indices.to(device), offsets.to(device)
        return cls(indices, offsets)

    def to_dense(self, n_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``(batch, n_features)`` 0/1 tensor (for tests and reference code)."""
        counts = torch.diff(
            torch.cat(
                [self.offsets, torch.tensor([self.indices.numel()], device=self.offsets.device)]
            )
        )
        row = torch.repeat_interleave(torch.arange(self.size, device=self.offsets.device), counts)
        out = torch.zeros(self.size, n_features, dtype=dtype, device=self.indices.device)
        out[row, self.indices] = 1
        return out


class MultiTaskNet(nn.Module):
    """Shared trunk + one logistic head per task.

    Parameters
    ----------
    n_features: input width (fingerprint bits).
    n_tasks: number of heads.
    hidden: widths of the trunk's hidden layers (one or two layers in the study).
    dropout: dropout after every hidden ReLU.
    """

    def __init__(
        self,
        n_features: int,
        n_tasks: int,
        *,
        hidden: Sequence[int] = (512,),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(hidden) < 1:
            raise ValueError("hidden must name at least one layer width")
        self.n_features = n_features
        self.n_tasks = n_tasks
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        # First layer as an EmbeddingBag: weight[f] is the row of W1 for input bit f.
        self.embed = nn.EmbeddingBag(n_features, self.hidden[0], mode="sum")
        self.bias0 = nn.Parameter(torch.empty(self.hidden[0]))
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(self.hidden[:-1], self.hidden[1:], strict=True)
        )
        self.head = nn.Linear(self.hidden[-1], n_tasks)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same distribution as nn.Linear(n_features, hidden[0]): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / np.sqrt(self.n_features)
        nn.init.uniform_(self.embed.weight, -bound, bound)
        nn.init.uniform_(self.bias0, -bound, bound)
        for layer in self.layers:
            layer.reset_parameters()
        self.head.reset_parameters()

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Parameters of the shared trunk g (what TAG perturbs)."""
        return [self.embed.weight, self.bias0, *[p for m in self.layers for p in m.parameters()]]

    def trunk(self, x: SparseBatch) -> torch.Tensor:
        """g(x): ``(batch, hidden[-1])``."""
        h = F.relu(self.embed(x.indices, x.offsets) + self.bias0)
        h = F.dropout(h, self.dropout, self.training)
        for layer in self.layers:
            h = F.dropout(F.relu(layer(h)), self.dropout, self.training)
        return h

    def forward(self, x: SparseBatch) -> torch.Tensor:
        """Logits ``(batch, n_tasks)``."""
        return self.head(self.trunk(x))


def masked_bce(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, per_task: bool = False
) -> torch.Tensor:
    """Binary cross-entropy over labelled pairs only.

    ``logits``, ``y``, ``mask``: ``(batch, n_tasks)``; ``mask`` is 1 where the pair is labelled.
    Returns the sum over tasks of each task's mean loss over its labelled pairs in the batch
    (a task with no labelled pair contributes 0), or the per-task vector ``(n_tasks,)`` when
    ``per_task``.
    """
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask
    per = loss.sum(0) / mask.sum(0).clamp_min(1)
    return per if per_task else per.sum()
