"""Medical inputs: DICOM and NIfTI readers, intensity windowing, volumes of slices.

Entry points for the rest of the service live in ``medparse.medical.inputs`` (probe at submit time,
2-D pixels or a slice stack in the worker); ``formats.sniff_medical`` tells, from the content only,
whether an upload is one of ours.
"""
