"""Corpora for selib: the embedded offline corpus (eSpeak NG speech, synthetic noise, DNS-style mixing),
loaders for VoiceBank+DEMAND and DNS Challenge 2020 (``DATASETS``: what :func:`get_dataset` reads), and
the catalogue of downloads (``CATALOGUE``: what :func:`download` fetches).
Lesson ``00_data_and_listening``.
"""
from selib.constants import DATASETS
from selib.data.catalogue import CATALOGUE
from selib.data.datasets import DatasetMissing, get_dataset
from selib.data.download import download
from selib.data.embedded import build_embedded, load_manifest
from selib.data.mixing import snr_mix
from selib.data.noise import NOISE_TYPES, make_noise
from selib.data.tts import synthesize

__all__ = ["CATALOGUE", "DATASETS", "NOISE_TYPES", "DatasetMissing", "build_embedded", "download", "get_dataset",
           "load_manifest", "make_noise", "snr_mix", "synthesize"]
