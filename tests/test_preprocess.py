import json
import math

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgmamba.preprocess import (
    PreprocessConfig,
    preprocess_recording,
    resample_factors,
    resampled_length,
    window_starts,
)

MV = PreprocessConfig(scaling="none")  # output stays in mV, so amplitudes can be checked directly


def sine(freq_hz, fs, seconds, amplitude=1.0, phase=0.0):
    t = np.arange(int(round(seconds * fs))) / fs
    return (amplitude * np.sin(2 * np.pi * freq_hz * t + phase)).astype(np.float32)


def amplitude_at(x, freq_hz, fs):
    """Amplitude of the freq_hz component of x by least squares on sin/cos (x is long enough to resolve it)."""
    t = np.arange(len(x)) / fs
    basis = np.stack([np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x.astype(np.float64), rcond=None)
    return float(np.hypot(coef[0], coef[1]))


def dominant_frequency(x, fs):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / fs)[np.argmax(spectrum)]


@pytest.mark.parametrize("fs, target_fs", [(257, 500), (1000, 500), (360, 500), (500, 250)])
def test_resampling_keeps_frequency_and_length(fs, target_fs):
    config = PreprocessConfig(target_fs=target_fs)
    x = np.stack([sine(10.0, fs, 10.0), sine(7.0, fs, 10.0, amplitude=2.0)])
    y = preprocess_recording(x, fs, config)
    assert y.dtype == np.float32
    assert y.shape == (2, math.ceil(x.shape[1] * target_fs / fs))
    assert y.shape[1] == resampled_length(x.shape[1], fs, target_fs)
    assert dominant_frequency(y[0], target_fs) == pytest.approx(10.0, abs=0.15)
    assert dominant_frequency(y[1], target_fs) == pytest.approx(7.0, abs=0.15)


def test_resample_factors():
    assert resample_factors(257, 500) == (500, 257)
    assert resample_factors(360, 500) == (25, 18)
    assert resample_factors(1000, 500) == (1, 2)
    assert resample_factors(500.0, 500) == (1, 1)
    up, down = resample_factors(256.7, 500)  # an odd rate is approximated by a small fraction
    assert down <= 1000 and up / down == pytest.approx(500 / 256.7, rel=1e-5)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sampling rate"):
            resample_factors(bad, 500)


def test_bandpass_removes_wander_and_hum_keeps_signal():
    fs = 500
    wander, signal, hum60, hum50 = (
        sine(0.1, fs, 40, 1.0),
        sine(10.0, fs, 40, 0.5),
        sine(60.0, fs, 40, 0.5),
        sine(50.0, fs, 40, 0.5, phase=1.0),
    )
    y = preprocess_recording(np.stack([wander + signal + hum60, signal + hum50]), fs, MV)
    middle = slice(5 * fs, 35 * fs)  # away from the filter's edge transients
    assert amplitude_at(y[0, middle], 10.0, fs) == pytest.approx(0.5, rel=0.03)
    assert amplitude_at(y[0, middle], 0.1, fs) < 0.01  # baseline wander 1 mV -> < 10 uV
    assert amplitude_at(y[0, middle], 60.0, fs) < 0.05 * 0.5  # 60 Hz mains cut by > 26 dB
    assert amplitude_at(y[1, middle], 50.0, fs) < 0.2 * 0.5  # 50 Hz mains cut by > 14 dB
    assert amplitude_at(y[1, middle], 10.0, fs) == pytest.approx(0.5, rel=0.03)


def test_flat_and_constant_leads_stay_zero():
    x = np.zeros((3, 5000), dtype=np.float32)
    x[1] = 2.5  # a DC offset only: nothing in the pass band
    x[2] = sine(10.0, 500, 10.0)
    for config in (PreprocessConfig(), PreprocessConfig(scaling="record"), MV):
        y = preprocess_recording(x, 500, config)
        assert np.isfinite(y).all()
        assert (y[0] == 0).all()
        assert np.abs(y[1]).max() < 1e-3
        assert np.abs(y[2]).max() > 0.5


