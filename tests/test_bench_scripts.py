"""The prepared GPU check and the scale rehearsal: they run, and say so when there is nothing to measure."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def run(args, **env):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_gpu_check_without_a_gpu_says_so_and_exits_2(tmp_path):
    result = run([sys.executable, "bench/gpu_check.py"])
    assert result.returncode == 2 and "no CUDA GPU is visible" in result.stderr
    result = run(["bash", "scripts/gpu_check.sh", "torch", str(tmp_path)], PYTHON=sys.executable)
    assert result.returncode == 2 and "no CUDA GPU visible" in result.stderr


def test_step_profile_groups_a_toy_step_and_the_groups_add_up(tmp_path):
    out = tmp_path / "profile.md"
    result = run([sys.executable, "bench/profile_step.py", "--device", "cpu", "--tiny", "--preset", "small",
                  "--batch", "2", "--steps", "1", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "### Training step profile: `small`, batch 2, fp32, CPU" in text
    total = float(text.split("per step under the profiler: ")[1].split(" ms")[0])
    groups = {row.split("|")[1].strip(): float(row.split("|")[2]) for row in text.splitlines()
              if row.startswith("| ") and row.rstrip().endswith("% |")}
    # the numba scan's forward and backward are autograd functions of their own, so they show as such
    assert groups["selective scan, forward"] > 0 and groups["selective scan, backward"] > 0
    assert sum(groups.values()) == pytest.approx(total, rel=0.01, abs=0.05)
    assert "| heaviest kernels | group | ms per step |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_step_profile_without_a_gpu_says_so_and_exits_2():
    result = run([sys.executable, "bench/profile_step.py"])
    assert result.returncode == 2 and "no CUDA GPU is visible" in result.stderr


def test_gpu_check_runs_every_step_at_toy_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "check.md"
    result = run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for heading in ("### Scan parity with the CPU kernel", "### Scan speed", "### `paper` and `large` presets",
                    "### train_model.py end to end", "| cache build |", "| threshold tuning |"):
        assert heading in text, heading
    assert "FAILED" not in text
    rows = [line for line in text.splitlines() if line.startswith(("| `paper` |", "| `large` |"))]
    assert [row.split("|")[3].strip() for row in rows] == ["off", "on", "off", "on"]
    assert all(float(row.split("|")[6]) > 0 for row in rows)  # the probe's activation estimate
    assert (tmp_path / "train_model_torch.log").read_text().strip()  # train_model.py's output, as it ran
    parity = [line for line in text.splitlines() if line.startswith("| chunked PyTorch | float32")]
    assert parity and all(float(cell) < 1e-5 for cell in parity[0].strip("|").split("|")[2:])


def test_scale_rehearsal_mix_follows_the_public_data():
    from bench_scale import FULL_SIZE, SOURCES, duration_of, source_counts

    assert sum(s[2] for s in SOURCES) == FULL_SIZE == 88253
    assert list(source_counts(FULL_SIZE)) == [s[2] for s in SOURCES]
    for n in (10, 1000, 16000):
        counts = source_counts(n)
        assert counts.sum() == n and counts[[s[0] for s in SOURCES].index("INCART")] >= 2
    import numpy as np

    rng = np.random.default_rng(0)
    cpsc = [duration_of("cpsc", rng) for _ in range(2000)]
    assert 6.0 <= min(cpsc) and max(cpsc) <= 60.0 and 14.0 < float(np.mean(cpsc)) < 18.0


def test_rhythm_oracle_reads_the_spacing_of_conducted_beats_only():
    from bench_rhythm_oracle import rr_variation

    regular = np.arange(0.0, 10.0, 0.8)
    assert rr_variation(regular, "N" * len(regular)) == pytest.approx(0.0, abs=1e-9)
    early = regular.copy()
    early[5:] -= 0.2                                  # a PAC at beat 5, the sinus node reset after it
    kinds = "NNNNNSNNNNNNN"
    assert rr_variation(early, kinds) == pytest.approx(0.0, abs=1e-9)   # the intervals touching it are left out
    assert rr_variation(early, "N" * len(early)) > 0.05                # counted, it would look like arrhythmia
    breathing = np.cumsum(0.8 * (1 + 0.08 * np.sin(2 * np.pi * 0.25 * regular)))
    assert rr_variation(breathing, "N" * len(breathing)) > 0.04


def test_rhythm_oracle_length_ranges_parse_and_refuse_impossible_lengths():
    import argparse

    from bench_rhythm_oracle import length_range

    assert length_range("6-10") == (6.0, 10.0) and length_range("10") == (10.0, 10.0)
    for bad in ("5-10", "10-6", "a-b", "6-4000"):
        with pytest.raises(argparse.ArgumentTypeError):
            length_range(bad)


def test_paired_gap_is_zero_for_equal_readings_and_resamples_patients_together():
    from bench_short_records import paired_gap
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < 0.3).astype(float)
    noisy = labels + rng.normal(0.0, 0.6, labels.shape)
    short, long, gap, interval = paired_gap(labels, noisy, noisy, [0, 1, 2], resamples=50)
    assert short == long and gap == 0.0 and list(interval) == [0.0, 0.0]  # same readings: no gap in any resample
    short, long, gap, (low, high) = paired_gap(labels, noisy, labels, [0, 1], resamples=200)
    assert long == 1.0 and gap == pytest.approx(1.0 - short) and 0.0 < low < gap < high


def test_hard_benchmark_runs_end_to_end_at_toy_sizes(tmp_path):
    """bench_quality trains both models (one with noise and time warps), reads the short-record set and saves the weights
    it measured."""
    out = tmp_path / "table.md"
    spec = "small:depth=1,noise_augment=0.1,time_warp=0.3,rhythm_target=0.5"
    result = run([sys.executable, "bench/bench_quality.py", "--train-records", "24", "--test-records", "12",
                  "--short-test-records", "6", "--epochs", "1", "--models", spec, "resnet",
                  "--readings", "whole", "--train-eval", "10", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{spec}: AUPRC on 10 of its training records, 12 leads: PAC " in out.read_text()
    assert f"{spec}: SA AUPRC by sinus rate (SA records of all), 12 leads: normal rate " in out.read_text()
    rows = [line for line in out.read_text().splitlines() if line.startswith(f"| {spec} |")]
    assert len(rows) == 5 and all(len(row.strip("|").split("|")) == 17 for row in rows)
    assert len(list((tmp_path / "work" / "test_short_6").glob("*.hea"))) == 6
    assert (tmp_path / "work" / "small_depth=1,noise_augment=0.1,time_warp=0.3,rhythm_target=0.5.e1.pt").exists()
    assert (tmp_path / "work" / "resnet.e1.pt").exists()
    # bench_short_records reads the saved network on the same data: by length band, and long records cut short
    lengths = run([sys.executable, "bench/bench_short_records.py", "--work", str(tmp_path / "work"), "--model", spec,
                   "--epochs", "1", "--cuts", "6", "10", "--bootstrap", "20", "--paired", "6",
                   "--out", str(tmp_path / "lengths.md")])
    assert lengths.returncode == 0, lengths.stderr[-3000:]
    text = (tmp_path / "lengths.md").read_text()
    assert "| record length | records | SA records | rhythm AUPRC | SA AUPRC |" in text
    assert "| AUPRC | gap | 95 % interval |" in text and "| rhythm classes | " in text
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| first") or
            line.startswith("| whole")] == ["first 6 s", "first 10 s", "whole"]
    paired = [line.split("|")[1].strip() for line in text.splitlines()
              if line.startswith("| ") and "6-10 s | 20-60 s" not in line and line.count("|") == 7]
    assert paired == ["rhythm classes", "PAC", "PVC", "SA", "AF", "SA, RR-interval ceiling"]
    for header in (tmp_path / "work" / "test_paired_6" / "short").glob("*.hea"):  # one patient, two lengths
        short, long = header.read_text().splitlines(), (header.parent.parent / "long" / header.name).read_text()
        assert [line for line in short if line.startswith("#")] == [line for line in long.splitlines()
                                                                    if line.startswith("#")]
        (_, _, fs, n), (_, _, long_fs, long_n) = short[0].split()[:4], long.split()[:4]
        assert fs == long_fs and 6.0 <= int(n) / int(fs) <= 10.0 and 20.0 <= int(long_n) / int(fs) <= 60.0
    larger = run([sys.executable, "bench/bench_short_records.py", "--work", str(tmp_path / "work"), "--model", spec,
                  "--epochs", "1", "--short-records", "8", "--cuts", "6", "--bootstrap", "0"])
    assert larger.returncode == 0, larger.stderr[-3000:]
    assert "8 short ones (test_short_8)" in larger.stdout and "| AUPRC | gap |" not in larger.stdout
    smaller, extended = tmp_path / "work" / "test_short_6", tmp_path / "work" / "test_short_8"
    assert len(list(extended.glob("*.hea"))) == 8
    for header in smaller.glob("*.hea"):  # a larger short set extends the smaller one with the same records
        assert (extended / header.name).read_text() == header.read_text()
    twins = run([sys.executable, "bench/bench_sa_twins.py", "--work", str(tmp_path / "work"), "--model", spec,
                 "--epochs", "1", "--train-records", "24", "--first", "24", "--fresh", "12", "--curve", "1"])
    assert twins.returncode == 0, twins.stderr[-3000:]
    assert [line.split("|")[1].strip() for line in twins.stdout.splitlines() if line.startswith("| ")
            and line.count("|") == 8][1:] == ["training", "fresh"]
    rows = [line.split("|")[1].strip() for line in twins.stdout.splitlines() if line.startswith("| ")]
    assert rows[-4:] == ["depth (of RR)", "normal rate", "bradycardia", "tachycardia"]
    short = run([sys.executable, "bench/bench_quality.py", "--train-records", "24", "--test-records", "12",
                 "--short-test-records", "6", "--epochs", "2", "--models", spec, "--train-seed", "5", "--train-only",
                 "--work", str(tmp_path / "work")])
    assert short.returncode == 0, short.stderr[-3000:]
    assert (tmp_path / "work" / "small_depth=1,noise_augment=0.1,time_warp=0.3,rhythm_target=0.5.e2.seed5.pt").exists()
    assert "| (not read) |" in short.stdout and "by sinus rate" not in short.stdout
    missing = run([sys.executable, "bench/bench_short_records.py", "--work", str(tmp_path / "work"), "--model", spec,
                   "--train-seed", "7"])
    assert missing.returncode != 0 and ".seed7.pt: no such weights" in missing.stderr
    assert "--train-seed 7" in missing.stderr
    other = run([sys.executable, "bench/bench_quality.py", "--train-records", "24", "--test-records", "12",
                 "--seed", "1", "--work", str(tmp_path / "work")])
    assert other.returncode != 0 and "holds data generated with" in other.stderr   # not a silent reuse


def test_sa_twins_regenerate_the_training_record_and_change_only_the_rhythm():
    from bench_sa_twins import modulation_depth, twin_pair
    from ecgmamba import synthetic
    from ecgmamba.synthetic import SA, generate_record

    children = np.random.SeedSequence(0).spawn(40)
    pairs = [(child, twin_pair(child, 10.0)) for child in children]
    pairs = [(child, pair) for child, pair in pairs if pair is not None]
    assert pairs and any(SA in labels for _, (_, labels, _, _) in pairs)
    for child, (fs, labels, original, twin) in pairs:
        assert twin.shape == original.shape and not np.array_equal(twin, original)
        rng = np.random.default_rng(child)  # what the twin relies on: labels given draw the rest as labels drawn
        assert rng.choice(synthetic.MIXED_RATES, p=synthetic.MIXED_RATE_WEIGHTS) == fs
        assert synthetic.draw_labels(rng, synthetic.HARD_PREVALENCE, True) == labels
        assert np.array_equal(generate_record(rng, fs, 10.0, labels=labels, hard=True)[0], original)
    before = dict(synthetic.RESPIRATORY_MODULATION)
    with pytest.raises(RuntimeError):
        with modulation_depth(0.08):
            assert set(synthetic.RESPIRATORY_MODULATION.values()) == {(0.08, 0.08)}
            raise RuntimeError("leaves the generator as it was")
    assert synthetic.RESPIRATORY_MODULATION == before
    with modulation_depth(0.02):  # a depth fixed by hand overrides what the labels would draw
        low = generate_record(np.random.default_rng(3), 500, 10.0, labels=[synthetic.SR, SA], hard=True)[0]
    normal = generate_record(np.random.default_rng(3), 500, 10.0, labels=[synthetic.SR, SA], hard=True)[0]
    assert not np.array_equal(low, normal)


def test_ensemble_members_parse_and_every_pair_is_averaged():
    import argparse

    from bench_ensemble import ensemble_rows, parse_member

    assert parse_member("small:time_warp=0.3,depth=[3,2]@4") == ("small:time_warp=0.3,depth=[3,2]", 4)
    with pytest.raises(argparse.ArgumentTypeError, match="SPEC@SEED"):
        parse_member("small:time_warp=0.3")
    members = [np.full((2, 3), v) for v in (0.1, 0.4, 0.7)]
    rows = ensemble_rows(members, lambda p: float(p.mean()))
    assert [group for group, _ in rows] == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert np.allclose([value for _, value in rows], [0.1, 0.4, 0.7, 0.25, 0.4, 0.55, 0.4])
    assert [group for group, _ in ensemble_rows(members[:2], np.mean)] == [(0,), (1,), (0, 1)]
    from bench_quality import weights_path

    assert weights_path("w", "small:a=1", 5, 0) == os.path.join("w", "small_a=1.seed5.pt")
    assert weights_path("w", "small:a=1", 0, 0, epochs=15) == os.path.join("w", "small_a=1.e15.pt")
    assert weights_path("w", "small:a=1", 5, 0, epochs=15) == os.path.join("w", "small_a=1.e15.seed5.pt")


def test_a_spec_sets_the_peak_learning_rate_and_each_network_keeps_its_own_default():
    from bench_quality import peak_lr

    assert peak_lr("small:time_warp=0.3,lr=0.0015") == 0.0015
    assert peak_lr("small:time_warp=0.3") == 3e-3
    assert peak_lr("resnet") == 1e-3
