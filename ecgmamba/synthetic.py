"""Synthetic 12-lead ECGs written exactly like PhysioNet/CinC Challenge 2021 records.

Why: the demo, the tests and CI need labelled data that anyone can regenerate in seconds, with no download and no
credentials, and whose labels are actually visible in the signal so that a model can learn them.

The model: one heart dipole (x left, y inferior, z anterior) built as a sum of bi-Gaussian waves (P, Q, R, S, T and
the extra waves of bundle branch blocks, ectopic and paced beats), projected onto leads I, II and V1..V6. The other
four limb leads are derived from I and II with the Einthoven/Goldberger identities, so they hold exactly before
rounding to int16. Noise is added per lead before that derivation, as it would be at the electrodes.

Each label is a measurable property of the signal: heart rate for sinus rhythm / bradycardia / tachycardia, RR
irregularity and f-waves without P waves for atrial fibrillation, PR interval for first-degree AV block, QRS width
and shape for bundle branch blocks, premature beats and the pause after them for PVC/PAC, limb-lead QRS amplitude for
low voltages, the I/aVF QRS-area axis for axis deviations, T polarity for T-wave inversion and spikes for pacing.
Records without a label stay clearly on the normal side of each of these thresholds.
"""

import argparse
import math
import os
import sys

import numpy as np
from scipy.io import savemat

from ecgmamba.records import TWELVE_LEADS

# SNOMED CT codes of the Challenge 2021 scored classes this generator can produce.
SR = "426783006"  # sinus rhythm
SB = "426177001"  # sinus bradycardia
STACH = "427084000"  # sinus tachycardia
AF = "164889003"  # atrial fibrillation
IAVB = "270492004"  # first-degree AV block
RBBB = "59118001"  # right bundle branch block
LBBB = "164909002"  # left bundle branch block
PVC = "427172004"  # premature ventricular contractions
PAC = "284470004"  # premature atrial contractions
LQRSV = "251146004"  # low QRS voltages
LAD = "39732003"  # left axis deviation
RAD = "47665007"  # right axis deviation
TINV = "59931005"  # T-wave inversion
PACED = "10370003"  # pacing rhythm
SA = "427393009"  # sinus arrhythmia (hard mode only)

LEARNABLE_CLASSES = (SR, SB, STACH, AF, IAVB, RBBB, LBBB, PVC, PAC, LQRSV, LAD, RAD, TINV, PACED, SA)
RHYTHMS = (SR, SB, STACH, AF, PACED)  # exactly one per record
SINUS_RHYTHMS = (SR, SB, STACH)

# Rhythm codes: relative weights of the (mutually exclusive) rhythm draw. Other codes: probability that a record whose
# rhythm and other labels allow the code carries it.
DEFAULT_PREVALENCE = {
    SR: 0.40, SB: 0.20, STACH: 0.15, AF: 0.15, PACED: 0.10,
    IAVB: 0.20, RBBB: 0.12, LBBB: 0.10, PVC: 0.12, PAC: 0.15, LQRSV: 0.10, LAD: 0.12, RAD: 0.10, TINV: 0.15,
    SA: 0.0,
}
# Hard mode (generate_record(hard=True)): a benchmark that can tell models apart. Sinus arrhythmia joins; every
# measured property reaches its label's threshold from both sides; ectopic beats are less premature and some PACs
# have a sinus-like P wave; unlabelled confounders (borderline-wide QRS, incomplete-RBBB-like terminal waves, flat
# T waves); more baseline wander and bursts of muscle noise.
HARD_PREVALENCE = {SA: 0.15}
HARD_HEART_RATE_RANGES = {SR: (60.5, 99.5), SB: (40.0, 59.5), STACH: (100.5, 150.0), AF: (60.0, 150.0),
                          PACED: (60.0, 80.0)}
# Respiratory RR modulation (fraction of the RR interval): normal heart-rate variability, and sinus arrhythmia.
RESPIRATORY_MODULATION = {"normal": (0.01, 0.025), "hard normal": (0.01, 0.04), "sinus arrhythmia": (0.06, 0.11)}

# Heart rate ranges (bpm) drawn for each rhythm; margins keep the labels unambiguous.
HEART_RATE_RANGES = {SR: (62.0, 98.0), SB: (42.0, 57.0), STACH: (103.0, 140.0), AF: (65.0, 140.0), PACED: (60.0, 80.0)}
# Heart rates (bpm, inclusive) a caller may ask for with each rhythm.
HEART_RATE_LIMITS = {SR: (60.0, 100.0), SB: (30.0, 59.9), STACH: (100.1, 180.0), AF: (40.0, 180.0),
                     PACED: (40.0, 120.0)}

MIXED_RATES = (257, 500, 1000)
MIXED_RATE_WEIGHTS = (0.15, 0.60, 0.25)

# Lead vectors for I, II and V1..V6 in dipole coordinates; V-leads sit in the horizontal plane, closer to the heart.
_LIMB_VECTORS = np.array([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0]])
_PRECORDIAL = [(115, -0.05, 1.2), (95, 0.0, 2.0), (75, 0.1, 2.2), (55, 0.2, 2.0), (30, 0.25, 1.6), (5, 0.3, 1.2)]
_PRECORDIAL_VECTORS = np.array([[g * math.cos(math.radians(a)), g * y, g * math.sin(math.radians(a))]
                                for a, y, g in _PRECORDIAL])
