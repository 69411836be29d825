"""Causal DPDCRN streamed one STFT frame at a time (lesson ``11_results_and_deployment``)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from selib.models.blocks import CumulativeLayerNorm
from selib.models.complex import apply_mask
from selib.streaming.engine import NormStep, STFTStreamer


class DPDCRNStreamer(STFTStreamer):
    """Causal DPDCRN (``causal=True``), one STFT frame per step, with no delay: it carries the cumulative
    norms' running sums, each dilated convolution's past input frames, and per time-path layer the
    attention's keys and values of every past frame and the GRU state. Attention over the whole past
    makes a step's cost grow with the time streamed."""

    def __init__(self, model):
        if not model.causal:
            raise ValueError("this DPDCRN is not causal (attention over the whole utterance, instance norm); "
                             "stream a model built with causal=True")
        super().__init__(model)
        self.norms = {}  # each cumulative norm -> its NormStep
        self.history = {}  # dilated conv layer -> its last input frames
        layers = len(model.middle.time_paths)
        self.keys, self.values, self.gru_states = [None] * layers, [None] * layers, [None] * layers

    def _norm(self, norm: CumulativeLayerNorm, x: torch.Tensor) -> torch.Tensor:
        if norm not in self.norms:
            self.norms[norm] = NormStep(norm)
        return self.norms[norm](x)

    def _block(self, block: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        conv, norm, act = block
        return act(self._norm(norm, conv(x)))

    def _dense(self, net, x: torch.Tensor) -> torch.Tensor:
        """One frame ``[B, C, 1, F]`` through a dilated dense block; layer ``i`` keeps ``2 ** i`` past frames."""
        for i, layer in enumerate(net.layers):
            past = self.history.get(layer)
            if past is None:
                past = x.new_zeros(x.shape[0], x.shape[1], 2 ** i, x.shape[3])
            window = torch.cat([past, x], 2)
            self.history[layer] = window[:, :, 1:]
            out = self._block(layer, F.pad(window, (1, 1)))
            x = torch.cat([out, x], 1)
        return out

    def _time_path(self, i: int, layer, x: torch.Tensor) -> torch.Tensor:
        """Time-path layer ``i`` on one frame ``[N, 1, d]``: attention of this frame over every frame so far."""
        attention = layer.attention
        query, key, value = F.linear(layer.norm_in(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
        if self.keys[i] is not None:
            key, value = torch.cat([self.keys[i], key], 1), torch.cat([self.values[i], value], 1)
        self.keys[i], self.values[i] = key, value
        heads = lambda z: z.unflatten(-1, (attention.num_heads, -1)).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(heads(query), heads(key), heads(value))
        x = layer.norm_attn(x + attention.out_proj(attended.transpose(1, 2).flatten(2)))
        hidden, self.gru_states[i] = layer.gru(x, self.gru_states[i])
        return layer.norm_out(x + layer.linear(F.relu(hidden)))

    def _middle(self, x: torch.Tensor) -> torch.Tensor:
        middle = self.model.middle
        x = middle.input(x)
        batch, channels, _, bins = x.shape
        for i, (freq, time, freq_norm, time_norm) in enumerate(zip(
                middle.freq_paths, middle.time_paths, middle.freq_norms, middle.time_norms)):
            rows = freq(x.permute(0, 2, 3, 1).reshape(batch, bins, channels))
            rows = rows.reshape(batch, 1, bins, channels).permute(0, 3, 1, 2)
            cols = self._time_path(i, time, x.permute(0, 3, 2, 1).reshape(batch * bins, 1, channels))
            cols = cols.reshape(batch, bins, 1, channels).permute(0, 3, 2, 1)
            x = x + middle.k1 * self._norm(freq_norm, rows) + middle.k2 * self._norm(time_norm, cols)
        return middle.output(x)

    def _frame(self, block: torch.Tensor) -> None:
        model = self.model
        spec = self._analyse(block)
        x = torch.stack([spec.real, spec.imag], 1)  # [B, 2, 1, 257]
        x = self._dense(model.encoder[2], self._block(model.encoder[1], self._block(model.encoder[0], x)))
        x = self._dense(model.decoder[0], self._middle(x))
        x = model.decoder[2](self._block(model.decoder[1], x))[..., :spec.shape[-1]].to(spec.real.dtype)
        self._overlap_add(apply_mask(spec, torch.complex(x[:, 0], x[:, 1]), "E"))
