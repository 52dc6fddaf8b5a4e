"""The spike detector on known series, and the word reconstruction."""

import numpy as np

from minitrain.core.config import DiagnoseConfig
from minitrain.reports.diagnose import _words
from minitrain.reports.measure import detect


def test_detect_finds_planted_outliers_and_merges_neighbours():
    rng = np.random.default_rng(0)
    x = np.exp(rng.normal(0, 0.1, 400))  # a noisy but steady baseline
    x[200], x[203], x[330] = 20.0, 8.0, 5.0
    events = detect(x, 60, DiagnoseConfig())
    assert [e["step"] for e in events] == [200, 330]
    assert events[0]["ratio"] > 15 and events[0]["last"] == 203


def test_detect_no_spike_is_an_answer_and_nan_is_one():
    x = np.exp(np.random.default_rng(1).normal(0, 0.3, 300))
    assert detect(x, 60, DiagnoseConfig()) == []
    x[250] = np.nan
    assert [e["step"] for e in detect(x, 60, DiagnoseConfig())] == [250]


def test_detect_is_scale_free_and_ignores_warmup():
    x = np.ones(300) + np.linspace(0, 0.01, 300)
    x[10] = 100.0  # inside warm-up: not judged
    x[150] = 4.0
    assert [e["step"] for e in detect(x, 40, DiagnoseConfig())] == [150]
    assert [e["step"] for e in detect(x * 1e-6, 40, DiagnoseConfig())] == [150]


def test_words_from_pieces():
    pieces = ["▁The", "▁let", "ter", "▁was", "▁written", "▁in", "▁ink", ".", "[EOS]"]
    assert _words(pieces) == ["The", "letter", "letter", "was", "written", "in", "ink", ".",
                              "[EOS]"]
