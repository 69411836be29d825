"""Frame-by-frame enhancement with a causal student, lesson ``11_results_and_deployment``.

A streamer takes the input in blocks of ``hop`` samples (``step(block [B, hop])`` returns the samples
that became final, ``flush()`` the rest) and carries every piece of state the offline ``forward``
keeps implicitly (the previous frames of causal convolutions, LSTM states, cumulative norm
statistics, pending overlap-add samples). The concatenated output equals ``model(noisy)`` up to float rounding; the tests check it for each causal
student. ``latency`` is the longest time, in samples, from an input sample's arrival to the output
of its enhanced sample: the wait for its block to fill plus the model's look-ahead.

Causal students: DCCRN (every preset), DPDCRN built with ``causal=True`` and Conv-TasNet built with
``causal=True`` (``paper-causal``). DPTNet and the default DPDCRN attend over the whole utterance and
cannot stream.
"""
from __future__ import annotations

import statistics
import time
from collections import deque

import torch
from torch.nn import functional as F

from selib.models import SEModel
from selib.models.blocks import ChannelLayerNorm, CumulativeLayerNorm
from selib.models.complex import _complex_apply, apply_mask
from selib.models.convtasnet import ConvTasNet
from selib.models.dccrn import DCCRN, _complex_cat
from selib.models.dpdcrn import DPDCRN


class _NormStep:
    """One frame (``[B, C, 1]`` or ``[B, C, 1, F]``) through cLN, which keeps running sums, or chLN
    (stateless)."""

    def __init__(self, norm: torch.nn.Module):
        if not isinstance(norm, (CumulativeLayerNorm, ChannelLayerNorm)):
            raise ValueError(f"{type(norm).__name__} uses future frames and cannot stream; build the "
                             "model with causal=True and norm cLN or chLN")
        self.norm, self.sums = norm, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, ChannelLayerNorm):
            return self.norm(x)
        sums = self.norm.moments(x)
        if self.sums is not None:
            sums = tuple(seen + new for seen, new in zip(self.sums, sums))
        self.sums = sums
        return self.norm.normalise(x, *sums)


class ConvTasNetStreamer:
    """Causal Conv-TasNet, one encoder frame (``L / 2`` samples) per step."""

    def __init__(self, model):
        if not model.causal:
            raise ValueError("this Conv-TasNet is not causal (norm gLN); stream a model built with "
                             "causal=True, e.g. the paper-causal preset")
        self.model, codec = model, model.codec
        self.hop = codec.stride
        self.latency = codec.lookahead  # one block of wait + the other half of the window
        self.previous = None  # the last input block: the first half of the next frame
        self.input_norm = _NormStep(model.input_norm)
        self.norms = [(_NormStep(b.norm_in), _NormStep(b.norm_d)) for b in model.blocks]
        self.history = [None] * len(model.blocks)  # past inputs of each dilated depthwise conv
        self.overlap = None  # the second half of the last decoded frame

    def _frame(self, block: torch.Tensor) -> torch.Tensor:
        """Encode, mask and decode one frame; returns the ``hop`` samples that became final."""
        model, codec = self.model, self.model.codec
        if self.previous is None:
            self.previous = torch.zeros_like(block)
            self.overlap = block.new_zeros(block.shape[0], self.hop)
        frame = torch.cat([self.previous, block], -1)[:, None]  # [B, 1, L]
        self.previous = block
        enc = F.conv1d(frame, codec.encoder.weight)  # [B, N, 1]
        enc = F.relu(enc) if codec.relu else enc
        x = model.bottleneck(self.input_norm(enc))
        skips = 0.0
        for i, (tcn, (norm_in, norm_d)) in enumerate(zip(model.blocks, self.norms)):
            y = norm_in(tcn.act_in(tcn.conv_in(x)))
            past = self.history[i]
            if past is None:
                past = y.new_zeros(y.shape[0], y.shape[1], tcn.padding[0])
            window = torch.cat([past, y], -1)
            self.history[i] = window[..., 1:]
            y = norm_d(tcn.act_d(tcn.dconv(window)))
            if tcn.res_out is not None:
                x = x + tcn.res_out(y)
            skips = skips + tcn.skip_out(y)
        mask = model.mask(model.output_conv(model.output_prelu(skips)))
        samples = F.conv_transpose1d(enc * mask, codec.decoder.weight, stride=self.hop)[:, 0]  # [B, L]
        final = self.overlap + samples[:, :self.hop]
        self.overlap = samples[:, self.hop:]
        return final

    def step(self, block: torch.Tensor) -> torch.Tensor:
        first = self.previous is None
        final = self._frame(block)
        return final[:, :0] if first else final  # the first frame's first half precedes sample 0

    def flush(self) -> torch.Tensor:
        return self._frame(torch.zeros_like(self.previous))