LEAD_VECTORS = np.vstack([_LIMB_VECTORS, _PRECORDIAL_VECTORS])  # (8, 3): I, II, V1..V6
_SIX_LIMB = np.array([[1.0, 0.0], [0.5, 0.5 * math.sqrt(3)], [-0.5, 0.5 * math.sqrt(3)],
                      [-0.75, -0.25 * math.sqrt(3)], [0.75, -0.25 * math.sqrt(3)], [0.0, 0.5 * math.sqrt(3)]])

# A wave is one row: (time of peak relative to the beat's R peak in s, sigma before, sigma after, x, y, z in mV).
_DT, _SL, _SR, _VEC = 0, 1, 2, slice(3, 6)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frontal(angle_deg, z=0.0):
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a), z])


def _dipole_angle_for_axis(axis_deg):
    """Dipole angle whose I/aVF projections read as `axis_deg` (aVF sees only sqrt(3)/2 of the y component)."""
    a = math.radians(axis_deg)
    return math.atan2(math.sin(a) / (math.sqrt(3) / 2), math.cos(a))


def _rotate_frontal(waves, angle):
    c, s = math.cos(angle), math.sin(angle)
    x, y = waves[:, 3].copy(), waves[:, 4].copy()
    waves[:, 3] = c * x - s * y
    waves[:, 4] = s * x + c * y


def _evaluate(waves, t):
    """The dipole (3, len(t)) of a few waves on a time grid; used to measure templates, not to render records."""
    d = t[None, :] - waves[:, _DT, None]
    sigma = np.where(d < 0, waves[:, _SL, None], waves[:, _SR, None])
    return waves[:, _VEC].T @ np.exp(-0.5 * (d / sigma) ** 2)


def _qrs_onset(waves):
    return float(np.max(-(waves[:, _DT] - 2.5 * waves[:, _SL])))


# ----------------------------------------------------------------------------------------------------------------------
# Labels


def _check_prevalence(prevalence):
    merged = dict(DEFAULT_PREVALENCE)
    if prevalence:
        for code, weight in prevalence.items():
            if code not in DEFAULT_PREVALENCE:
                raise ValueError(f"prevalence: unknown class {code!r}; "
                                 f"known classes are {', '.join(LEARNABLE_CLASSES)}")
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"prevalence: weight of {code} must be a finite number >= 0, got {weight!r}")
            if code not in RHYTHMS and weight > 1:
                raise ValueError(f"prevalence: {code} is a probability and must be <= 1, got {weight!r}")
        merged.update(prevalence)
    if sum(merged[code] for code in RHYTHMS) <= 0:
        raise ValueError("prevalence: at least one rhythm class (SR, SB, STach, AF, PR) needs a weight > 0")
    return merged


def validate_labels(labels):
    """Labels in canonical order; ValueError for unknown codes and for combinations that cannot coexist."""
    labels = list(dict.fromkeys(str(code).strip() for code in labels))
    unknown = [code for code in labels if code not in LEARNABLE_CLASSES]
    if unknown:
        raise ValueError(f"labels: unknown class(es) {unknown}; known classes are {', '.join(LEARNABLE_CLASSES)}")
    rhythms = [code for code in labels if code in RHYTHMS]
    if len(rhythms) > 1:
        raise ValueError(f"labels: more than one rhythm {rhythms}; choose one of {', '.join(RHYTHMS)}")
    rhythm = rhythms[0] if rhythms else SR
    problems = []
    if IAVB in labels and rhythm not in (SR, SB):
        problems.append("first-degree AV block needs sinus rhythm or sinus bradycardia")
    if PAC in labels and rhythm not in SINUS_RHYTHMS:
        problems.append("PAC needs a sinus rhythm")
    if PVC in labels and rhythm == PACED:
        problems.append("PVC is not generated with pacing")
    if RBBB in labels and LBBB in labels:
        problems.append("RBBB and LBBB are exclusive")
    if LAD in labels and RAD in labels:
        problems.append("left and right axis deviation are exclusive")
    if SA in labels and rhythm not in SINUS_RHYTHMS:
        problems.append("sinus arrhythmia needs a sinus rhythm")
    if rhythm == PACED and len(labels) > 1:
        problems.append("pacing rhythm is generated alone")
    if TINV in labels and (RBBB in labels or LBBB in labels):
        problems.append("T-wave inversion is not generated with a bundle branch block (its T waves are discordant)")
    if problems:
        raise ValueError(f"labels {labels}: " + "; ".join(problems))
    if not rhythms:
        labels.append(SR)
    return [code for code in LEARNABLE_CLASSES if code in labels]