def test_non_finite_samples_are_interpolated():
    fs = 500
    clean = np.stack([sine(10.0, fs, 10.0), sine(3.0, fs, 10.0), sine(5.0, fs, 10.0)])
    x = clean.copy()
    x[0, 2000:2003] = np.nan  # a short gap: interpolation hides it
    x[1, ::97] = np.inf
    x[1, 5] = -np.inf
    x[2] = np.nan  # nothing finite: the lead becomes zeros
    x[0, 0] = np.nan  # an edge: held at the nearest finite value
    y = preprocess_recording(x, fs)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert (y[2] == 0).all()
    reference = preprocess_recording(clean, fs)
    assert np.corrcoef(y[0], reference[0])[0, 1] > 0.999
    assert np.corrcoef(y[1], reference[1])[0, 1] > 0.99


def test_input_is_not_modified():
    x = np.stack([sine(10.0, 360, 5.0), sine(10.0, 360, 5.0)])
    x[0, 10] = np.nan
    before = x.copy()
    preprocess_recording(x, 360)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("fs", [257, 360, 500, 1000])
@pytest.mark.parametrize("num_samples", [0, 1, 2, 10])
def test_tiny_records(fs, num_samples):
    x = np.random.default_rng(num_samples).standard_normal((12, num_samples)).astype(np.float32)
    y = preprocess_recording(x, fs)
    assert y.dtype == np.float32
    assert y.shape == (12, math.ceil(num_samples * 500 / fs))
    assert np.isfinite(y).all()


def test_scaling_is_robust_to_a_spike():
    fs = 500
    rng = np.random.default_rng(0)
    lead = sine(1.2, fs, 10.0, 1.0) + sine(15.0, fs, 10.0, 0.3) + 0.02 * rng.standard_normal(5000).astype(np.float32)
    spiked = lead.copy()
    spiked[2500] = 1000.0  # an electrode pop of 1 V
    config = PreprocessConfig()
    y_clean = preprocess_recording(lead[None], fs, config)[0]
    y_spiked = preprocess_recording(spiked[None], fs, config)[0]
    assert np.abs(y_spiked).max() <= config.clip
    far = np.r_[0:2000, 3000:5000]  # 1 s away from the pop the lead is (almost) unchanged
    np.testing.assert_allclose(y_spiked[far], y_clean[far], atol=0.05)  # without clip_outliers: 0.5
    assert 0.5 < 1.4826 * np.median(np.abs(y_clean)) < 1.5  # the robust scale is ~1


def test_saturated_lead_is_bounded():
    fs = 500
    x = np.clip(sine(1.0, fs, 10.0, 20.0), -5.0, 5.0)  # an amplifier at its rails most of the time
    x[3000:4000] = 5.0
    config = PreprocessConfig(clip=10.0)
    y = preprocess_recording(x[None], fs, config)
    assert np.isfinite(y).all() and np.abs(y).max() <= config.clip


def test_record_scaling_keeps_lead_ratios_and_none_keeps_millivolts():
    fs = 500
    base = sine(10.0, fs, 10.0, 1.0) + sine(1.5, fs, 10.0, 0.4)
    x = np.stack([base, 3.0 * base, -0.5 * base])
    middle = slice(1000, 4000)
    y = preprocess_recording(x, fs, PreprocessConfig(scaling="record"))
    np.testing.assert_allclose(y[1, middle], 3.0 * y[0, middle], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y[2, middle], -0.5 * y[0, middle], rtol=1e-4, atol=1e-4)
    y = preprocess_recording(x, fs, MV)
    assert amplitude_at(y[1, middle], 10.0, fs) == pytest.approx(3.0, rel=0.03)
    y = preprocess_recording(x, fs, PreprocessConfig(scaling="lead"))
    np.testing.assert_allclose(y[1, middle], y[0, middle], rtol=1e-4, atol=1e-4)


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="num_leads, num_samples"):
        preprocess_recording(np.zeros(100, dtype=np.float32), 500)
    with pytest.raises(ValueError, match="dtype"):
        preprocess_recording(np.array([["a", "b"]]), 500)
    with pytest.raises(ValueError, match="sampling rate"):
        preprocess_recording(np.zeros((2, 100), dtype=np.float32), 0)


def test_config_round_trip_and_validation():
    config = PreprocessConfig(target_fs=250, high_cut_hz=45.0, scaling="record")
    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PreprocessConfig.from_dict({"target_fs": 250}) == PreprocessConfig(target_fs=250)
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessConfig.from_dict({**config.to_dict(), "notch_hz": 50})
    with pytest.raises(ValueError, match="high_cut_hz"):
        PreprocessConfig(target_fs=64)  # 40 Hz is above the 32 Hz Nyquist frequency
    with pytest.raises(ValueError, match="scaling"):
        PreprocessConfig(scaling="zscore")
    with pytest.raises(ValueError, match="target_fs"):
        PreprocessConfig(target_fs=500.5)


