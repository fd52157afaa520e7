"""NPZ archives with extra members (a volume's masks and affine, the provenance as JSON text)."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np


def npz_bytes(arrays: dict[str, np.ndarray], provenance: dict[str, Any] | None = None) -> bytes:
    """What ``np.savez_compressed`` writes (a zip of ``<name>.npy``), at zlib level 1 (masks compress well
    and level 1 is several times faster).

    ``provenance`` is stored as the 0-d unicode array ``provenance`` (JSON text), so
    ``json.loads(str(np.load(f)["provenance"]))`` reads it without pickles.
    """
    members = dict(arrays)
    if provenance is not None:
        members["provenance"] = np.array(json.dumps(provenance, default=str))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, value in members.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()
