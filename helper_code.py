#!/usr/bin/env python

"""Helper functions with the public API of the PhysioNet/CinC Challenge 2021 helper_code.py.

The Challenge runs team code with the organizers' own helper_code.py in place of this file, so every function
here keeps the official name, arguments, return values and return types on well-formed files, and nothing else
in the project may rely on behaviour beyond that API. Where the official helper silently gives a wrong or empty
answer on headers that occur in the public data, these functions are more tolerant, never less:

- gains written as `1000.0(0)/mV` give 1000.0 (the official get_adc_gains gives 0.0 for them); get_baselines
  still returns adc_zero as the official one does, never the parenthesised WFDB baseline, so the two must not be
  combined into a conversion to physical units where a header gives a baseline in parentheses;
- `# Age: 74`, `#Age:74`, `#dx: ...` are read (the official helper only reads lines starting `#Age: `, `#Dx: `);
- a blank `#Dx:` gives no labels (the official get_labels gives ['']);
- Windows line endings, runs of spaces or tabs between fields, blank lines and comments before the record line;
- header files with bytes that are not UTF-8 are read with replacement characters instead of raising.

Team code must therefore never scale signals with get_adc_gains: under the official helper it returns zeros for
most public headers. ecgmamba.records reads records in physical units.
"""

import os

import numpy as np

TWELVE_LEADS = ('I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6')


# Check if a variable is a number or represents a number.
def is_number(x):
    try:
        float(x)
        return True
    except (ValueError, TypeError):
        return False


# Check if a variable is an integer or represents an integer.
def is_integer(x):
    return is_number(x) and float(x).is_integer()


# Check if a variable is a finite number or represents a finite number (a numpy bool, as in the official helper).
def is_finite_number(x):
    if not is_number(x):
        return False
    return np.isfinite(float(x))


# (Re)sort leads into the standard twelve-lead order; other leads follow, in their original order.
def sort_leads(leads):
    leads = list(leads)
    position = {lead: i for i, lead in enumerate(TWELVE_LEADS)}
    return tuple(sorted(leads, key=lambda lead: position.get(lead, len(TWELVE_LEADS) + leads.index(lead))))


# Find header and recording files: every visible X.hea with an X.mat beside it, sorted by file name.
def find_challenge_files(data_directory):
    header_files = list()
    recording_files = list()
    for name in sorted(os.listdir(data_directory)):
        root, extension = os.path.splitext(name)
        if root.startswith('.') or extension != '.hea':
            continue
        header_file = os.path.join(data_directory, root + '.hea')
        recording_file = os.path.join(data_directory, root + '.mat')
        if os.path.isfile(header_file) and os.path.isfile(recording_file):
            header_files.append(header_file)
            recording_files.append(recording_file)
    return header_files, recording_files


# Load header file as a string (newlines normalized by text mode; undecodable bytes replaced, not fatal).
def load_header(header_file):
    with open(header_file, 'r', encoding='utf-8', errors='replace') as f:
        return f.read()


# Load recording file as an array.
def load_recording(recording_file, header=None, leads=None, key='val'):
    from scipy.io import loadmat
    recording = loadmat(recording_file)[key]
    if header and leads:
        recording = choose_leads(recording, header, leads)
    return recording


# Choose leads from the recording file; a lead the header does not have is all zeros.
def choose_leads(recording, header, leads):
    num_samples = np.shape(recording)[1]
    chosen_recording = np.zeros((len(leads), num_samples), recording.dtype)
    available_leads = get_leads(header)
    for i, lead in enumerate(leads):
        if lead in available_leads:
            chosen_recording[i, :] = recording[available_leads.index(lead), :]
    return chosen_recording


# Split a header into the fields of its record line and of its signal lines (blank lines and comments skipped).
def _header_fields(header):
    record_fields = None
    signal_fields = list()
    for line in header.split('\n'):
        fields = line.split()
        if not fields or fields[0].startswith('#'):
            continue
        if record_fields is None:
            record_fields = fields
            num_leads = int(float(fields[1])) if len(fields) > 1 and is_number(fields[1]) else 0
        elif len(signal_fields) < num_leads:
            signal_fields.append(fields)
        else:
            break
    return record_fields, signal_fields


