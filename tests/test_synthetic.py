"""The synthetic generator writes valid Challenge records, and every label it gives is visible in the signal.

The measurements below are deliberately simple (R-peak detection, median beats, areas, extrema in windows); the
class tests show that each label moves its measurement across the clinical threshold while unlabelled records stay
on the normal side, i.e. the classes are distinguishable from the signal alone.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat
from scipy.ndimage import median_filter, uniform_filter1d
from scipy.signal import butter, filtfilt, find_peaks

import helper_code
from ecgmamba import synthetic
from ecgmamba.records import TWELVE_LEADS
from ecgmamba.synthetic import (AF, IAVB, LAD, LBBB, LEARNABLE_CLASSES, LQRSV, PAC, PACED, PVC, RAD, RBBB, RHYTHMS,
                                SB, SR, STACH, TINV, generate_dataset, generate_record, validate_labels, write_record)

ROOT = Path(__file__).resolve().parents[1]
I, II, III, AVR, AVL, AVF, V1, V2, V3, V4, V5, V6 = range(12)


def record(labels, seed=0, fs=500, duration_s=10.0, **options):
    signal, got, _, _ = generate_record(np.random.default_rng(seed), fs, duration_s, labels, **options)
    assert set(got) >= set(labels)
    return signal


def clean_record(labels, seed=0, fs=500, **options):
    """The same record without noise: noise is drawn last, so everything else is identical."""
    return record(labels, seed, fs, noise_level=0.0, **options)


# ----------------------------------------------------------------------------------------------------------------------
# Measurements: rhythm ones work on noisy records, morphology ones on noise-free beats (no baseline to estimate).


def r_peaks(signal, fs):
    """Beat times (samples): peaks of the 5-30 Hz amplitude envelope of all leads together that reach 40 % of a
    typical QRS (the 80th percentile of all envelope peaks, so that a few large ectopic beats do not set it)."""
    b, a = butter(2, [5.0, 30.0], btype="bandpass", fs=fs)
    energy = (filtfilt(b, a, signal, axis=-1) ** 2).sum(axis=0)
    envelope = np.sqrt(np.maximum(uniform_filter1d(energy, int(0.06 * fs)), 0.0))  # no rounding below 0
    candidates, _ = find_peaks(envelope, distance=int(0.25 * fs))
    typical = np.percentile(envelope[candidates], 80)
    return candidates[envelope[candidates] > 0.4 * typical]


def beats(signal, fs, peaks, before=0.6, after=0.6):
    """Beats (num_beats, leads, samples) cut around each peak, aligned on the maximum of the spatial magnitude."""
    w = int(0.06 * fs)
    out = []
    for p in peaks:
        if p - w < 0 or p + w > signal.shape[1]:
            continue
        q = p - w + int(np.argmax((signal[:, p - w:p + w] ** 2).sum(axis=0)))
        if q - int(before * fs) >= 0 and q + int(after * fs) <= signal.shape[1]:
            out.append(signal[:, q - int(before * fs):q + int(after * fs)])
    return np.array(out)


def median_beat(signal, fs, before=0.6, after=0.6):
    return np.median(beats(signal, fs, r_peaks(signal, fs), before, after), axis=0)


def median_rr(signal, fs):
    return float(np.median(np.diff(r_peaks(signal, fs)))) / fs


def heart_rate(signal, fs):
    return 60.0 / median_rr(signal, fs)


def rr_variation(signal, fs):
    """Mean absolute successive RR difference over the mean RR: 0.01-0.04 in sinus rhythm, 0.1-0.4 in AF."""
    rr = np.diff(r_peaks(signal, fs))
    return np.mean(np.abs(np.diff(rr))) / np.mean(rr)


def qrs_span(beat, fs, centre):
    """(onset, offset) samples of the QRS: where the spatial magnitude of the beat minus its 60 ms moving average
    (which keeps the fast QRS and drops the slow P and T waves) exceeds 10 % of its peak near `centre`."""
    fast = beat - uniform_filter1d(beat, int(0.06 * fs), axis=1)
    lo = centre - int(0.08 * fs)
    magnitude = np.sqrt((fast ** 2).sum(axis=0))[lo:centre + int(0.16 * fs)]
    above = np.flatnonzero(magnitude > 0.1 * magnitude.max())
    return lo + above[0], lo + above[-1] + 1


def qrs_width(beat, fs, centre):
    onset, offset = qrs_span(beat, fs, centre)
    return (offset - onset - 1) / fs


def limb_qrs_amplitude(beat, fs, centre):
    """Largest QRS peak-to-peak amplitude over the six limb leads (mV)."""
    window = beat[:6, slice(*qrs_span(beat, fs, centre))]
    return float(np.max(window.max(axis=1) - window.min(axis=1)))


def qrs_axis(beat, fs, centre):
    """Frontal QRS axis (degrees) from the net QRS areas of leads I and aVF."""
    window = slice(*qrs_span(beat, fs, centre))
    return float(np.degrees(np.arctan2(beat[AVF, window].sum(), beat[I, window].sum())))


def t_polarity(beat, fs, centre, lead, rr):
    """Sign of the largest deflection from 100 ms after the R peak to 60 % of the RR interval (before the next P)."""
    window = beat[lead, centre + int(0.1 * fs):centre + int(min(0.45, 0.6 * rr) * fs)]
    return float(np.sign(window[np.argmax(np.abs(window))]))


def p_wave(beat, fs, centre, lead=II, earliest=0.45):
    """(P-peak-to-R interval in s, P amplitude in mV) from the largest deflection 60 ms to `earliest` s before R."""
    window = beat[lead, centre - int(earliest * fs):centre - int(0.06 * fs)]
    k = int(np.argmax(np.abs(window)))
    return (len(window) - k + int(0.06 * fs)) / fs, float(window[k])


# ----------------------------------------------------------------------------------------------------------------------
# Files


def test_files_are_challenge_records(tmp_path):
    ids = generate_dataset(tmp_path, 8, seed=3, fs="mixed", duration_s="mixed")
    assert ids == [f"SYN{i:05d}" for i in range(1, 9)]
    assert sorted(os.listdir(tmp_path)) == sorted([i + ".hea" for i in ids] + [i + ".mat" for i in ids])
    for record_id in ids:
        val = loadmat(tmp_path / f"{record_id}.mat")["val"]
        assert val.dtype == np.int16 and val.shape[0] == 12
        with open(tmp_path / f"{record_id}.hea") as f:
            lines = f.read().splitlines()
        name, num_leads, fs, num_samples = lines[0].split(" ")
        assert (name, num_leads, int(num_samples)) == (record_id, "12", val.shape[1])
        assert int(fs) in synthetic.MIXED_RATES
        assert 5.0 <= val.shape[1] / int(fs) <= 30.0
        checksums = (val.astype(np.int64).sum(axis=1) + 32768) % 65536 - 32768
        for i, line in enumerate(lines[1:13]):
            fields = line.split(" ")
            assert fields == [f"{record_id}.mat", "16+24", "1000/mV", "16", "0", str(val[i, 0]), str(checksums[i]),
                              "0", TWELVE_LEADS[i]]
        assert lines[13].startswith("#Age: ") and 18 <= int(lines[13][6:]) <= 95
        assert lines[14] in ("#Sex: Male", "#Sex: Female")
        assert lines[15].startswith("#Dx: ") and set(lines[15][5:].split(",")) <= set(LEARNABLE_CLASSES)
        assert lines[16:] == ["#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]


def test_header_layout_matches_a_real_record(sample_dir, tmp_path):
    """Same line count, field count per line and comment keys as a real Challenge header."""
    real = (sample_dir / "JS20000.hea").read_text().splitlines()
    generate_dataset(tmp_path, 1, seed=0)
    ours = (tmp_path / "SYN00001.hea").read_text().splitlines()
    assert len(ours) == len(real)
    assert [len(line.split(" ")) for line in ours[:13]] == [len(line.split(" ")) for line in real[:13]]
    assert [line.split(" ")[-1] for line in ours[1:13]] == [line.split(" ")[-1] for line in real[1:13]]
    assert [line.split(":")[0] for line in ours[13:]] == [line.split(":")[0] for line in real[13:]]
    real_val = loadmat(sample_dir / "JS20000.mat")["val"]
    our_val = loadmat(tmp_path / "SYN00001.mat")["val"]
    assert (our_val.dtype, our_val.shape) == (real_val.dtype, real_val.shape)


def test_helper_code_and_wfdb_read_the_records(tmp_path):
    import wfdb

    signal, labels, age, sex = generate_record(np.random.default_rng(5), 257, 12.0, [AF, RBBB])
    write_record(tmp_path, "SYN00042", signal, 257, labels, age, sex, gain=500.0)
    header = helper_code.load_header(str(tmp_path / "SYN00042.hea"))
    leads = helper_code.get_leads(header)
    assert leads == TWELVE_LEADS and helper_code.get_recording_id(header) == "SYN00042"
    assert (helper_code.get_frequency(header), helper_code.get_num_samples(header)) == (257, signal.shape[1])
    assert list(helper_code.get_adc_gains(header, leads)) == [500.0] * 12
    assert list(helper_code.get_baselines(header, leads)) == [0.0] * 12
    assert helper_code.get_labels(header) == labels
    assert (helper_code.get_age(header), helper_code.get_sex(header)) == (age, sex)
    val = helper_code.load_recording(str(tmp_path / "SYN00042.mat"))
    assert val.dtype == np.int16 and val.shape == (12, signal.shape[1])
    np.testing.assert_allclose(val / 500.0, signal, atol=0.5 / 500.0 + 1e-6)

    digital = wfdb.rdrecord(str(tmp_path / "SYN00042"), physical=False)
    assert digital.fs == 257 and digital.sig_name == list(TWELVE_LEADS) and digital.adc_gain == [500.0] * 12
    np.testing.assert_array_equal(digital.d_signal.T, val)
    assert [c % 65536 for c in digital.checksum] == digital.calc_checksum()  # WFDB writes them signed
    assert digital.init_value == list(val[:, 0])
    physical = wfdb.rdrecord(str(tmp_path / "SYN00042"))
    np.testing.assert_allclose(physical.p_signal.T, val / 500.0, atol=1e-9)


def test_limb_leads_obey_einthoven_and_goldberger(tmp_path):
    generate_dataset(tmp_path, 4, seed=11, fs="mixed")
    for name in sorted(os.listdir(tmp_path)):
        if name.endswith(".mat"):
            v = loadmat(tmp_path / name)["val"].astype(np.float64)
            assert np.max(np.abs(v[III] - (v[II] - v[I]))) <= 1
            assert np.max(np.abs(v[AVR] + (v[I] + v[II]) / 2)) <= 1
            assert np.max(np.abs(v[AVL] - (v[I] - v[II] / 2))) <= 1
            assert np.max(np.abs(v[AVF] - (v[II] - v[I] / 2))) <= 1


def test_same_seed_gives_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_dataset(a, 5, seed=7, fs="mixed", duration_s="mixed")
    generate_dataset(b, 5, seed=7, fs="mixed", duration_s="mixed")
    generate_dataset(c, 5, seed=8, fs="mixed", duration_s="mixed")
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) == sorted(os.listdir(c))
    assert all((a / name).read_bytes() == (b / name).read_bytes() for name in names)
    assert any((a / name).read_bytes() != (c / name).read_bytes() for name in names)


def test_fixed_rate_and_duration(tmp_path):
    ids = generate_dataset(tmp_path, 2, seed=0, fs=1000, duration_s=6.0, prefix="T")
    assert ids == ["T00001", "T00002"]
    assert loadmat(tmp_path / "T00002.mat")["val"].shape == (12, 6000)
    assert (tmp_path / "T00002.hea").read_text().startswith("T00002 12 1000 6000\n")


# ----------------------------------------------------------------------------------------------------------------------
# Labels


def test_drawn_labels_are_never_contradictory():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        labels = synthetic.draw_labels(rng)
        seen.update(labels)
        assert sum(code in RHYTHMS for code in labels) == 1
        assert labels == validate_labels(labels)
        if AF in labels:
            assert not {SR, SB, STACH, PAC, IAVB} & set(labels)
        if PACED in labels:
            assert labels == [PACED]
        assert not {RBBB, LBBB} <= set(labels) and not {LAD, RAD} <= set(labels)
    assert seen == set(LEARNABLE_CLASSES) - {synthetic.SA}  # sinus arrhythmia is the hard mode's


def test_contradictory_or_unknown_labels_are_refused():
    for labels in ([AF, SR], [AF, PAC], [AF, IAVB], [SR, SB], [PACED, LBBB], [RBBB, LBBB], [LAD, RAD],
                   [TINV, LBBB], [STACH, IAVB], ["12345"]):
        with pytest.raises(ValueError, match="labels"):
            generate_record(np.random.default_rng(0), labels=labels)
    with pytest.raises(ValueError, match="heart_rate"):
        generate_record(np.random.default_rng(0), labels=[SB], heart_rate=75)
    assert validate_labels([RBBB]) == [SR, RBBB]


def test_prevalence_steers_the_label_mix(tmp_path):
    rng = np.random.default_rng(1)
    only_af = {SR: 0, SB: 0, STACH: 0, PACED: 0, AF: 1.0, PVC: 1.0}
    for _ in range(20):
        assert synthetic.draw_labels(rng, only_af)[:1] == [AF] and PVC in synthetic.draw_labels(rng, only_af)
    with pytest.raises(ValueError, match="prevalence"):
        synthetic.draw_labels(rng, {"999": 0.5})


# ----------------------------------------------------------------------------------------------------------------------
# Each class is visible in the signal


def test_heart_rate_separates_bradycardia_sinus_rhythm_and_tachycardia():
    for seed in range(4):
        assert heart_rate(record([SB], seed), 500) < 60
        assert 60 < heart_rate(record([SR], seed), 500) < 100
        assert heart_rate(record([STACH], seed), 500) > 100
        assert heart_rate(record([SB], seed, fs=257), 257) < 60
        assert heart_rate(record([STACH], seed, fs=1000), 1000) > 100


def test_atrial_fibrillation_is_irregular_without_p_waves():
    fs, centre = 500, 300
    for seed in range(4):
        assert rr_variation(record([AF], seed), fs) > 0.08 > 0.05 > rr_variation(record([SB], seed), fs)
        # Where a sinus P wave would be, 60-250 ms before the R peak.
        assert abs(p_wave(median_beat(clean_record([AF], seed, heart_rate=75.0), fs), fs, centre, II, 0.25)[1]) < 0.06
        assert p_wave(median_beat(clean_record([SR], seed, heart_rate=75.0), fs), fs, centre, II, 0.25)[1] > 0.08


def test_first_degree_av_block_has_a_long_pr_interval():
    fs, centre = 500, 300
    for seed in range(4):
        block, _ = p_wave(median_beat(clean_record([SR, IAVB], seed, heart_rate=65.0), fs), fs, centre)
        normal, _ = p_wave(median_beat(clean_record([SR], seed, heart_rate=65.0), fs), fs, centre)
        assert block > 0.2 > 0.18 > normal  # P peak to R peak; the PR interval proper is ~10 ms longer


def test_bundle_branch_blocks_have_wide_qrs_of_their_own_shape():
    fs, centre = 500, 300
    for seed in range(4):
        normal = median_beat(clean_record([SR], seed), fs)
        right = median_beat(clean_record([SR, RBBB], seed), fs)
        left = median_beat(clean_record([SR, LBBB], seed), fs)
        assert qrs_width(normal, fs, centre) < 0.115
        assert qrs_width(right, fs, centre) > 0.125 and qrs_width(left, fs, centre) > 0.125
        late = slice(qrs_span(right, fs, centre)[1] - int(0.04 * fs), qrs_span(right, fs, centre)[1])  # last 40 ms
        assert right[V1, late].sum() > 0 and right[I, late].sum() < 0  # R' in V1, broad S in I
        qrs = slice(centre - int(0.08 * fs), centre + int(0.12 * fs))
        assert left[V1, qrs].sum() < 0 and left[I, qrs].sum() > 0 and left[V6, qrs].sum() > 0  # QS in V1, R in I/V6


def premature_beats(signal, fs):
    """(peaks, indices of the beats that come < 85 % of the median RR after the previous one)."""
    peaks = r_peaks(signal, fs)
    early = np.flatnonzero(np.diff(peaks) < 0.85 * np.median(np.diff(peaks))) + 1
    return peaks, early[early < len(peaks) - 1]


def test_ventricular_premature_beats_are_wide_with_a_compensatory_pause():
    fs = 500
    for seed in range(4):
        peaks, early = premature_beats(record([SR, PVC], seed, heart_rate=70.0), fs)
        assert len(early) >= 1
        rr = np.median(np.diff(peaks))
        for j in early:  # the beat after the PVC comes when the replaced sinus beat's successor was due
            assert abs((peaks[j + 1] - peaks[j - 1]) / (2 * rr) - 1) < 0.06
        clean = clean_record([SR, PVC], seed, heart_rate=70.0)
        ectopic = np.median(beats(clean, fs, peaks[early], 0.3, 0.4), axis=0)
        sinus = np.median(beats(clean, fs, np.delete(peaks, early), 0.3, 0.4), axis=0)
        assert qrs_width(ectopic, fs, int(0.3 * fs)) > 0.125 > 0.115 > qrs_width(sinus, fs, int(0.3 * fs))


def test_atrial_premature_beats_have_an_abnormal_p_wave_and_reset_the_sinus_node():
    fs, centre = 500, int(0.5 * 500)
    for seed in range(4):
        peaks, early = premature_beats(record([SR, PAC], seed, heart_rate=60.0), fs)
        assert len(early) >= 1
        rr = np.median(np.diff(peaks))
        for j in early:  # the next beat comes one RR after the PAC: no compensatory pause
            assert (peaks[j + 1] - peaks[j - 1]) / (2 * rr) < 0.93
        clean = clean_record([SR, PAC], seed, heart_rate=60.0)
        ectopic = np.median(beats(clean, fs, peaks[early], 0.5, 0.4), axis=0)
        sinus = np.median(beats(clean, fs, np.delete(peaks, early), 0.5, 0.4), axis=0)
        assert qrs_width(ectopic, fs, centre) < 0.115  # conducted normally
        ectopic_p = p_wave(ectopic, fs, centre, earliest=0.2)[1]
        sinus_p = p_wave(sinus, fs, centre, earliest=0.2)[1]
        assert ectopic_p < -0.03 and sinus_p > 0.08  # ectopic atrial focus: P inverted in II


def test_low_voltage_axis_and_t_inversion_follow_their_labels():
    fs, centre = 500, 300
    for seed in range(4):
        normal = median_beat(clean_record([SR], seed), fs)
        low = median_beat(clean_record([SR, LQRSV], seed), fs)
        assert limb_qrs_amplitude(low, fs, centre) < 0.5 < limb_qrs_amplitude(normal, fs, centre)
        assert -30 < qrs_axis(normal, fs, centre) < 90
        assert qrs_axis(median_beat(clean_record([SR, LAD], seed), fs), fs, centre) < -30
        assert qrs_axis(median_beat(clean_record([SR, RAD], seed), fs), fs, centre) > 90
        inverted = clean_record([STACH, TINV], seed)
        rr = median_rr(inverted, fs)
        for lead in (II, V5):
            assert t_polarity(median_beat(inverted, fs), fs, centre, lead, rr) < 0
            assert t_polarity(normal, fs, centre, lead, 0.8) > 0


def pacing_spikes(signal, fs):
    """Samples where some lead jumps away from both neighbours by > 0.4 mV (a stimulus artefact)."""
    curvature = np.abs(signal[:, 1:-1] - 0.5 * (signal[:, :-2] + signal[:, 2:])).max(axis=0)
    spikes = np.flatnonzero(curvature > 0.4) + 1
    return spikes[np.diff(spikes, prepend=-fs) > int(0.02 * fs)]  # one per artefact


def test_paced_beats_follow_stimulus_spikes():
    fs = 500
    for seed in range(4):
        paced = record([PACED], seed)
        peaks = r_peaks(median_filter(paced, size=(1, 3)), fs)  # QRS detection ignores the artefacts
        spikes = pacing_spikes(paced, fs)
        assert len(spikes) >= len(peaks) - 1
        for p in peaks[1:-1]:  # a spike within 120 ms before every QRS
            assert np.any((spikes < p) & (spikes > p - int(0.12 * fs)))
        for labels in ([SR], [SR, LBBB], [AF, PVC], [STACH, RBBB]):
            assert len(pacing_spikes(record(labels, seed), fs)) == 0


def test_random_records_measure_as_labelled():
    """Across random records, axis, low voltage and T polarity measured from the signal match the labels."""
    fs, centre = 500, 300
    rng = np.random.default_rng(2021)
    for _ in range(40):
        signal, labels, _, _ = generate_record(rng, fs, 10.0, noise_level=0.0)
        if PACED in labels:  # measure the paced QRS, not the stimulus artefact
            signal = median_filter(signal, size=(1, 3))
        beat = median_beat(signal, fs)
        axis = qrs_axis(beat, fs, centre)
        assert (axis < -30) == (LAD in labels), (labels, axis)
        assert (axis > 90) == (RAD in labels), (labels, axis)
        assert (limb_qrs_amplitude(beat, fs, centre) < 0.5) == (LQRSV in labels), labels
        if not {RBBB, LBBB, PACED} & set(labels):
            assert (t_polarity(beat, fs, centre, II, median_rr(signal, fs)) < 0) == (TINV in labels), labels


def test_noise_is_moderate_and_keeps_the_lead_identities():
    noisy, clean = record([SR], 9), clean_record([SR], 9)
    noise = noisy.astype(np.float64) - clean
    assert 0.002 < np.std(np.diff(noise, axis=1)) < 0.05  # white noise, tens of microvolts
    assert 0.005 < np.std(noise) < 0.4  # plus baseline wander
    np.testing.assert_allclose(noise[III], noise[II] - noise[I], atol=1e-5)
    np.testing.assert_allclose(noise[AVF], noise[II] - noise[I] / 2, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def test_command_line_writes_records(tmp_path):
    command = [sys.executable, "-m", "ecgmamba.synthetic", str(tmp_path), "--num-records", "3", "--seed", "4",
               "--fs", "mixed", "--duration", "mixed"]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == [f"SYN0000{i}.{ext}" for i in (1, 2, 3) for ext in ("hea", "mat")]
    other = tmp_path / "same"
    generate_dataset(other, 3, seed=4, fs="mixed", duration_s="mixed")
    assert (other / "SYN00003.mat").read_bytes() == (tmp_path / "SYN00003.mat").read_bytes()


@pytest.mark.parametrize("bad, message", [
    (["--fs", "fast"], "--fs"), (["--duration", "2"], "--duration"), (["--num-records", "-1"], "--num-records"),
    (["--prevalence", "1=2"], "unknown class"), (["--noise", "-1"], "noise_level"), (["--prefix", "a b"], "prefix"),
])
def test_command_line_explains_bad_arguments(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as stop:
        synthetic.main([str(tmp_path / "out")] + bad)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.startswith("usage: python -m ecgmamba.synthetic") and message in error
    with pytest.raises(SystemExit):
        synthetic.main([])
    assert "out_dir" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Hard mode: the benchmark that tells models apart


def test_hard_mode_leaves_the_default_records_alone_and_adds_sinus_arrhythmia(tmp_path):
    generate_dataset(str(tmp_path / "a"), 6, seed=9, fs="mixed", duration_s="mixed")
    generate_dataset(str(tmp_path / "b"), 6, seed=9, fs="mixed", duration_s="mixed", hard=False)
    for f in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    drawn = [generate_record(np.random.default_rng(s), 250, 10.0)[1] for s in range(200)]
    assert not any(synthetic.SA in labels for labels in drawn)  # never outside hard mode
    hard = [generate_record(np.random.default_rng(s), 250, 10.0, hard=True)[1] for s in range(200)]
    with_sa = [labels for labels in hard if synthetic.SA in labels]
    assert 10 <= len(with_sa) and all(set(labels) & set(synthetic.SINUS_RHYTHMS) for labels in with_sa)
    with pytest.raises(ValueError, match="sinus arrhythmia needs a sinus rhythm"):
        validate_labels([AF, synthetic.SA])


def test_hard_sinus_arrhythmia_is_only_a_little_stronger_than_normal_variability():
    fs = 250
    sa = [rr_variation(record([SR, synthetic.SA], s, fs, 30.0, hard=True, heart_rate=70.0), fs) for s in range(6)]
    normal = [rr_variation(record([SR], s, fs, 30.0, hard=True, heart_rate=70.0), fs) for s in range(6)]
    assert np.mean(sa) > 1.3 * np.mean(normal)  # the label is there in the signal...
    assert max(normal) > 0.5 * min(sa)          # ...but not far from normal heart-rate variability


def test_hard_ectopic_beats_are_less_premature_and_reported_where_they_are():
    fs = 500
    couplings = []
    for seed in range(12):
        signal, labels, _, _, events = generate_record(np.random.default_rng(seed), fs, 30.0, [SR, PAC, PVC],
                                                       heart_rate=65.0, hard=True, return_events=True)
        assert events["pac"] and events["pvc"]
        peaks = r_peaks(signal, fs) / fs
        for t in events["pac"] + events["pvc"]:
            assert np.min(np.abs(peaks - t)) < 0.06  # each reported ectopic beat is a detected beat
            j = int(np.argmin(np.abs(peaks - t)))
            if 1 <= j < len(peaks) - 1:
                couplings.append((peaks[j] - peaks[j - 1]) / np.median(np.diff(peaks)))
    assert max(couplings) > 0.8 and min(couplings) < 0.7  # up to 85 % of the RR interval, down to the usual
    # every beat is reported with its kind, the ectopic ones among them
    beats, kinds = np.array(events["beats"]), events["kinds"]
    assert len(beats) == len(kinds) and np.all(np.diff(beats) > 0) and set(kinds) == {"N", "S", "V"}
    assert list(beats[[k == "S" for k in kinds]]) == events["pac"]
    assert list(beats[[k == "V" for k in kinds]]) == events["pvc"]
    assert np.max(np.abs(peaks[:, None] - beats[None, (beats > 0.2) & (beats < 29.8)]).min(axis=0)) < 0.06


def test_hard_thresholds_are_reached_from_both_sides():
    fs = 250
    rates = {rhythm: [heart_rate(record([rhythm], s, fs, 20.0, hard=True), fs) for s in range(40)]
             for rhythm in (SR, SB, STACH)}
    assert max(rates[SB]) > 57 and min(rates[SR]) < 65 and max(rates[SR]) > 94 and min(rates[STACH]) < 106
    # the labels still follow the rate: the drawn mean rate sits on its side; the measured (median-RR) one may
    # stray by heart-rate variability, which is what makes the borderline records hard
    assert max(rates[SB]) < 61.5 and min(rates[SR]) > 59.5 and max(rates[SR]) < 101.5 and min(rates[STACH]) > 99.5
