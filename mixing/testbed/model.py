"""A small decoder-only transformer (GPT-style) in plain torch: the reference trainer's model.

Pre-LN blocks (x + attn(LN(x)), x + mlp(LN(x))), causal self-attention through
``torch.nn.functional.scaled_dot_product_attention``, learned absolute positions, a final
LayerNorm, and an output layer tied to the input embedding. No dropout by default, so a run
is a deterministic function of its seed. Token id 0 is padding (``PAD``): ``lm_loss`` ignores
targets equal to it.

Sizes. With the trainer's defaults (vocab 4,096 pieces + the specials, d_model 128, 4 layers,
context 64) the model has 1.33M parameters, 0.52M of them in the tied embedding. The output
softmax over the vocabulary, not the blocks, dominates the cost of a model this narrow, which is
why the trainer keeps the vocabulary compact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgamix.mixing.loss import PAD, lm_loss, lm_loss_sum  # noqa: F401 - the model's loss, kept in the engine


@dataclass
class ModelConfig:
    """Shape of the model. vocab: token ids 0..vocab-1 (0 = pad); context: tokens per sequence
    the model sees (positions); d_model: width; n_head must divide d_model; mlp: hidden width
    = mlp_ratio * d_model; dropout: 0 keeps runs deterministic."""

    vocab: int
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    context: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"vocab must be >= 2 (pad + at least one token), got {self.vocab}")
        if self.d_model % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide d_model ({self.d_model})")
        for k in ("d_model", "n_layer", "n_head", "context", "mlp_ratio"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TinyGPT(nn.Module):
    """tokens (B, T) int64, T <= context -> logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.config.context:
            raise ValueError(f"sequence of {t} tokens exceeds the model's context {self.config.context}")
        x = self.drop(self.tok(tokens) + self.pos.weight[:t])
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T  # tied output layer

    def n_params(self) -> int:
        """Number of parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())
