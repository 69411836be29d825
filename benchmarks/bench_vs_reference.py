"""selib's models against reference implementations of the same configuration, side by side.

Pairs (issue 12): DCCRN-CL against asteroid's ``DCCRNet("DCCRN-CL")``; Conv-TasNet (one source) against
asteroid's ``ConvTasNet`` and ``torchaudio.models.ConvTasNet``; DPTNet against asteroid's ``DPTNet``,
configured to selib's layout (asteroid's defaults are 64 filters, BiLSTM 256, 6 repeats, chunk 100).

For each pair the script first prints both models' parameter counts and MACs per second of audio
(``selib.profile.count_macs``: FlopCounterMode / 2 with closed forms for LSTMs and attention, counted on
4 s of audio, ``--macs-seconds``; asteroid's STFT is a convolution and counted, selib's FFT is not) and refuses
to time the pair, saying why, when either differs by more than ``--tolerance`` (5 %). Then, in one
process, it alternates the implementations (A, B, A, B ...) after a warm-up of each and reports the
median of ``--repeats`` runs of

- a training step: forward + backward (negative SI-SNR) + Adam step, batch 4 x 4 s at 16 kHz, 2 threads;
- inference: one forward on 10 s (batch 1, ``torch.inference_mode``, 1 thread), as a real-time factor;

and the ratio selib / reference (< 1: selib is faster). Where selib's training step is slower by more
than 5 %, one step of each is run under ``torch.profiler`` and the operators with the most self CPU
time are printed (and likewise one forward where selib's inference is slower by more than 5 %). The table is printed and one JSON line per pair is appended to
``benchmarks/results/vs_reference.jsonl``; ``--write`` puts the latest line of each pair into
benchmarks/RESULTS.md, the ratios above 1.05 in bold.

The defaults are the issue's set-up (4 x 4 s, 10 s). On 2 cores that is past 10 minutes (a DCCRN-CL
paper step on 4 x 1 s takes 3 s on the idle machine, 4 x 4 s about 12 s, and there are 42 of them), so
the figures in benchmarks/RESULTS.md were taken with ``--seconds 1`` (batch 4 and the 10-s inference
kept), one pair per run (``--only``): 1-3 minutes each on the idle machine; the ratios, not the seconds,
are what the script is for.

Presets (``--dccrn``, ``--convtasnet``, ``--dptnet``; the largest that fit that budget):

- DCCRN-CL: ``paper-teacher`` (= asteroid's DCCRN-CL: complex channels 16-32-64-128-128-128, complex
  LSTM 2 x 128, 400/100/512 STFT).
- Conv-TasNet: ``paper-student`` (N 256, L 16, B 64, H 256, Sc 64, P 3, X 8, R 3). The paper preset
  (``--convtasnet paper-teacher``, = both references' defaults) takes about 4x longer per step; with three
  implementations it alone would fill the 10 minutes.
- DPTNet: ``tiny`` = selib's ``tiny-teacher`` (feature 32, BiLSTM 64, 2 layers, 4 heads, chunk 100,
  window 16) with ``enc_dim = feature_dim = 32``, because asteroid's DPTNet has no bottleneck: its
  transformers run at the encoder's width, so only ``enc_dim == feature_dim`` matches. ``paper-w16`` is
  the paper's transformer (64-d, BiLSTM 128, 6 layers, chunk 250) at enc_dim 64 and window 16;
  the paper's window 2 (16 000 frames/s, 100 GMAC/s) would take minutes per training step here.

Environment: asteroid is an optional dependency (``pip install -e '.[bench]'``, group ``bench`` of
pyproject.toml), kept out of ``.venv`` in its own environment: ``make bench-env`` creates
``.venv-bench``, and ``make bench`` runs this script with it when it exists. asteroid 0.7.0 installs
with its full requirements beside torch/torchaudio 2.11 (pytorch-lightning 2.6.6, torchmetrics 0.11.4,
asteroid-filterbanks 0.4.0 ...), so no ``--no-deps`` work-around is needed; only
``asteroid.models`` and ``asteroid_filterbanks`` are used. One incompatibility is patched at import: asteroid
0.7.0 passes DCCRNet's LSTM size as a numpy integer, which torch 2.11's ``nn.LSTM`` refuses. Without asteroid the asteroid pairs are
skipped (with a note) and Conv-TasNet is compared with torchaudio alone.

Run: ``OMP_NUM_THREADS=2 nice .venv-bench/bin/python benchmarks/bench_vs_reference.py [--repeats 5] [--write]``
(``--only dccrn convtasnet dptnet`` picks pairs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import results_md
import torch
from torch import nn

from selib import models
from selib.losses import neg_si_snr
from selib.profile import count_macs

RATE = 16000
RESULTS = Path(__file__).with_name("results") / "vs_reference.jsonl"
SLOWER = 1.05  # selib / reference above which selib is profiled (and the ratio set in bold)

try:  # optional: the reference implementations of the bench extra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import asteroid
        from asteroid import models as asteroid_models
    ASTEROID = asteroid.__version__
    # asteroid 0.7.0 sizes DCCRNet's LSTM with np.prod (a numpy int64), which torch >= 2.2's nn.LSTM
    # rejects ("input_size should be of type int"); pass it on as a Python int.
    from asteroid.masknn import recurrent as _recurrent

    _dccr_rnn_init = _recurrent.DCCRMaskNetRNN.__init__
    _recurrent.DCCRMaskNetRNN.__init__ = lambda self, in_size, *a, **k: _dccr_rnn_init(self, int(in_size), *a, **k)
except ImportError as err:  # pragma: no cover - depends on the environment
    asteroid_models, ASTEROID = None, None
    ASTEROID_MISSING = str(err)


class Squeeze(nn.Module):
    """A reference model behind selib's interface: ``[B, T] -> [B, T]``."""

    def __init__(self, model: nn.Module, channel_in: bool):
        super().__init__()
        self.model, self.channel_in = model, channel_in

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        out = self.model(wav[:, None] if self.channel_in else wav)
        return out[:, 0, :wav.shape[-1]]


