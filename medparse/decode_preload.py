"""Imported once by the decode pool's fork server (medparse/decode_pool.py), so that every decode
process starts with its libraries loaded: a replacement after a kill costs a fork, not an import.

The thread limits come first: OpenBLAS and OpenMP size their thread pools when they are loaded. The
fork server runs at the decode processes' low CPU priority, so that its start (about a second of
imports, on the first decode) does not slow the gateway down.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"
os.nice(10)  # medparse.decode_pool.DECODE_NICENESS (not imported: it would load numpy before the lines above)

import cv2  # noqa: E402
import nibabel  # noqa: E402, F401
import numpy  # noqa: E402, F401
import PIL.Image  # noqa: E402, F401
import pydicom  # noqa: E402, F401

cv2.setNumThreads(1)
