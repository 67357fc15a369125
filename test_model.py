#!/usr/bin/env python
"""The 2021 organizers' earlier name for run_model.py: python test_model.py model test_data test_outputs."""

import sys

from run_model import main

if __name__ == "__main__":
    main(sys.argv[1:], program="test_model.py")
