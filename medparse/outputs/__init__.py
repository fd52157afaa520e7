"""Result formats beyond the stored masks: COCO RLE, overlays, NIfTI label maps, DICOM SEG, NPZ.

Pure functions from decoded masks (and the input's pixels or header) to bytes; the HTTP side is
``gateway/results/handlers.py``.
"""