def draw_labels(rng, prevalence=None, hard=False):
    """A random, never contradictory label set: one rhythm, then compatible modifiers (sinus arrhythmia only in
    hard mode, drawn last so that the normal mode's draws are unchanged)."""
    p = _check_prevalence(prevalence)
    weights = np.array([p[code] for code in RHYTHMS], dtype=np.float64)
    rhythm = RHYTHMS[rng.choice(len(RHYTHMS), p=weights / weights.sum())]
    labels = [rhythm]
    if rhythm == PACED:
        return labels
    u = rng.random(7)
    if rhythm in (SR, SB) and u[0] < p[IAVB]:
        labels.append(IAVB)
    if rhythm in SINUS_RHYTHMS and u[1] < p[PAC]:
        labels.append(PAC)
    if u[2] < p[PVC]:
        labels.append(PVC)
    if u[3] < p[RBBB]:
        labels.append(RBBB)
    elif u[3] < p[RBBB] + p[LBBB]:
        labels.append(LBBB)
    if u[4] < p[LAD]:
        labels.append(LAD)
    elif u[4] < p[LAD] + p[RAD]:
        labels.append(RAD)
    if u[5] < p[LQRSV]:
        labels.append(LQRSV)
    if RBBB not in labels and LBBB not in labels and u[6] < p[TINV]:
        labels.append(TINV)
    if hard and rhythm in SINUS_RHYTHMS and rng.random() < p[SA]:
        labels.append(SA)
    return validate_labels(labels)


# ----------------------------------------------------------------------------------------------------------------------
# Beat morphology


def _qrs_template(rng, conduction):
    """Waves of the dominant QRS for 'normal', 'rbbb', 'lbbb' or 'paced' conduction, before axis rotation."""
    amp = rng.uniform(0.9, 1.6)
    if conduction == "lbbb":  # septum activated right-to-left: no septal q, broad notched R, deep QS in V1
        notch = rng.uniform(0.05, 0.06)
        return np.array([
            [0.0, rng.uniform(0.016, 0.019), 0.017, *(0.85 * amp * _unit([0.75, 0.45, -0.55]))],
            [notch, 0.017, rng.uniform(0.017, 0.021), *(0.9 * amp * _unit([0.8, 0.3, -0.7]))],
        ])
    if conduction == "paced":  # right-ventricular pacing: broad, LBBB-like
        return np.array([
            [0.0, rng.uniform(0.022, 0.027), 0.022, *(amp * _unit([0.6, 0.4, -0.75]))],
            [rng.uniform(0.045, 0.055), 0.02, 0.022, *(0.6 * amp * _unit([0.8, 0.2, -0.5]))],
        ])
    waves = [
        [-rng.uniform(0.018, 0.022), 0.007, 0.007, *(rng.uniform(0.1, 0.25) * amp * _unit([-0.45, 0.15, 0.88]))],
        [0.0, rng.uniform(0.009, 0.012), rng.uniform(0.009, 0.012), *(amp * _frontal(50.0, -0.3))],
        [rng.uniform(0.021, 0.026), 0.009, 0.009, *(rng.uniform(0.25, 0.5) * amp * _unit([-0.35, -0.4, -0.85]))],
    ]
    if conduction == "rbbb":  # late right-anterior activation: R' in V1, broad S in I and V6
        waves.append([rng.uniform(0.06, 0.075), rng.uniform(0.015, 0.019), rng.uniform(0.016, 0.02),
                      *(rng.uniform(0.55, 0.8) * amp * _unit([rng.uniform(-0.6, -0.4), rng.uniform(-0.2, 0.2), 0.85]))])
    return np.array(waves)


def _set_axis(waves, axis_deg, fixed=0):
    """Rotate the QRS in the frontal plane so the net I/aVF area points at `axis_deg`.

    The last `fixed` waves keep their direction (the right-anterior terminal forces of RBBB); the others turn.
    """
    area = waves[:, 3:5] * (0.5 * (waves[:, _SL] + waves[:, _SR]))[:, None]
    turning, still = area[:len(waves) - fixed].sum(axis=0), area[len(waves) - fixed:].sum(axis=0)
    target = _dipole_angle_for_axis(axis_deg)
    if not fixed:
        _rotate_frontal(waves, target - math.atan2(turning[1], turning[0]))
        return
    angles = np.linspace(-np.pi, np.pi, 721)  # search: the fixed waves make the net angle non-linear in the turn
    net_x = np.cos(angles) * turning[0] - np.sin(angles) * turning[1] + still[0]
    net_y = np.sin(angles) * turning[0] + np.cos(angles) * turning[1] + still[1]
    error = np.abs((np.arctan2(net_y, net_x) - target + np.pi) % (2 * np.pi) - np.pi)
    best = int(np.argmin(error))
    if error[best] > math.radians(0.5):  # terminal forces too strong to steer around: weaken them
        waves[len(waves) - fixed:, _VEC] *= 0.85
        return _set_axis(waves, axis_deg, fixed if waves[-1, 3] ** 2 + waves[-1, 4] ** 2 > 0.01 else 0)
    _rotate_frontal(waves[:len(waves) - fixed], angles[best])


def _limb_peak_to_peak(waves):
    t = np.arange(-0.15, 0.25, 0.001)
    limb = _SIX_LIMB @ _evaluate(waves, t)[:2]
    return float(np.max(limb.max(axis=1) - limb.min(axis=1)))


def _t_wave(rng, labels, qrs, conduction):
    """T-wave dipole and shape: concordant when conduction is normal, discordant to the late QRS otherwise."""
    amp = rng.uniform(0.2, 0.4)
    if conduction == "rbbb":
        vec = amp * -_unit(qrs[-1, _VEC])
    elif conduction in ("lbbb", "paced"):
        net = qrs[:, _VEC].T @ (qrs[:, _SL] + qrs[:, _SR])
        vec = amp * -_unit(net)
    else:
        vec = amp * _unit(_frontal(rng.uniform(25.0, 65.0), rng.uniform(0.05, 0.3)))
        if TINV in labels:
            vec = -rng.uniform(0.5, 1.0) * vec
    return vec, rng.uniform(0.05, 0.07), rng.uniform(0.03, 0.045)


