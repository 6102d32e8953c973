"""Dataset tests: tblite must run single-threaded (its OpenMP default is ~1000x slower).

OpenMP reads ``OMP_NUM_THREADS`` when the library loads, so it is set here,
before any test module imports ``tblite`` (only this test package does).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