class _STFTStreamer:
    """The STFT side of a spectral-mask streamer: one frame (``hop_length`` samples) per step.

    ``_analyse`` turns each block into the spectrum of the frame it completes and ``_overlap_add``
    outputs the samples an enhanced frame makes final; a subclass's ``_frame(block)`` runs the network
    between them and ``_drain()`` empties what it still holds when the input ends. Frame ``k`` of the
    offline STFT must end with block ``k``: its padding before sample 0 is ``win - hop`` (plus the
    window's offset in the ``n_fft`` frame), true of DCCRN's ``center=False`` STFT and of DPDCRN's
    centred 512/256 one.
    """

    delay = 0  # frames between a frame's analysis and its enhanced spectrum

    def __init__(self, model):
        self.model, stft = model, model.stft
        self.hop, self.n_fft, self.win = stft.hop_length, stft.n_fft, stft.win_length
        self.offset = (self.n_fft - self.win) // 2
        self.left = stft._pads(0)[0] + (self.n_fft // 2 if stft.center else 0)  # padding before sample 0
        if self.left != self.offset + self.win - self.hop:
            raise ValueError(f"{type(model).__name__}: an STFT of n_fft {self.n_fft}, window {self.win}, hop "
                             f"{self.hop}, center={stft.center} has frames that do not end on a hop; it cannot "
                             "stream (use center=False, or a centred STFT with hop = n_fft / 2)")
        self.latency = (self.delay + 1) * self.hop + self.left - 1
        self.window = stft._frame_window(torch.float32)
        self.samples = None  # the last win input samples
        self.ola = self.envelope = None
        self.to_drop = self.left  # padded positions before sample 0 are never output
        self.frames_in = self.blocks_in = 0
        self.out = []

    def _analyse(self, block: torch.Tensor) -> torch.Tensor:
        """The complex spectrum ``[B, 1, n_fft // 2 + 1]`` of the frame that ends with ``block``."""
        if self.samples is None:
            self.samples = block.new_zeros(block.shape[0], self.win)
        self.samples = torch.cat([self.samples[:, self.hop:], block], -1)
        frame = F.pad(self.samples, (self.offset, self.n_fft - self.win - self.offset)) * self.window
        self.frames_in += 1
        return torch.fft.rfft(frame, dim=-1)[:, None]

    def _overlap_add(self, spec: torch.Tensor) -> None:
        """Overlap-add the enhanced spectrum of the oldest pending frame; its first hop becomes final."""
        frame = torch.fft.irfft(spec, n=self.n_fft, dim=-1)[:, 0] * self.window
        if self.ola is None:
            self.ola = frame.new_zeros(frame.shape[0], self.n_fft)
            self.envelope = frame.new_zeros(self.n_fft)
        self.ola = self.ola + frame
        self.envelope = self.envelope + self.window ** 2
        env = self.envelope[:self.hop]
        final = self.ola[:, :self.hop] / torch.where(env > 1e-11, env, torch.ones_like(env))
        self.ola = F.pad(self.ola[:, self.hop:], (0, self.hop))
        self.envelope = F.pad(self.envelope[self.hop:], (0, self.hop))
        drop = min(self.to_drop, self.hop)
        self.to_drop -= drop
        self.out.append(final[:, drop:])

    def _take(self) -> torch.Tensor:
        out, self.out = self.out, []
        return torch.cat(out, -1) if out else self.samples.new_zeros(self.samples.shape[0], 0)

    def _drain(self) -> None:
        """Finish the frames the network still holds after the last one (none by default)."""

    def step(self, block: torch.Tensor) -> torch.Tensor:
        self._frame(block)
        self.blocks_in += 1
        return self._take()

    def flush(self) -> torch.Tensor:
        # The offline STFT has frames past the last block (its zero padding) ...
        for _ in range(self.model.stft.frames(self.blocks_in * self.hop) - self.frames_in):
            self._frame(torch.zeros_like(self.samples[:, :self.hop]))
        self._drain()
        # ... and the overlap-add buffer holds the last frame's remaining samples.
        final = self.ola / torch.where(self.envelope > 1e-11, self.envelope, torch.ones_like(self.envelope))
        self.out.append(final[:, min(self.to_drop, final.shape[-1]):])
        return self._take()


class DCCRNStreamer(_STFTStreamer):
    """DCCRN, one STFT frame per step; each of the ``depth`` decoder blocks looks one frame ahead, so
    the mask of frame ``t`` is known after frame ``t + depth``."""

    def __init__(self, model):
        self.depth = self.delay = len(model.encoder)
        super().__init__(model)
        self.encoder_inputs = [None] * self.depth  # the previous input frame of each encoder block
        self.rnn_states = [dict() for _ in model.rnn]
        self.decoder_inputs = [None] * self.depth  # the pending input frame of each decoder block
        self.skips = [deque() for _ in range(self.depth)]  # encoder outputs waiting for their decoder
        self.spectra = deque()  # noisy spectra waiting for their mask

    def _rnn(self, i: int, seq: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` of the middle LSTM on one frame ``[B, 1, features]``, carrying its states."""
        rnn, states = self.model.rnn[i], self.rnn_states[i]

        def stateful(name, lstm):
            def run(x):
                y, states[name] = lstm.lstm(x, states.get(name))
                return y
            return run

        if hasattr(rnn, "real"):  # complex LSTM: real and imaginary LSTMs combined as a product
            out = _complex_apply(stateful("real", rnn.real), stateful("imag", rnn.imag), seq, -1)
            if not rnn.projection:
                return out
            real, imag = out.chunk(2, -1)
            return torch.cat([rnn.proj_real(real), rnn.proj_imag(imag)], -1)
        return stateful("lstm", rnn)(seq)

    def _decode(self, level: int, frame: torch.Tensor) -> None:
        """Give decoder block ``level`` its next input frame; it outputs the frame before it."""
        pending, self.decoder_inputs[level] = self.decoder_inputs[level], frame
        if pending is None:
            return
        x = self.model.decoder[level](torch.cat([pending, frame], 2))[:, :, 1:2]
        if level + 1 < self.depth:
            self._decode(level + 1, _complex_cat(x, self.skips[level + 1].popleft()))
        else:  # the mask of the oldest waiting frame
            x = F.pad(x.to(torch.float32), (1, 0))
            mask = torch.complex(x[:, 0], x[:, 1])  # [B, 1, 257]
            self._overlap_add(apply_mask(self.spectra.popleft(), mask, self.model.masking_mode))

    def _frame(self, block: torch.Tensor) -> None:
        """Analyse one STFT frame (ending with ``block``) and run it through the network."""
        model = self.model
        spec = self._analyse(block)
        self.spectra.append(spec)
        x = torch.stack([spec.real, spec.imag], 1)[..., 1:]  # [B, 2, 1, 256]
        for i, block_module in enumerate(model.encoder):
            previous = self.encoder_inputs[i]
            previous = torch.zeros_like(x) if previous is None else previous
            self.encoder_inputs[i] = x
            x = block_module(torch.cat([previous, x], 2))
            self.skips[self.depth - 1 - i].append(x)
        batch, channels, _, bins = x.shape
        seq = x.transpose(1, 2).reshape(batch, 1, channels * bins)
        for i in range(len(model.rnn)):
            seq = self._rnn(i, seq)
        x = model.rnn_out(seq).reshape(batch, 1, channels, bins).transpose(1, 2)
        self._decode(0, _complex_cat(x, self.skips[0].popleft()))

    def _drain(self) -> None:
        # the decoder blocks see zero frames after the last one
        for level in range(self.depth):
            self._decode(level, torch.zeros_like(self.decoder_inputs[level]))


class DPDCRNStreamer(_STFTStreamer):
    """Causal DPDCRN (``causal=True``), one STFT frame per step, with no delay: it carries the cumulative
    norms' running sums, each dilated convolution's past input frames, and per time-path layer the
    attention's keys and values of every past frame and the GRU state. Attention over the whole past
    makes a step's cost grow with the time streamed."""

    def __init__(self, model):
        if not model.causal:
            raise ValueError("this DPDCRN is not causal (attention over the whole utterance, instance norm); "
                             "stream a model built with causal=True")
        super().__init__(model)
        self.norms = {}  # each cumulative norm -> its _NormStep
        self.history = {}  # dilated conv layer -> its last input frames
        layers = len(model.middle.time_paths)
        self.keys, self.values, self.gru_states = [None] * layers, [None] * layers, [None] * layers

    def _norm(self, norm: CumulativeLayerNorm, x: torch.Tensor) -> torch.Tensor:
        if norm not in self.norms:
            self.norms[norm] = _NormStep(norm)
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


def streamer(model: SEModel) -> DCCRNStreamer | DPDCRNStreamer | ConvTasNetStreamer:
    """The streamer of a causal model (eval mode); a clear error for models that cannot stream."""
    model.eval()
    if isinstance(model, DCCRN):
        return DCCRNStreamer(model)
    if isinstance(model, DPDCRN):
        return DPDCRNStreamer(model)
    if isinstance(model, ConvTasNet):
        return ConvTasNetStreamer(model)
    raise ValueError(f"{type(model).__name__} is not causal and cannot stream; stream DCCRN, or a DPDCRN "
                     "or Conv-TasNet built with causal=True (Conv-TasNet preset paper-causal)")


def stream(model: SEModel, noisy: torch.Tensor) -> torch.Tensor:
    """Enhance ``noisy [B, T]`` block by block; the same result as ``model(noisy)``."""
    s = streamer(model)
    length = noisy.shape[-1]
    padded = F.pad(noisy, (0, (-length) % s.hop))
    with torch.inference_mode():
        out = [s.step(block) for block in padded.split(s.hop, -1)]
        out.append(s.flush())
    return torch.cat(out, -1)[:, :length]


def step_times(model: SEModel, seconds_before: float = 0.0, warmup: int = 20, steps: int = 200) -> dict:
    """What one streaming step costs on one thread: stream ``seconds_before`` of noise (a streamer whose
    state grows, like the causal DPDCRN's, gets dearer), then ``warmup`` steps, then the median CPU time
    of the thread and wall time over ``steps`` steps, in ms, with the streamer's ``hop`` and ``latency``
    (samples). CPU time does not count waiting for a core on a shared machine."""
    s = streamer(model)
    skipped = int(seconds_before * model.sample_rate) // s.hop + warmup
    blocks = 0.1 * torch.randn(skipped + steps, 1, s.hop, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu, wall = [], []
    try:
        with torch.inference_mode():
            for block in blocks:
                start, start_cpu = time.perf_counter(), time.thread_time()
                s.step(block)
                cpu.append(time.thread_time() - start_cpu)
                wall.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {"hop": s.hop, "latency": s.latency, "cpu_ms": 1e3 * statistics.median(cpu[skipped:]),
            "wall_ms": 1e3 * statistics.median(wall[skipped:])}
