"""DPTNet, the dual-path transformer network (Chen, Mao & Liu 2020), lesson ``04_convtasnet_dptnet``.

A learned encoder (``enc_dim`` filters of ``window`` samples, stride ``window/2``, ReLU) feeds gLN and a
1x1 projection to ``feature_dim`` channels. The frame sequence is cut into 50 %-overlapping chunks of
``chunk_size`` frames; each of ``layers`` dual-path layers runs an *improved transformer* along each chunk
(intra) and then across chunks (inter). The improved transformer replaces the feed-forward block by a
BiLSTM (``hidden_dim`` per direction) + ReLU + Linear and has no positional encoding. A gated 1x1 output
and a 1x1 conv to ``enc_dim`` give the real mask. Attention and BiLSTMs see the whole input: non-causal.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from selib.models.base import SEModel
from selib.models.blocks import GlobalLayerNorm, WaveCodec, chunk, mask_activation, overlap_add, rnn_sequence


class ImprovedTransformer(nn.Module):
    """Post-norm transformer layer whose feed-forward block is BiLSTM -> ReLU -> Linear; ``[N, L, d]``."""

    def __init__(self, d_model: int, hidden: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"feature_dim {d_model} must be divisible by the number of heads {heads}")
        self.attention = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.lstm = nn.LSTM(d_model, hidden, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(2 * hidden, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, x, x, need_weights=False)[0])
        return self.norm2(x + self.linear(F.relu(rnn_sequence(self.lstm, x))))


class DPTNet(SEModel):
    """DPTNet with one output source; see the module docstring for the hyper-parameters.

    ``return_features=True`` adds the taps for feature distillation, all ``[B, C, frames, 1]``:
    ``encoder`` = [encoder output (enc_dim), projection (feature_dim)], ``middle`` = [output of each
    dual-path layer, chunks overlap-added back to frames (feature_dim)], ``decoder`` = [mask (enc_dim),
    masked representation (enc_dim)].
    """

    def __init__(self, enc_dim: int = 256, feature_dim: int = 64, hidden_dim: int = 128, layers: int = 6,
                 heads: int = 4, window: int = 2, chunk_size: int = 250, mask: str = "relu"):
        super().__init__()
        self.chunk_size = chunk_size
        self.codec = WaveCodec(enc_dim, window, relu=True)
        self.enc_norm = GlobalLayerNorm(enc_dim)
        self.bottleneck = nn.Conv1d(enc_dim, feature_dim, 1, bias=False)
        self.intra = nn.ModuleList(ImprovedTransformer(feature_dim, hidden_dim, heads) for _ in range(layers))
        self.inter = nn.ModuleList(ImprovedTransformer(feature_dim, hidden_dim, heads) for _ in range(layers))
        self.chunk_output = nn.Sequential(nn.PReLU(), nn.Conv2d(feature_dim, feature_dim, 1))
        self.output_tanh = nn.Conv1d(feature_dim, feature_dim, 1)
        self.output_gate = nn.Conv1d(feature_dim, feature_dim, 1)
        self.mask_conv = nn.Conv1d(feature_dim, enc_dim, 1, bias=False)
        self.mask = mask_activation(mask)

    def forward(self, noisy: torch.Tensor, return_features: bool = False):
        enc = self.codec.encode(noisy)
        projected = self.bottleneck(self.enc_norm(enc))
        frames = projected.shape[-1]
        x = chunk(projected, self.chunk_size)  # [B, F, K, S]
        batch, features, size, n_chunks = x.shape
        layers = []
        for intra, inter in zip(self.intra, self.inter):
            rows = x.permute(0, 3, 2, 1).reshape(batch * n_chunks, size, features)
            x = intra(rows).view(batch, n_chunks, size, features).permute(0, 3, 2, 1)
            cols = x.permute(0, 2, 3, 1).reshape(batch * size, n_chunks, features)
            x = inter(cols).view(batch, size, n_chunks, features).permute(0, 3, 1, 2)
            if return_features:
                layers.append(overlap_add(x, frames))
        y = overlap_add(self.chunk_output(x), frames)
        y = torch.tanh(self.output_tanh(y)) * torch.sigmoid(self.output_gate(y))
        mask = self.mask(self.mask_conv(y))
        masked = enc * mask
        enhanced = self.codec.decode(masked, noisy.shape[-1])
        if not return_features:
            return enhanced
        stages = {"encoder": [enc, projected], "middle": layers, "decoder": [mask, masked]}
        return enhanced, {stage: [f.unsqueeze(-1) for f in feats] for stage, feats in stages.items()}


MODEL = DPTNet
PRESETS = {
    "paper-teacher": dict(enc_dim=256, feature_dim=64, hidden_dim=128, layers=6, heads=4, window=2,
                          chunk_size=250),
    "paper-student": dict(enc_dim=128, feature_dim=32, hidden_dim=64, layers=6, heads=4, window=2,
                          chunk_size=250),
    "tiny-teacher": dict(enc_dim=64, feature_dim=32, hidden_dim=64, layers=2, heads=4, window=16,
                         chunk_size=100),
    "tiny-student": dict(enc_dim=32, feature_dim=16, hidden_dim=32, layers=2, heads=4, window=16,
                         chunk_size=100),
}
