"""Where the evidence is: a record drawn as clinicians read it, with the model's evidence per class over time.

    python -m ecgmamba.explain MODEL_DIRECTORY RECORD.hea OUTPUT.png [--classes AF PVC ...] [--start SECONDS]

The record is drawn on millimetre paper at 25 mm/s and 10 mm/mV: the 12 leads in the standard 3 x 4 layout
(I, II, III | aVR, aVL, aVF | V1-V3 | V4-V6, 2.5 s each) and a 10 s lead II rhythm strip; a reduced-lead record
shows only its leads, one 10 s row each. Under the rhythm strip, one strip per class (the predicted ones, or
--classes) shows the evidence over the same 10 s: the head applied to each token's final feature, i.e. the logit
that token alone would give. Tokens are aligned with time, since the stem is a stack of strided convolutions, so
a token's evidence belongs to the stretch of signal around its receptive field's centre. With mean pooling the
record's logit is the mean of these token logits; with mean + max or a class token it is not a sum of them, but
they still show which part of the record moves the head.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np
import torch

from ecgmamba.inference import segment_passes
from ecgmamba.model import token_centres
from ecgmamba.preprocess import preprocess_recording
from ecgmamba.records import RecordError, read_header, read_raw, to_millivolts, select_leads

PAPER_SPEED_MM_S = 25.0
GAIN_MM_MV = 10.0
STRIP_SECONDS = 10.0
LAYOUT_12 = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))


@torch.no_grad()
def token_evidence(network, signal, preprocess, device, start=0, stop=None):
    """(times in s, evidence (tokens, classes)) over samples [start, stop) of a preprocessed (leads, n) signal:
    the head applied to each token of the passes inference makes (the whole record in one pass up to the cap,
    equal chunks beyond it; or, with "windows" inference, every half-overlapping window, uncapped), tokens of
    overlapping passes averaged on the token grid, tokens over zero padding left out."""
    n = signal.shape[1]
    stop = n if stop is None else min(stop, n)
    window = preprocess.window_samples
    if preprocess.inference == "windows":  # only the windows near the span
        lo, hi = max(0, start - window), min(n, stop + window)
    else:  # the passes inference makes, all of them (a chunk's tokens depend on the whole chunk)
        lo, hi = 0, n
    piece = signal[:, lo:hi]
    segments, passes = segment_passes([piece], dataclasses.replace(preprocess, max_windows=10**6), batch_size=32)
    stride = int(np.prod(network.config.stem_strides))
    sums, counts = {}, {}
    members = getattr(network, "members", [network])  # an ensemble's evidence: its members' mean
    for chosen, batch, valid_samples in passes:
        logits = 0
        for member in members:
            features, position = member.token_features(torch.from_numpy(batch).to(device),
                                                       torch.as_tensor(valid_samples))
            if position is not None:  # the class token has no place in time
                features = torch.cat([features[:, :position], features[:, position + 1:]], dim=1)
            logits = logits + member.token_logits(features).float().cpu().numpy() / len(members)
        centres = token_centres(network.config, logits.shape[1])
        for k, length, pass_logits in zip(chosen, valid_samples, logits):
            valid = (centres >= 0) & (centres < length)                  # not in the zero padding
            first = lo + segments[k][1]
            for centre, value in zip(np.round((first + centres[valid]) / stride).astype(int), pass_logits[valid]):
                sums[centre] = sums.get(centre, 0) + value
                counts[centre] = counts.get(centre, 0) + 1
    keys = np.array(sorted(k for k in sums if start <= k * stride < stop))
    if len(keys) == 0:
        return np.zeros(0), np.zeros((0, network.config.num_classes))
    evidence = np.stack([sums[k] / counts[k] for k in keys])
    return keys * stride / preprocess.target_fs, evidence


def _paper(ax, width_mm, height_mm):
    """Millimetre grid: 1 mm minor, 5 mm major lines, ECG-paper red."""
    for x in np.arange(0, width_mm + 0.01, 1.0):
        ax.axvline(x, color="#f4c2c2" if x % 5 else "#e08080", linewidth=0.3 if x % 5 else 0.6, zorder=0)
    for y in np.arange(0, height_mm + 0.01, 1.0):
        ax.axhline(y, color="#f4c2c2" if y % 5 else "#e08080", linewidth=0.3 if y % 5 else 0.6, zorder=0)
    ax.set_xlim(0, width_mm)
    ax.set_ylim(0, height_mm)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _trace(ax, signal_mv, fs, t0, seconds, x_mm, baseline_mm, label):
    """Draw seconds of a lead from t0 at paper position x_mm, baseline_mm."""
    a, b = int(round(t0 * fs)), int(round((t0 + seconds) * fs))
    piece = signal_mv[a:b]
    if len(piece) == 0:
        return
    x = x_mm + np.arange(len(piece)) / fs * PAPER_SPEED_MM_S
    ax.plot(x, baseline_mm + piece * GAIN_MM_MV, color="black", linewidth=0.6, zorder=2)
    ax.text(x_mm + 1, baseline_mm + 7, label, fontsize=7, zorder=3)


def resolve_classes(requested, classes, abbreviations):
    """Indices of requested classes, given as SNOMED codes or abbreviations (either of equivalent ones)."""
    chosen = []
    for item in requested:
        for j, (codes, abbreviation) in enumerate(zip(classes, abbreviations)):
            if item in codes.split("|") or item == codes or item.lower() in abbreviation.lower().split("|"):
                chosen.append(j)
                break
        else:
            raise ValueError(f"unknown class {item!r}; known: {', '.join(abbreviations)}")
    return chosen


def explain(model_directory, header_path, output_png, requested=None, start_s=0.0, device="cpu"):
    """Draw the record and its evidence strips into output_png; returns (class indices shown, times, evidence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecgmamba.inference import load_model, prepare, run_model
    from ecgmamba.scoring import load_scoring

    header = read_header(header_path)
    recording = read_raw(os.path.splitext(header_path)[0] + ".mat", header, allow_non_finite=True)
    model = load_model(model_directory, header.leads, device=device)
    classes, labels, probabilities = run_model(model, header.text, recording)
    table = load_scoring("2021")
    abbreviations = [table.class_abbreviations[table.class_codes.index(c)] if c in table.class_codes else c
                     for c in classes]
    shown = resolve_classes(requested, classes, abbreviations) if requested else [j for j, l in enumerate(labels) if l]
    if not shown:  # nothing predicted: the most probable class, so the strip says why not
        shown = [int(np.argmax(probabilities))]

    signal = prepare(model, header.text, recording)                   # what the network reads
    fs = model.preprocess.target_fs
    start = int(round(start_s * fs))
    times, evidence = token_evidence(model.network, signal, model.preprocess, model.device, start,
                                     start + int(STRIP_SECONDS * fs))
    # Drawn in mV: the same filtering, without amplitude scaling, so 10 mm is 1 mV whatever `scaling` is.
    drawn = preprocess_recording(select_leads(to_millivolts(np.asarray(recording), header, allow_non_finite=True),
                                              header.leads, model.model_leads), header.fs,
                                 dataclasses.replace(model.preprocess, scaling="none"))
    leads = list(model.model_leads)
    twelve = len(leads) == 12
    rows = 3 if twelve else len(leads)
    row_mm, strip_mm, width_mm = 30.0, 12.0, STRIP_SECONDS * PAPER_SPEED_MM_S
    height_mm = row_mm * (rows + 1) + strip_mm * len(shown)
    figure = plt.figure(figsize=((width_mm + 10) / 25.4, (height_mm + 14) / 25.4), dpi=150)
    ax = figure.add_axes([5 / (width_mm + 10), 4 / (height_mm + 14), width_mm / (width_mm + 10),
                          height_mm / (height_mm + 14)])
    _paper(ax, width_mm, height_mm)
    top = height_mm
    if twelve:
        for r, row in enumerate(LAYOUT_12):
            for c, lead in enumerate(row):
                _trace(ax, drawn[leads.index(lead)], fs, start_s + 2.5 * c, 2.5, c * 2.5 * PAPER_SPEED_MM_S,
                       top - row_mm * (r + 0.5), lead)
    else:
        for r, lead in enumerate(leads):
            _trace(ax, drawn[r], fs, start_s, STRIP_SECONDS, 0, top - row_mm * (r + 0.5), lead)
    rhythm = "II" if "II" in leads else leads[0]
    _trace(ax, drawn[leads.index(rhythm)], fs, start_s, STRIP_SECONDS, 0, top - row_mm * (rows + 0.5),
           f"{rhythm} (rhythm)")
    base = top - row_mm * (rows + 1)
    for i, j in enumerate(shown):
        y0 = base - strip_mm * (i + 1)
        values = evidence[:, j] if len(evidence) else np.zeros(0)
        scale = max(1e-6, np.abs(values).max()) if len(values) else 1.0
        x = (times - start_s) * PAPER_SPEED_MM_S
        centre = y0 + strip_mm / 2
        y = centre + values / scale * (strip_mm / 2 - 1)
        ax.fill_between(x, centre, y, where=values > 0, color="#2a7ab9", alpha=0.6, zorder=2, linewidth=0)
        ax.fill_between(x, centre, y, where=values <= 0, color="#999999", alpha=0.4, zorder=2, linewidth=0)
        ax.axhline(y0, color="black", linewidth=0.4, zorder=3)
        ax.text(1, y0 + strip_mm - 3.5, f"{abbreviations[j]}  p={probabilities[j]:.2f}"
                f"{' (predicted)' if labels[j] else ''}  evidence per token", fontsize=6, zorder=3)
    figure.suptitle(f"{header.record_id}  {header.fs:g} Hz  {header.num_samples / header.fs:.1f} s  "
                    f"from {start_s:g} s  25 mm/s  10 mm/mV  model leads: {len(leads)}", fontsize=7)
    os.makedirs(os.path.dirname(os.path.abspath(output_png)), exist_ok=True)
    figure.savefig(output_png)
    plt.close(figure)
    return shown, times, evidence


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_directory")
    parser.add_argument("header", help="the record's .hea file (its .mat beside it)")
    parser.add_argument("output", help="PNG to write")
    parser.add_argument("--classes", nargs="+", help="SNOMED codes or abbreviations (default: the predicted ones)")
    parser.add_argument("--start", type=float, default=0.0, help="first second shown (default 0)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        shown, _, _ = explain(args.model_directory, args.header, args.output, args.classes, args.start, args.device)
    except (RecordError, ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
