"""Frame-by-frame streaming of the causal students against their offline forward, lesson 11."""
import pytest
import torch

from selib.models import build
from selib.profile import step_times
from selib.streaming import stream, streamer

# Every causal student: DCCRN presets, and DPDCRN and Conv-TasNet (cLN) built causal at student width.
CAUSAL_STUDENTS = [
    pytest.param("dccrn", "tiny-student", {}, id="dccrn-tiny"),
    pytest.param("dccrn", "paper-student", {}, id="dccrn-paper"),
    pytest.param("dpdcrn", "tiny-student", {"causal": True}, id="dpdcrn-tiny-causal"),
    pytest.param("convtasnet", "tiny-student", {"causal": True, "norm": "cLN"}, id="convtasnet-tiny-causal"),
    pytest.param("dpdcrn", "paper-student", {"causal": True}, id="dpdcrn-paper-causal"),
    pytest.param("convtasnet", "paper-student", {"causal": True, "norm": "chLN"}, id="convtasnet-paper-causal-chln"),
]


@pytest.mark.parametrize("family,preset,overrides", CAUSAL_STUDENTS)
def test_streamed_output_equals_offline(family, preset, overrides):
    torch.manual_seed(0)
    model = build(family, preset, **overrides).eval()
    # not a whole number of hops; Conv-TasNet steps every 8 samples, so it gets a shorter input
    noisy = torch.randn(2, 1_001 if family == "convtasnet" else 2_501)
    with torch.no_grad():
        offline = model(noisy)
    streamed = stream(model, noisy)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max() < 1e-4


@pytest.mark.parametrize("family,preset,overrides", CAUSAL_STUDENTS[:4])
def test_latency_is_what_the_streamer_holds_back(family, preset, overrides):
    model = build(family, preset, **overrides).eval()
    s = streamer(model)
    assert s.latency >= model.lookahead  # no streamer can beat the model's look-ahead
    fed = emitted = 0
    with torch.inference_mode():
        for _ in range(12):
            emitted += s.step(torch.randn(1, s.hop)).shape[-1]
            fed += s.hop
            if emitted:  # a sample waits for its block (hop - 1) plus what is held back
                assert fed - emitted + s.hop - 1 == s.latency


def test_non_causal_models_refuse_to_stream():
    for family, preset in [("dpdcrn", "tiny-student"), ("dptnet", "tiny-student"), ("convtasnet", "tiny-student")]:
        with pytest.raises(ValueError, match="causal"):
            streamer(build(family, preset))


def test_an_stft_whose_frames_do_not_end_on_a_hop_refuses_to_stream():
    # a centred 512-point STFT with hop 128 pads 256 samples before sample 0, not win - hop = 384
    with pytest.raises(ValueError, match="do not end on a hop; it cannot stream"):
        streamer(build("dpdcrn", "tiny-student", causal=True, hop_length=128))


def test_step_times_reports_the_streamers_hop_and_latency_and_restores_the_threads():
    model = build("dpdcrn", "tiny-student", causal=True)
    threads = torch.get_num_threads()
    t = step_times(model, seconds_before=0.1, warmup=2, steps=3)
    s = streamer(model)
    assert (t["hop"], t["latency"]) == (s.hop, s.latency) and t["cpu_ms"] > 0 and t["wall_ms"] > 0
    assert torch.get_num_threads() == threads