def _pvc_template(rng):
    """A unifocal ectopic ventricular beat: wide, tall, no P wave, discordant T."""
    if rng.random() < 0.5:
        direction = _unit(np.array([0.7, 0.4, -0.6]) + rng.normal(0.0, 0.15, 3))  # right-ventricular origin
    else:
        direction = _unit(np.array([-0.5, 0.5, 0.7]) + rng.normal(0.0, 0.15, 3))  # left-ventricular origin
    amp = rng.uniform(1.8, 3.0)
    second = _unit(direction + rng.normal(0.0, 0.3, 3))
    qrs = np.array([
        [0.0, rng.uniform(0.022, 0.028), 0.024, *(amp * direction)],
        [rng.uniform(0.04, 0.05), 0.02, rng.uniform(0.02, 0.025), *(0.5 * amp * second)],
    ])
    t_wave = np.array([[rng.uniform(0.3, 0.34), 0.07, 0.05, *(-rng.uniform(0.35, 0.6) * direction)]])
    return qrs, t_wave


# ----------------------------------------------------------------------------------------------------------------------
# Rhythm


def _beat_times(rng, rhythm, heart_rate, end, modulation=RESPIRATORY_MODULATION["normal"]):
    """R-peak times from -1.5 s to past `end`; sinus rhythm carries respiratory (`modulation`: the range of its
    depth, a fraction of RR) and slow heart-rate variability."""
    rr0 = 60.0 / heart_rate
    count = int(math.ceil((end + 1.5) / (0.45 * rr0))) + 4
    k = np.arange(count)
    if rhythm == AF:
        rr = rr0 * np.exp(rng.normal(0.0, rng.uniform(0.16, 0.28), count))
        rr = np.clip(rr, max(0.3, 0.5 * rr0), 1.8 * rr0)
    elif rhythm == PACED:
        rr = np.full(count, rr0) + rng.normal(0.0, 0.001, count)
    else:
        resp = rng.uniform(0.15, 0.35)
        rr = rr0 * (1.0 + rng.uniform(*modulation) * np.sin(2 * np.pi * resp * k * rr0 + rng.uniform(0, 2 * np.pi))
                    + rng.uniform(0.0, 0.015) * np.sin(2 * np.pi * 0.1 * k * rr0 + rng.uniform(0, 2 * np.pi))
                    + rng.normal(0.0, 0.008, count))
    times = -1.5 + rng.uniform(0.0, 1.0) * rr0 + np.concatenate([[0.0], np.cumsum(rr[:-1])])
    return times


def _pick_ectopic(rng, times, duration, exclude=()):
    """Indices of premature beats: 1 to 1 + duration/8 beats whose neighbours are inside the record (so that the
    prematurity and the pause after it show), at least two beats apart and away from `exclude` where possible."""
    inside = np.flatnonzero((times[:-2] >= 0.3) & (times[2:] <= duration - 0.3)) + 1
    wanted = int(rng.integers(1, 2 + int(duration // 8)))
    for gap in (2, 1):
        candidates = [int(j) for j in inside if all(abs(int(j) - e) >= gap for e in exclude)]
        if candidates:
            break
    else:
        raise ValueError(f"a {duration:g} s record is too short for premature beats at this heart rate")
    chosen = []
    for j in rng.permutation(candidates):
        if all(abs(int(j) - c) >= 2 for c in chosen):
            chosen.append(int(j))
        if len(chosen) == wanted:
            break
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


def _render(n, fs, waves):
    """Sum of bi-Gaussian waves (rows of `waves`, times in s) into a (3, n) dipole, each wave only over +-4 sigma."""
    dipole = np.zeros((3, n))
    if len(waves) == 0:
        return dipole
    centre = waves[:, _DT] * fs
    sl, sr = waves[:, _SL] * fs, waves[:, _SR] * fs
    start = np.maximum(np.floor(centre - 4 * sl).astype(np.int64), 0)
    stop = np.minimum(np.ceil(centre + 4 * sr).astype(np.int64) + 1, n)
    keep = stop > start
    if not np.any(keep):
        return dipole
    centre, sl, sr, start, stop, vec = centre[keep], sl[keep], sr[keep], start[keep], stop[keep], waves[keep, _VEC]
    lengths = stop - start
    which = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths
    index = start[which] + (np.arange(which.size) - first[which])
    d = index - centre[which]
    g = np.exp(-0.5 * (d / np.where(d < 0, sl[which], sr[which])) ** 2)
    for axis in range(3):
        dipole[axis] = np.bincount(index, weights=g * vec[which, axis], minlength=n)
    return dipole


def _fibrillatory_waves(rng, n, fs):
    """Atrial f-waves: 4-9 Hz, wandering frequency and amplitude, seen most in V1 and the inferior leads."""
    t = np.arange(n) / fs
    freq = rng.uniform(5.0, 8.0) + 0.7 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(freq) / fs + rng.uniform(0, 2 * np.pi)
    wobble = np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 2 * np.pi))
    amp = rng.uniform(0.04, 0.1) * (1.0 + 0.4 * wobble)
    wave = amp * (np.sin(phase) + 0.3 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi)))
    return np.outer(_unit([-0.3, 0.6, 0.8]), wave)


