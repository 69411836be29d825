"""What the whole library agrees on, in one module that imports nothing (so that checking a config or
parsing a command line does not load torch or the data pipelines)."""

SAMPLE_RATE = 16000                             # Hz: every model, metric and corpus in selib
SPLITS = ("train", "valid", "test")             # the splits of every dataset (docs/datasets.md)
DATASETS = ("embedded", "embedded-room", "voicebank", "dns2020")  # what selib.data.get_dataset reads