def test_window_starts_cover_start_and_end():
    starts = window_starts(1000, 256, 0.5)
    assert list(starts) == [0, 128, 256, 384, 512, 640, 744]  # the last window ends at the record's end
    covered = np.zeros(1000, dtype=bool)
    for start in starts:
        covered[start : start + 256] = True
    assert covered.all()
    assert list(window_starts(1000, 256, overlap=0.0)) == [0, 256, 512, 744]
    assert list(window_starts(100, 256)) == [0] and list(window_starts(256, 256)) == [0]  # one, padded if short


def test_window_starts_respect_maximum_on_a_long_record():
    starts = window_starts(30 * 60 * 500, 4096, overlap=0.5, max_windows=32)  # 30 minutes at 500 Hz
    assert len(starts) == 32 and starts[0] == 0 and starts[-1] == 30 * 60 * 500 - 4096
    steps = np.diff(starts)
    assert steps.max() - steps.min() <= 1  # evenly spaced


@settings(max_examples=40, deadline=None)
@given(
    num_leads=st.integers(1, 3),
    num_samples=st.integers(0, 3000),
    fs=st.sampled_from([100, 128, 250, 257, 360, 500, 1000, 256.7]),
    target_fs=st.sampled_from([250, 500]),
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e4]),
)
def test_any_record_gives_finite_bounded_float32(num_leads, num_samples, fs, target_fs, scale):
    config = PreprocessConfig(target_fs=target_fs)
    x = (scale * np.random.default_rng(num_samples).standard_normal((num_leads, num_samples))).astype(np.float32)
    y = preprocess_recording(x, fs, config)
    assert y.dtype == np.float32
    assert y.shape == (num_leads, resampled_length(num_samples, fs, target_fs))
    assert np.isfinite(y).all() and np.abs(y).max(initial=0) <= config.clip


def load_sample_record(path):
    """Minimal reader for the test only (records.py owns real reading): int16 .mat values / gain in mV."""
    lines = path.with_suffix(".hea").read_text().splitlines()
    num_leads, fs = int(lines[0].split()[1]), float(lines[0].split()[2])
    gains = [float(line.split()[2].split("/")[0].split("(")[0]) for line in lines[1 : 1 + num_leads]]
    values = scipy.io.loadmat(path.with_suffix(".mat"))["val"].astype(np.float32)
    return values / np.array(gains, dtype=np.float32)[:, None], fs


def test_real_records_are_scaled_to_unit_robust_std(sample_dir):
    config = PreprocessConfig(scaling="lead")
    for header in sorted(sample_dir.glob("*.hea"))[::5]:
        signal_mv, fs = load_sample_record(header)
        y = preprocess_recording(signal_mv, fs, config)
        assert y.dtype == np.float32 and np.isfinite(y).all()
        assert y.shape == (signal_mv.shape[0], resampled_length(signal_mv.shape[1], fs, config.target_fs))
        robust = 1.4826 * np.median(np.abs(y), axis=1)
        live = np.abs(signal_mv).max(axis=1) > 0
        assert np.all((robust[live] > 0.8) & (robust[live] < 1.2)), header.name
        assert (np.abs(y) >= config.clip).mean() < 1e-3, header.name  # R peaks are kept, not clipped


def test_real_records_stay_in_millivolts_by_default(sample_dir):
    config = PreprocessConfig()
    assert config.scaling == "none"
    for header in sorted(sample_dir.glob("*.hea"))[::10]:
        signal_mv, fs = load_sample_record(header)
        y = preprocess_recording(signal_mv, fs, config)
        peak_to_peak = np.percentile(y, 99.5, axis=1) - np.percentile(y, 0.5, axis=1)
        live = np.abs(signal_mv).max(axis=1) > 0
        # Physical ECG amplitudes survive: QRS complexes of roughly 0.1-6 mV, nothing clipped.
        assert np.all((peak_to_peak[live] > 0.05) & (peak_to_peak[live] < 8)), header.name
        assert (np.abs(y) >= config.clip).mean() == 0, header.name
