"""What the whole library agrees on, in one module that imports nothing (so that checking a config or
parsing a command line does not load torch or the data pipelines). The modules that implement each
name list check against it: ``selib.models`` (families), ``selib.kd`` (methods), ``selib.evaluation``
(metrics), ``selib.losses`` and ``selib.data`` (datasets)."""

SAMPLE_RATE = 16000                             # Hz: every model, metric and corpus in selib
SPLITS = ("train", "valid", "test")             # the splits of every dataset (docs/datasets.md)
DATASETS = ("embedded", "embedded-room", "voicebank", "dns2020")  # what selib.data.get_dataset reads
FAMILIES = ("dccrn", "convtasnet", "dptnet", "dpdcrn")   # one module each in selib/models/
KD_METHODS = ("none", "logits-mse", "logits-sisnr", "logits-spec", "dfkd", "i2s-tfckd", "dfkd+i2s-tfckd")
METRICS = ("pesq_wb", "pesq_nb", "stoi", "estoi", "si_sdr", "si_snr", "csig", "cbak", "covl", "ssnr", "llr",
           "wss")
LOSSES = ("sisnr", "sisnr-nozm", "spec-mse", "spec-mae")   # the SE losses of selib.losses