def _noise(rng, n, fs, level, hard=False):
    """Per-lead white noise, baseline wander and sometimes mains interference for I, II, V1..V6 (mV); hard mode
    adds stronger wander and bursts of muscle (EMG) noise."""
    if level == 0:
        return np.zeros((8, n))
    t = np.arange(n) / fs
    # White noise, triangular rather than Gaussian: indistinguishable here and several times faster to draw.
    noise = (rng.random((8, n)) + rng.random((8, n)) - 1.0) * (math.sqrt(6.0) * rng.uniform(0.004, 0.015) * level)
    # Wander (breathing, electrode motion) shared by the leads in different proportions: 3 slow sources mixed.
    sources = np.sin(2 * np.pi * rng.uniform(0.05, 0.5, (3, 1)) * t + rng.uniform(0, 2 * np.pi, (3, 1)))
    noise += (rng.uniform(-0.1, 0.1, (8, 3)) * level) @ sources
    if rng.random() < 0.3:
        mains = 50.0 if rng.random() < 0.5 else 60.0
        noise += (rng.uniform(0.003, 0.02, (8, 1)) * level) * np.sin(2 * np.pi * mains * t + rng.uniform(0, 2 * np.pi))
    if hard:
        sources = np.sin(2 * np.pi * rng.uniform(0.05, 0.4, (2, 1)) * t + rng.uniform(0, 2 * np.pi, (2, 1)))
        noise += (rng.uniform(-0.25, 0.25, (8, 2)) * level) @ sources
        for _ in range(int(rng.integers(0, 2 + int(n / fs // 10)))):  # muscle bursts: 0.3-2 s of broadband noise
            start, length = int(rng.integers(0, n)), int(rng.uniform(0.3, 2.0) * fs)
            burst = rng.normal(0.0, 1.0, (8, min(length, n - start)))
            burst = np.diff(burst, axis=1, prepend=0.0)  # whitened towards high frequencies, as EMG is
            noise[:, start:start + burst.shape[1]] += rng.uniform(0.01, 0.04, (8, 1)) * level * burst
    return noise


def generate_record(rng, fs=500, duration_s=10.0, labels=None, *, prevalence=None, noise_level=1.0, heart_rate=None,
                    hard=False, return_events=False):
    """One synthetic 12-lead ECG.

    Returns (signal in mV as float32 (12, n) in the order I, II, III, aVR, aVL, aVF, V1..V6, labels, age, sex),
    and with return_events=True a fifth item: {"pac": [s], "pvc": [s], "beats": [s], "kinds": str}, the R-peak
    times of the ectopic beats, of every beat, and each beat's kind ('N' conducted, 'S' PAC, 'V' PVC).
    `labels` fixes the diagnoses (a sinus rhythm label is added when no rhythm is given); None draws them from
    `prevalence`. `heart_rate` (bpm) must agree with the rhythm label; None draws it. hard=True: the hard benchmark
    (see HARD_PREVALENCE); the default mode's records are unchanged by it.
    """
    rng = np.random.default_rng(rng)  # a Generator passes through; a seed makes one
    if not (isinstance(fs, (int, float, np.integer, np.floating)) and 100 <= fs <= 10000):
        raise ValueError(f"fs must be a sampling rate between 100 and 10000 Hz, got {fs!r}")
    if not (isinstance(duration_s, (int, float, np.integer, np.floating)) and 6.0 <= duration_s <= 3600.0):
        raise ValueError(f"duration_s must be between 6 and 3600 s, got {duration_s!r}")
    if not (isinstance(noise_level, (int, float, np.integer, np.floating)) and 0 <= noise_level <= 10):
        raise ValueError(f"noise_level must be between 0 and 10, got {noise_level!r}")
    if hard:
        prevalence = {**HARD_PREVALENCE, **(prevalence or {})}
    labels = draw_labels(rng, prevalence, hard) if labels is None else validate_labels(labels)
    rhythm = next(code for code in labels if code in RHYTHMS)
    if heart_rate is None:
        low, high = (HARD_HEART_RATE_RANGES if hard else HEART_RATE_RANGES)[rhythm]
        heart_rate = rng.uniform(low, min(high, 85.0) if IAVB in labels else high)  # keeps P waves off T waves
    else:
        low, high = HEART_RATE_LIMITS[rhythm]
        if not low <= heart_rate <= high:
            raise ValueError(f"heart_rate {heart_rate} bpm contradicts rhythm {rhythm} (needs {low:g}..{high:g} bpm)")
    n = int(round(duration_s * fs))

    # Patient and morphology.
    age = int(np.clip(rng.normal(62.0 if rhythm in (AF, PACED) or LBBB in labels else 52.0, 15.0), 18, 95))
    sex = "Male" if rng.random() < 0.52 else "Female"
    conduction = "paced" if rhythm == PACED else "rbbb" if RBBB in labels else "lbbb" if LBBB in labels else "normal"
    qrs = _qrs_template(rng, conduction)
    if LAD in labels:
        axis = rng.uniform(-85.0, -31.0) if hard else rng.uniform(-75.0, -40.0)
    elif RAD in labels:
        axis = rng.uniform(91.0, 160.0) if hard else rng.uniform(105.0, 150.0)
    else:
        axis = rng.uniform(-29.0, 89.0) if hard else rng.uniform(-15.0, 80.0)
    if hard and conduction == "normal" and rng.random() < 0.15:  # confounder: borderline-wide QRS, no label
        qrs[:, _SL:_SR + 1] *= rng.uniform(1.15, 1.3)
    _set_axis(qrs, axis, fixed=1 if conduction == "rbbb" else 0)
    voltage = _limb_peak_to_peak(qrs)
    damping = 1.0  # low voltage (effusion, obesity, emphysema) damps every wave, ectopic beats included
    if LQRSV in labels:
        damping = rng.uniform(0.2, 0.48 if hard else 0.42) / voltage
        qrs[:, _VEC] *= damping
    elif hard and (voltage < 0.52 or rng.random() < 0.3):  # normal voltage, down to just above 0.5 mV
        qrs[:, _VEC] *= rng.uniform(0.52, 0.9) / voltage
    elif voltage < 0.9:
        qrs[:, _VEC] *= rng.uniform(0.9, 1.3) / voltage
    if hard and conduction == "normal" and rng.random() < 0.12:  # confounder: incomplete-RBBB-like terminal R'
        amp = np.linalg.norm(qrs[1, _VEC])
        qrs = np.vstack([qrs, [rng.uniform(0.04, 0.05), 0.01, 0.012,
                               *(rng.uniform(0.1, 0.2) * amp * _unit([-0.5, 0.0, 0.85]))]])
    onset = _qrs_onset(qrs)
    t_vec, t_sl, t_sr = _t_wave(rng, labels, qrs, conduction)
    if hard and TINV not in labels and rng.random() < 0.15:  # confounder: flat, not inverted, T waves
        t_vec = t_vec * rng.uniform(0.05, 0.25)
    p_vec = rng.uniform(0.12, 0.22) * _unit(_frontal(rng.uniform(35.0, 70.0), rng.uniform(-0.1, 0.3)))
    if LQRSV in labels:
        t_vec, p_vec = t_vec * max(damping, 0.15), p_vec * max(damping, 0.3)
    t_delay = 0.0 if conduction == "normal" else 0.04
    t_scale = rng.uniform(0.24, 0.28)
    p_sigma = rng.uniform(0.018, 0.024)
    if hard:
        pr = rng.uniform(0.21, 0.30) if IAVB in labels else rng.uniform(0.12, 0.195)
    else:
        pr = rng.uniform(0.23, 0.34) if IAVB in labels else rng.uniform(0.12, 0.18)
    has_p = rhythm in SINUS_RHYTHMS or (rhythm == PACED and rng.random() < 0.5)

    # Beat sequence: 'N' conducted (sinus, AF or paced), 'S' PAC, 'V' PVC.
    modulation = RESPIRATORY_MODULATION["normal"]
    if hard:
        modulation = RESPIRATORY_MODULATION["sinus arrhythmia" if SA in labels else "hard normal"]
    times = _beat_times(rng, rhythm, heart_rate, duration_s, modulation)
    kinds = np.full(times.size, "N")
    pac_beats = []
    if PAC in labels:
        chosen = _pick_ectopic(rng, times, duration_s)
        for j in reversed(chosen):  # premature, then the sinus node resets: later beats move earlier
            rr = times[j] - times[j - 1]
            shift = (1.0 - rng.uniform(0.62, 0.85 if hard else 0.75)) * rr
            times[j:] -= shift
            kinds[j] = "S"
        pac_beats = chosen
        # Ectopic focus low in the atria: P inverted in the inferior leads, PR a little shorter.
        pac_p_vec = np.linalg.norm(p_vec) * _unit(_frontal(rng.uniform(-120.0, -60.0), rng.uniform(-0.2, 0.3)))
        if hard and rng.random() < 0.5:  # a focus near the sinus node: a P wave like the sinus one
            pac_p_vec = p_vec * rng.uniform(0.8, 1.1)
        pac_p_sigma = rng.uniform(0.015, 0.02)
        pac_pr = max(0.1, pr - rng.uniform(0.0, 0.03))
    if PVC in labels:
        chosen = _pick_ectopic(rng, times, duration_s, exclude=pac_beats)
        coupling = rng.uniform(0.5, 0.85) if hard else rng.uniform(0.45, 0.62)
        for j in chosen:  # replaces the sinus beat; the next sinus beat keeps its time: compensatory pause
            rr = times[j] - times[j - 1]
            times[j] = times[j - 1] + max(coupling * rr, min(0.36, 0.75 * rr))  # never on the preceding T peak
            kinds[j] = "V"
        pvc_qrs, pvc_t = _pvc_template(rng)
        pvc_qrs[:, _VEC] *= min(1.0, 1.5 * damping)
        pvc_t[:, _VEC] *= min(1.0, 1.5 * damping)
    keep = times < duration_s + 1.0
    times, kinds = times[keep], kinds[keep]
    rr_before = np.diff(times, prepend=times[0] - 60.0 / heart_rate)

    # Waves of every beat, stacked into one table and rendered at once.
    resp_rate, resp_depth, resp_phase = rng.uniform(0.15, 0.35), rng.uniform(0.02, 0.06), rng.uniform(0, 2 * np.pi)
    scale = 1.0 + resp_depth * np.sin(2 * np.pi * resp_rate * times + resp_phase)
    tables = []
    normal = kinds != "V"
    if np.any(normal):
        tn, sn = times[normal], scale[normal]
        block = np.repeat(qrs[None], tn.size, axis=0)
        block[:, :, _DT] += tn[:, None]
        block[:, :, _VEC] *= sn[:, None, None]
        tables.append(block.reshape(-1, 6))
        t_rows = np.empty((tn.size, 6))
        t_rows[:, _DT] = tn + t_delay + t_scale * np.sqrt(np.clip(rr_before[normal], 0.3, 2.0))
        t_rows[:, _SL], t_rows[:, _SR] = t_sl, t_sr
        t_rows[:, _VEC] = t_vec
        tables.append(t_rows)
    if has_p:
        sinus = kinds == "N"
        p_rows = np.empty((int(sinus.sum()), 6))
        p_rows[:, _DT] = times[sinus] - onset - pr + 2.5 * p_sigma
        p_rows[:, _SL], p_rows[:, _SR] = p_sigma, p_sigma
        p_rows[:, _VEC] = p_vec
        tables.append(p_rows)
    if PAC in labels:
        premature = kinds == "S"
        p_rows = np.empty((int(premature.sum()), 6))
        p_rows[:, _DT] = times[premature] - onset - pac_pr + 2.5 * pac_p_sigma
        p_rows[:, _SL], p_rows[:, _SR] = pac_p_sigma, pac_p_sigma
        p_rows[:, _VEC] = pac_p_vec
        tables.append(p_rows)
    if PVC in labels:
        tv = times[kinds == "V"]
        block = np.repeat(np.vstack([pvc_qrs, pvc_t])[None], tv.size, axis=0)
        block[:, :, _DT] += tv[:, None]
        tables.append(block.reshape(-1, 6))
    dipole = _render(n, fs, np.vstack(tables))
    if rhythm == AF:
        dipole += min(1.0, 1.5 * damping) * _fibrillatory_waves(rng, n, fs)
    if rhythm == PACED:  # one-sample stimulus artefacts before the paced QRS (and before the P wave when atrial)
        spike = rng.uniform(1.5, 4.0) * _unit(rng.normal(0.0, 1.0, 3))
        spikes = [(times - onset - 0.004, spike)]
        if has_p:
            spikes.append((times - onset - pr - 0.004, 0.5 * spike))
        for when, vec in spikes:
            index = np.round(when * fs).astype(np.int64)
            index = index[(index >= 0) & (index < n)]
            dipole[:, index] += vec[:, None]

    eight = LEAD_VECTORS @ dipole + _noise(rng, n, fs, noise_level, hard)
    lead_i, lead_ii = eight[0], eight[1]
    signal = np.empty((12, n), dtype=np.float32)
    signal[0], signal[1] = lead_i, lead_ii
    signal[2] = lead_ii - lead_i
    signal[3] = -0.5 * (lead_i + lead_ii)
    signal[4] = lead_i - 0.5 * lead_ii
    signal[5] = lead_ii - 0.5 * lead_i
    signal[6:] = eight[2:]
    if return_events:
        inside = (times >= 0) & (times < duration_s)
        events = {"pac": [float(t) for t in times[inside & (kinds == "S")]],
                  "pvc": [float(t) for t in times[inside & (kinds == "V")]],
                  "beats": [float(t) for t in times[inside]], "kinds": "".join(kinds[inside])}
        return signal, labels, age, sex, events
    return signal, labels, age, sex


# ----------------------------------------------------------------------------------------------------------------------
# Files


def _format_number(x):
    return np.format_float_positional(float(x), trim="-")


def write_record(directory, record_id, signal_mv, fs, labels, age, sex, gain=1000.0):
    """Write `<record_id>.hea` + `<record_id>.mat` (MATLAB v4, key 'val', int16) as the Challenge distributes them."""
    signal = np.asarray(signal_mv, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != len(TWELVE_LEADS) or signal.shape[1] < 1:
        raise ValueError(f"{record_id}: signal must have shape (12, num_samples), got {signal.shape}")
    if not np.all(np.isfinite(signal)):
        raise ValueError(f"{record_id}: signal has NaN or infinite values")
    if not (gain > 0 and math.isfinite(gain)):
        raise ValueError(f"{record_id}: gain must be a positive number, got {gain!r}")
    if not (fs > 0 and math.isfinite(fs)):
        raise ValueError(f"{record_id}: fs must be a positive number, got {fs!r}")
    digital = np.round(signal * gain)
    if digital.min() < -32768 or digital.max() > 32767:
        raise ValueError(f"{record_id}: signal exceeds the int16 range at gain {gain:g}/mV "
                         f"({signal.min():.2f}..{signal.max():.2f} mV); lower the gain")
    digital = digital.astype(np.int16)
    savemat(os.path.join(directory, record_id + ".mat"), {"val": digital}, format="4")

    # WFDB checksum: the 16-bit sum of each signal's samples, written as a signed value.
    checksums = (digital.astype(np.int64).sum(axis=1) + 32768) % 65536 - 32768
    lines = [f"{record_id} {len(TWELVE_LEADS)} {_format_number(fs)} {digital.shape[1]}"]
    for i, lead in enumerate(TWELVE_LEADS):
        lines.append(f"{record_id}.mat 16+24 {_format_number(gain)}/mV 16 0 {digital[i, 0]} {checksums[i]} 0 {lead}")
    age_text = "NaN" if age is None else _format_number(age)
    lines += [f"#Age: {age_text}", f"#Sex: {sex}", f"#Dx: {','.join(labels)}", "#Rx: Unknown", "#Hx: Unknown",
              "#Sx: Unknown"]
    with open(os.path.join(directory, record_id + ".hea"), "w", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def generate_dataset(directory, num_records, seed=0, fs=500, duration_s=10.0, prefix="SYN", prevalence=None,
                     noise_level=1.0, gain=1000.0, hard=False):
    """Write `num_records` records to `directory`; returns their ids.

    Record i depends only on (seed, i) and the options, so the same call writes byte-identical files.
    `fs` is a rate in Hz or "mixed" (257/500/1000 Hz); `duration_s` is seconds or "mixed" (60 % 10 s, else 6-30 s).
    The default prefix 'SYN' avoids the real source-database prefixes (A, Q, I, S, HR, E, JS).
    """
    if not (isinstance(num_records, (int, np.integer)) and num_records >= 0):
        raise ValueError(f"num_records must be an integer >= 0, got {num_records!r}")
    if fs != "mixed" and not isinstance(fs, (int, float, np.integer, np.floating)):
        raise ValueError(f"fs must be a number or 'mixed', got {fs!r}")
    if duration_s != "mixed" and not isinstance(duration_s, (int, float, np.integer, np.floating)):
        raise ValueError(f"duration_s must be a number or 'mixed', got {duration_s!r}")
    if not (isinstance(prefix, str) and prefix and prefix.replace("_", "").isalnum()):
        raise ValueError(f"prefix must be letters, digits or '_', got {prefix!r}")
    _check_prevalence(prevalence)
    os.makedirs(directory, exist_ok=True)
    record_ids = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(num_records)):
        rng = np.random.default_rng(child)
        record_fs = int(rng.choice(MIXED_RATES, p=MIXED_RATE_WEIGHTS)) if fs == "mixed" else fs
        if duration_s == "mixed":
            record_duration = 10.0 if rng.random() < 0.6 else float(rng.integers(6, 31))
        else:
            record_duration = duration_s
        signal, labels, age, sex = generate_record(rng, record_fs, record_duration, prevalence=prevalence,
                                                   noise_level=noise_level, hard=hard)
        record_id = f"{prefix}{i + 1:05d}"
        write_record(directory, record_id, signal, record_fs, labels, age, sex, gain=gain)
        record_ids.append(record_id)
    return record_ids


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def _rate_argument(text):
    if text == "mixed":
        return text
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer rate in Hz or 'mixed', got {text!r}") from None
    if not 100 <= rate <= 10000:
        raise argparse.ArgumentTypeError(f"rate must be between 100 and 10000 Hz, got {rate}")
    return rate


def _duration_argument(text):
    if text == "mixed":
        return text
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'mixed', got {text!r}") from None
    if not 6.0 <= seconds <= 3600.0:
        raise argparse.ArgumentTypeError(f"duration must be between 6 and 3600 s, got {text}")
    return seconds


def _count_argument(text):
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {count}")
    return count


def _prevalence_argument(text):
    prevalence = {}
    for item in text.split(","):
        code, sep, weight = item.partition("=")
        try:
            prevalence[code.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CODE=WEIGHT[,CODE=WEIGHT...], got {item!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"expected CODE=WEIGHT[,CODE=WEIGHT...], got {item!r}")
    try:
        _check_prevalence(prevalence)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return prevalence


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ecgmamba.synthetic",
        description="Write synthetic 12-lead ECGs as Challenge 2021 records (<id>.hea + <id>.mat).")
    parser.add_argument("out_dir", help="directory to write the records to (created if missing)")
    parser.add_argument("--num-records", type=_count_argument, default=100, metavar="N",
                        help="number of records (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed gives identical files (default 0)")
    parser.add_argument("--fs", type=_rate_argument, default=500, metavar="HZ|mixed",
                        help="sampling rate in Hz, or 'mixed' for 257/500/1000 Hz (default 500)")
    parser.add_argument("--duration", type=_duration_argument, default=10.0, metavar="SECONDS|mixed",
                        help="duration in seconds, or 'mixed' for 10 s and 6-30 s (default 10)")
    parser.add_argument("--prefix", default="SYN", help="record id prefix (default SYN)")
    parser.add_argument("--noise", type=float, default=1.0, help="noise level, 0 for clean signals (default 1)")
    parser.add_argument("--gain", type=float, default=1000.0, help="ADC gain in units per mV (default 1000)")
    parser.add_argument("--hard", action="store_true",
                        help="the hard benchmark: borderline findings, subtler ectopy, sinus arrhythmia, confounders")
    parser.add_argument("--prevalence", type=_prevalence_argument, default=None, metavar="CODE=W,...",
                        help="override class weights, e.g. 164889003=0.3,59118001=0.2")
    args = parser.parse_args(argv)
    try:
        record_ids = generate_dataset(args.out_dir, args.num_records, seed=args.seed, fs=args.fs,
                                      duration_s=args.duration, prefix=args.prefix, prevalence=args.prevalence,
                                      noise_level=args.noise, gain=args.gain, hard=args.hard)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    print(f"Wrote {len(record_ids)} records to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