# ---------------------------------------------------------------------------------------------- pairs
def dccrn_pair(preset: str):
    """selib DCCRN-CL vs asteroid DCCRNet; only the paper teacher matches asteroid's one architecture."""
    kw = models.presets("dccrn")[preset]
    selib_model = models.build("dccrn", preset)
    if asteroid_models is None:
        return selib_model, {}, f"asteroid not importable ({ASTEROID_MISSING})"
    if tuple(kw["kernel_num"]) != (32, 64, 128, 256, 256, 256) or kw.get("n_fft", 512) != 512:
        return selib_model, {}, (f"asteroid's DCCRNet has one architecture (DCCRN-CL, 16-128 complex channels, "
                                 f"512-point STFT); selib preset {preset!r} is not it")
    ref = asteroid_models.DCCRNet("DCCRN-CL", stft_n_filters=kw.get("n_fft", 512),
                                  stft_kernel_size=kw.get("win_length", 400), stft_stride=kw.get("hop_length", 100),
                                  sample_rate=RATE)
    return selib_model, {f"asteroid {ASTEROID} DCCRNet": Squeeze(ref, channel_in=False)}, None


def convtasnet_pair(preset: str):
    kw = models.presets("convtasnet")[preset]
    selib_model = models.build("convtasnet", preset)
    refs = {}
    if kw.get("causal") or kw.get("norm", "gLN") != "gLN":
        return selib_model, refs, f"preset {preset!r} is causal; the references are compared non-causal (gLN)"
    if asteroid_models is not None:
        ref = asteroid_models.ConvTasNet(
            n_src=1, n_blocks=kw["X"], n_repeats=kw["R"], bn_chan=kw["B"], hid_chan=kw["H"], skip_chan=kw["Sc"],
            conv_kernel_size=kw["P"], norm_type="gLN", mask_act="sigmoid", n_filters=kw["N"],
            kernel_size=kw["L"], stride=kw["L"] // 2, sample_rate=RATE)
        refs[f"asteroid {ASTEROID} ConvTasNet"] = Squeeze(ref, channel_in=False)
    import torchaudio
    from torchaudio.models import ConvTasNet as TAConvTasNet

    if kw["B"] != kw["Sc"]:
        return selib_model, refs, "torchaudio's ConvTasNet ties the skip width to the bottleneck (Sc = B)"
    ta = TAConvTasNet(num_sources=1, enc_kernel_size=kw["L"], enc_num_feats=kw["N"], msk_kernel_size=kw["P"],
                      msk_num_feats=kw["B"], msk_num_hidden_feats=kw["H"], msk_num_layers=kw["X"],
                      msk_num_stacks=kw["R"], msk_activate="sigmoid")
    refs[f"torchaudio {torchaudio.__version__.split('+')[0]} ConvTasNet"] = Squeeze(ta, channel_in=True)
    return selib_model, refs, None if refs else "no reference available"


DPTNET_CONFIGS = {
    # selib tiny-teacher, enc_dim brought to feature_dim (asteroid has no bottleneck)
    "tiny": ("tiny-teacher", dict(enc_dim=32)),
    # the paper's transformer stack at window 16 instead of 2 (8x fewer frames), enc_dim = feature_dim
    "paper-w16": ("paper-teacher", dict(enc_dim=64, window=16)),
}


def dptnet_pair(name: str):
    preset, overrides = DPTNET_CONFIGS[name]
    kw = {**models.presets("dptnet")[preset], **overrides}
    selib_model = models.build("dptnet", preset, **overrides)
    if asteroid_models is None:
        return selib_model, {}, f"asteroid not importable ({ASTEROID_MISSING})"
    if kw["enc_dim"] != kw["feature_dim"]:
        return selib_model, {}, "asteroid's DPTNet has no bottleneck: it matches only enc_dim == feature_dim"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = asteroid_models.DPTNet(
            n_src=1, n_heads=kw["heads"], ff_hid=kw["hidden_dim"], chunk_size=kw["chunk_size"],
            n_repeats=kw["layers"], norm_type="gLN", mask_act="relu", bidirectional=True, dropout=0,
            fb_name="free", kernel_size=kw["window"], n_filters=kw["enc_dim"], stride=kw["window"] // 2,
            sample_rate=RATE)
    return selib_model, {f"asteroid {ASTEROID} DPTNet": Squeeze(ref, channel_in=False)}, None


# ------------------------------------------------------------------------------------------- measures
def size(model: nn.Module, seconds: float) -> tuple[int, float]:
    """(parameters, MACs per second of audio) from one forward on ``seconds`` of noise, eval mode.

    Counted on 4 s (``--macs-seconds``) rather than on 1 s: asteroid's DCCRNet convolves without time
    padding, so each of its 12 blocks loses or gains a frame; on 1 s (157 frames) that alone makes 5 %
    fewer MACs than selib's padded layout, on 4 s about 1 %."""
    model.eval()
    wav = torch.randn(1, int(seconds * RATE), generator=torch.Generator().manual_seed(0))
    macs = count_macs(model, wav)
    model.train()
    return sum(p.numel() for p in model.parameters()), macs / seconds


class Trainable:
    """One model with its Adam optimiser and a fixed batch: ``step()`` = forward + backward + update."""

    def __init__(self, model: nn.Module, batch: int, seconds: float):
        gen = torch.Generator().manual_seed(1)
        self.model = model.train()
        self.clean = torch.randn(batch, int(seconds * RATE), generator=gen) * 0.1
        self.noisy = self.clean + 0.1 * torch.randn(self.clean.shape, generator=gen)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(self) -> float:
        started = time.perf_counter()
        loss = neg_si_snr(self.model(self.noisy), self.clean)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started


def infer(model: nn.Module, wav: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        model(wav)
    return time.perf_counter() - started


def alternate(runs: dict[str, callable], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Call every ``runs[name]()`` ``warmup`` times, then ``repeats`` rounds in turn; their timings."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
            print(f"    ({name}: {times[name][-1]:.2f} s)", file=sys.stderr, flush=True)
    return times


def top_ops(step: callable, rows: int = 8) -> list[tuple[str, float, int]]:
    """(operator, self CPU ms, calls) of the operators with the most self CPU time in one ``step()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in events[:rows]]


def compare(family: str, preset: str, selib_model, refs: dict, args) -> list[dict]:
    rows = []
    print(f"\n== {family} ({preset})")
    sizes = {"selib": size(selib_model, args.macs_seconds),
             **{name: size(ref, args.macs_seconds) for name, ref in refs.items()}}
    for name, (params, macs) in sizes.items():
        print(f"  {name:32s} {params / 1e6:8.3f} M params {macs / 1e9:8.3f} GMAC/s")
    comparable = {}
    for name in refs:
        p0, m0 = sizes["selib"]
        p1, m1 = sizes[name]
        dp, dm = abs(p0 / p1 - 1), abs(m0 / m1 - 1)
        if max(dp, dm) > args.tolerance:
            print(f"  REFUSED selib vs {name}: parameters differ by {dp:.1%}, MACs by {dm:.1%} "
                  f"(more than {args.tolerance:.0%}): not the same configuration, no timing")
            rows.append({"family": family, "preset": preset, "reference": name, "refused": True,
                         "params": [p0, p1], "macs_per_second": [m0, m1]})
        else:
            print(f"  selib vs {name}: parameters differ by {dp:.1%}, MACs by {dm:.1%}")
            comparable[name] = refs[name]
    if not comparable:
        return rows
    impls = {"selib": selib_model, **comparable}

    torch.set_num_threads(args.train_threads)
    trainables = {name: Trainable(model, args.batch, args.seconds) for name, model in impls.items()}
    train = alternate({name: t.step for name, t in trainables.items()}, args.repeats)
    for t in trainables.values():
        t.optimizer.zero_grad(set_to_none=True)
    profiles = {}
    for name in comparable:
        if statistics.median(train["selib"]) > SLOWER * statistics.median(train[name]) and not args.no_profile:
            for who in ("selib", name):
                if who not in profiles:
                    profiles[who] = top_ops(trainables[who].step)
    del trainables

    torch.set_num_threads(args.infer_threads)
    wav = torch.randn(1, int(args.infer_seconds * RATE), generator=torch.Generator().manual_seed(2))
    for model in impls.values():
        model.eval()
    infer_times = alternate({name: (lambda m=m: infer(m, wav)) for name, m in impls.items()}, args.repeats)
    for name in comparable:
        if statistics.median(infer_times["selib"]) > SLOWER * statistics.median(infer_times[name]) \
                and not args.no_profile:
            for who in ("selib", name):
                if f"{who}, inference" not in profiles:
                    profiles[f"{who}, inference"] = top_ops(lambda m=impls[who]: infer(m, wav))
    for model in impls.values():
        model.train()

    med = {name: statistics.median(v) for name, v in train.items()}
    rtf = {name: statistics.median(v) / args.infer_seconds for name, v in infer_times.items()}
    print(f"  training step ({args.batch} x {args.seconds:g} s, {args.train_threads} threads, median of "
          f"{args.repeats}) and inference RTF ({args.infer_seconds:g} s, {args.infer_threads} thread):")
    for name in impls:
        line = f"    {name:32s} step {med[name]:7.3f} s   RTF {rtf[name]:6.3f}"
        if name != "selib":
            line += (f"   selib/ref: training {med['selib'] / med[name]:5.2f}, "
                     f"inference {rtf['selib'] / rtf[name]:5.2f}")
        print(line)
    for who, ops in profiles.items():
        total = sum(ms for _, ms, _ in ops)
        what = "one forward" if who.endswith(", inference") else "one training step"
        print(f"  profile of {what}, {who}: top operators by self CPU time")
        for op, ms, calls in ops:
            print(f"    {op:40s} {ms:9.1f} ms  {calls:6d} calls")
        print(f"    (these {len(ops)} operators: {total:.0f} ms)")
    for name in comparable:
        rows.append({
            "family": family, "preset": preset, "reference": name, "refused": False,
            "params": [sizes["selib"][0], sizes[name][0]], "macs_per_second": [sizes["selib"][1], sizes[name][1]],
            "train_step_s": [med["selib"], med[name]], "train_ratio": med["selib"] / med[name],
            "train_all_s": [train["selib"], train[name]],
            "rtf": [rtf["selib"], rtf[name]], "rtf_ratio": rtf["selib"] / rtf[name],
            "profile": {who: ops for who, ops in profiles.items()
                        if who.removesuffix(", inference") in ("selib", name)},
        })
    return rows


def table(records: list[dict]) -> str:
    """The pairs as a Markdown table: sizes, training step and RTF of both sides, selib / reference."""
    def ratio(value: float) -> str:
        return f"**{value:.2f}**" if value > SLOWER else f"{value:.2f}"

    rows = []
    for r in sorted(records, key=lambda r: ("dccrn", "convtasnet", "dptnet").index(r["family"])):
        overrides = DPTNET_CONFIGS[r["preset"]][1] if r["family"] == "dptnet" else {}
        model = f"{results_md.NAMES[r['family']]} {r['preset']}" + (
            f" ({', '.join(f'{k} {v}' for k, v in overrides.items())})" if overrides else "")
        row = [model, r["reference"], f"{r['params'][0] / 1e6:.3f} / {r['params'][1] / 1e6:.3f}",
               f"{r['macs_per_second'][0] / 1e9:.2f} / {r['macs_per_second'][1] / 1e9:.2f}"]
        if r["refused"]:
            row += ["refused", "", "", ""]
        else:
            row += [f"{r['train_step_s'][0]:.2f} / {r['train_step_s'][1]:.2f}", ratio(r["train_ratio"]),
                    f"{r['rtf'][0]:.3f} / {r['rtf'][1]:.3f}", ratio(r["rtf_ratio"])]
        rows.append(row)
    return results_md.table(["model", "reference", "params M (selib / ref)", "GMAC/s (selib / ref)",
                             "train step s (selib / ref)", "selib / ref", "RTF (selib / ref)", "selib / ref"],
                            rows, "llrrrrrr")


def markdown(records: list[dict]) -> str:
    """The latest record of each pair, with the set-ups and the runs they come from, as RESULTS.md's block."""
    setups = sorted({f"training batch {r['batch']} x {r['seconds']:g} s on {r['train_threads']} threads, inference "
                     f"on {r['infer_seconds']:g} s on {r['infer_threads']} thread(s), median of {r['repeats']}"
                     for r in records})
    runs = sorted({f"{r['time']} (load average {r['load_average_end']:.1f})" for r in records})
    return (f"The latest line of each pair in `results/vs_reference.jsonl` ({'; '.join(setups)}), recorded at "
            f"the end of runs {', '.join(runs)}.\n\n{table(records)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each implementation")
    parser.add_argument("--only", nargs="+", choices=("dccrn", "convtasnet", "dptnet"),
                        default=("dccrn", "convtasnet", "dptnet"))
    parser.add_argument("--dccrn", default="paper-teacher", help="selib DCCRN preset")
    parser.add_argument("--convtasnet", default="paper-student", help="selib Conv-TasNet preset")
    parser.add_argument("--dptnet", default="tiny", choices=sorted(DPTNET_CONFIGS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="training segment length")
    parser.add_argument("--infer-seconds", type=float, default=10.0)
    parser.add_argument("--macs-seconds", type=float, default=4.0, help="audio the MACs are counted on")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--infer-threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest relative size difference")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    results_md.add_options(parser)
    args = parser.parse_args()
    # Denormal floats are flushed to zero for every implementation alike. In two of four trial runs
    # asteroid's Conv-TasNet step took 10-20x longer than in the others, all of it in
    # convolution_backward; flushing is a precaution against such numerics, not a proven cause.
    torch.set_flush_denormal(True)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, asteroid {ASTEROID or 'missing'}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    if ASTEROID is None:
        print(f"asteroid is not installed here ({ASTEROID_MISSING}): only torchaudio's Conv-TasNet is "
              "compared; make bench-env creates .venv-bench with it")
    builders = {"dccrn": (dccrn_pair, args.dccrn), "convtasnet": (convtasnet_pair, args.convtasnet),
                "dptnet": (dptnet_pair, args.dptnet)}
    rows = []
    for family in args.only:
        build, preset = builders[family]
        torch.manual_seed(0)
        selib_model, refs, skipped = build(preset)
        if skipped:
            print(f"\n== {family} ({preset}): {'only some references: ' if refs else 'skipped: '}{skipped}")
        if refs:
            rows += compare(family, preset, selib_model, refs, args)

    print("\n" + table(rows))
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end; {time.perf_counter() - started:.0f} s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with args.results.open("a") as out:
        for r in rows:
            out.write(json.dumps({"time": stamp, "machine": platform.machine(), "cpus": os.cpu_count(),
                                  "torch": torch.__version__, "asteroid": ASTEROID, "repeats": args.repeats,
                                  "batch": args.batch, "seconds": args.seconds,
                                  "infer_seconds": args.infer_seconds, "train_threads": args.train_threads,
                                  "infer_threads": args.infer_threads, "load_average_end": load[0], **r}) + "\n")
    print(f"appended {len(rows)} line(s) to {args.results}")
    if args.write:
        records = results_md.latest(args.results, "family", "preset", "reference")
        results_md.write_section(__file__, markdown(list(records.values())), args.results_md)


if __name__ == "__main__":
    main()
