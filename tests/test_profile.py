"""selib.profile: MAC counts against closed forms and independent counts, and the profile table."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from selib.models import build
from selib.profile import count_macs, format_table, profile_model, profile_table


def test_conv1d_and_linear_macs_match_the_closed_form():
    conv = nn.Conv1d(4, 8, kernel_size=5, stride=2, groups=2)
    frames = (101 - 5) // 2 + 1
    assert count_macs(conv, torch.randn(3, 4, 101)) == 3 * frames * 8 * (4 // 2) * 5
    linear = nn.Linear(6, 7)
    assert count_macs(linear, torch.randn(3, 11, 6)) == 3 * 11 * 6 * 7


def _native_count(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def test_lstm_closed_form_equals_the_count_of_an_explicit_cell_loop():
    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 7, 6)
    cells = [nn.LSTMCell(6, 5), nn.LSTMCell(10, 5)]  # layer 2 reads both directions of layer 1

    def unrolled():
        for cell in cells:
            for _direction in range(2):
                h = c = torch.zeros(3, 5)
                for t in range(7):
                    h, c = cell(torch.randn(3, cell.input_size), (h, c))

    assert count_macs(lstm, x) == _native_count(unrolled) > 0


def test_gru_closed_form_equals_the_native_count():
    gru = nn.GRU(6, 5, batch_first=True)  # the CPU GRU decomposes into counted matrix products
    x = torch.randn(3, 7, 6)
    assert count_macs(gru, x) == _native_count(lambda: gru(x)) == 3 * 7 * 3 * 5 * (6 + 5)


def test_attention_closed_form_equals_the_count_of_an_explicit_computation():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q, kv = torch.randn(3, 5, 8), torch.randn(3, 9, 8)

    def explicit():
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        query, key, value = F.linear(q, w_q), F.linear(kv, w_k), F.linear(kv, w_v)
        heads = [torch.softmax(query[..., h:h + 4] @ key[..., h:h + 4].transpose(1, 2), -1)
                 @ value[..., h:h + 4] for h in (0, 4)]
        mha.out_proj(torch.cat(heads, -1))

    assert count_macs(mha, q, kv, kv) == _native_count(explicit) > 0


def test_profile_model_reports_positive_figures():
    model = build("convtasnet", "tiny-student")
    figures = profile_model(model, seconds=0.25, runs=1)
    assert set(figures) == {"params", "macs_per_second", "rtf"}
    assert figures["params"] == model.n_params
    assert figures["macs_per_second"] > 0 and figures["rtf"] > 0
    assert model.training  # the mode is restored
    # MACs scale with the audio length: per second they stay (nearly) the same
    longer = profile_model(model, seconds=0.5, runs=1)["macs_per_second"]
    assert longer == pytest.approx(figures["macs_per_second"], rel=0.02)
    with pytest.raises(ValueError, match="seconds"):
        profile_model(model, seconds=0)


def test_profile_table_rows_and_markdown():
    rows = profile_table(families=["convtasnet", "dptnet"], presets=["tiny-student"], seconds=0.1, runs=1)
    assert [(r["family"], r["preset"]) for r in rows] == [("convtasnet", "tiny-student"),
                                                          ("dptnet", "tiny-student")]
    table = format_table(rows).splitlines()
    assert table[0].startswith("| family | preset |") and len(table) == 2 + len(rows)
    assert table[2].startswith("| convtasnet | tiny-student | 0.059 |")
    with pytest.raises(ValueError, match="tiny-student"):
        profile_table(families=["dptnet"], presets=["huge"])
    with pytest.raises(ValueError, match="convtasnet"):
        profile_table(families=["wavenet"])
    assert [r["preset"] for r in profile_table("convtasnet", "tiny-student", seconds=0.1, runs=1)] == [
        "tiny-student"]