# Field i of the record line as a float, or None.
def _record_number(header, i):
    record_fields, _ = _header_fields(header)
    if record_fields is None or len(record_fields) <= i:
        return None
    value = record_fields[i].split('/')[0].split('(')[0]  # the frequency may read `fs/counter_freq(base)`
    return float(value) if is_number(value) else None


# Values of the comments `#Key: value` (any spacing, any case), in order.
def _comment_values(header, key):
    values = list()
    for line in header.split('\n'):
        line = line.strip()
        if line.startswith('#'):
            name, colon, value = line[1:].partition(':')
            if colon and name.strip().lower() == key:
                values.append(value.strip())
    return values


# Get recording ID.
def get_recording_id(header):
    record_fields, _ = _header_fields(header)
    return record_fields[0] if record_fields else None


# Get leads from header.
def get_leads(header):
    _, signal_fields = _header_fields(header)
    return tuple(fields[-1] for fields in signal_fields)


# Get age from header (nan when the age is not a number, None when there is no age).
def get_age(header):
    age = None
    for value in _comment_values(header, 'age'):
        age = float(value) if is_number(value) else float('nan')
    return age


# Get sex from header.
def get_sex(header):
    sex = None
    for value in _comment_values(header, 'sex'):
        sex = value
    return sex


# Get number of leads from header.
def get_num_leads(header):
    return _record_number(header, 1)


# Get frequency from header.
def get_frequency(header):
    return _record_number(header, 2)


# Get number of samples from header.
def get_num_samples(header):
    return _record_number(header, 3)


# The gain of a WFDB gain field `gain(baseline)/units` (the official helper reads no gain where a baseline is given).
def _gain(gain_field):
    return gain_field.split('/')[0].partition('(')[0]


# Get analog-to-digital converter (ADC) gains from header; 0 where the gain cannot be read.
def get_adc_gains(header, leads):
    adc_gains = np.zeros(len(leads))
    _, signal_fields = _header_fields(header)
    for fields in signal_fields:
        if fields[-1] in leads and len(fields) > 2:
            gain = _gain(fields[2])
            if is_number(gain):
                adc_gains[leads.index(fields[-1])] = float(gain)
    return adc_gains


# Get baselines from header: the adc_zero field, as in the official helper (which never reads a baseline given in
# parentheses after the gain; ecgmamba.records does, for the conversion to millivolts); 0 where it cannot be read.
def get_baselines(header, leads):
    baselines = np.zeros(len(leads))
    _, signal_fields = _header_fields(header)
    for fields in signal_fields:
        if fields[-1] in leads and len(fields) > 4 and is_number(fields[4].split('/')[0]):
            baselines[leads.index(fields[-1])] = float(fields[4].split('/')[0])
    return baselines


# Get labels from header (duplicates kept, as in the official helper).
def get_labels(header):
    labels = list()
    for value in _comment_values(header, 'dx'):
        labels.extend(label.strip() for label in value.split(',') if label.strip())
    return labels


# Save outputs from model.
def save_outputs(output_file, recording_id, classes, labels, probabilities):
    lines = [
        '#{}'.format(recording_id),
        ','.join(str(c) for c in classes),
        ','.join(str(l) for l in labels),
        ','.join(str(p) for p in probabilities),
    ]
    with open(output_file, 'w') as f:
        f.write('\n'.join(lines) + '\n')


# Load outputs from model. The recording ID keeps its trailing newline, as in the official helper.
def load_outputs(output_file):
    recording_id, classes, labels, probabilities = None, tuple(), tuple(), tuple()
    with open(output_file, 'r') as f:
        for i, line in enumerate(f):
            if i == 0:
                recording_id = line[1:] if len(line) > 1 else None
            elif i == 1:
                classes = tuple(entry.strip() for entry in line.split(','))
            elif i == 2:
                labels = tuple(entry.strip() for entry in line.split(','))
            elif i == 3:
                probabilities = tuple(float(entry) if is_finite_number(entry) else float('nan')
                                      for entry in line.split(','))
            else:
                break
    return recording_id, classes, labels, probabilities
