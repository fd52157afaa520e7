"""The gateway's side of medical inputs: the submit-time probe and what a job shows about them.

Hooks called from ``gateway.jobs.services``: ``probe`` (any upload, with the job's options) and
``public_extras`` (input details, progress, the result's formats and volume geometry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from db.job_record import Job
from medparse import imaging
from medparse.medical import inputs
from medparse.medical.errors import OptionRejected
from medparse.medical.options import MedicalOptions
from medparse.settings import Settings

#: Result formats every succeeded job has; ``nifti`` (NIfTI inputs, DICOM volumes) and ``dicom-seg`` depend
#: on the input.
COMMON_FORMATS = ("png", "npz", "rle", "overlay")


def probe(image: bytes, settings: Settings, options: Mapping[str, Any] | None) -> imaging.ImageInfo:
    """``imaging.ImageInfo`` of any upload; DICOM/NIfTI ones carry ``details``.

    Raises:
        ImageRejected: the upload is not an image we take.
        OptionRejected: an option does not fit the upload.
    """
    info = inputs.probe(image, options, inputs.Limits.from_settings(settings))
    if info is not None:
        return info
    opts = MedicalOptions.from_job(options)
    for name in ("frame", "slice_axis", "slices"):
        if getattr(opts, name) is not None:
            raise OptionRejected(f"options.{name}", "applies to DICOM and NIfTI inputs only")
    if opts.uses_3d_model:
        raise OptionRejected("options.model", "the 3-D model takes NIfTI volumes")
    return imaging.probe_image(image, max_pixels=settings.max_image_pixels, max_frames=settings.max_image_frames)


def check_headers(image: bytes, settings: Settings, options: Mapping[str, Any] | None) -> None:
    """The header-only checks of ``probe`` (nothing proportional to a declared size is built), run in the
    gateway process itself, so that a hostile header never takes a decode process's place.

    Raises:
        ImageRejected, OptionRejected: as ``probe`` would for these reasons.
    """
    inputs.check_headers(image, options, inputs.Limits.from_settings(settings))


def formats_of(job: Job, base: str) -> dict[str, str]:
    names = list(COMMON_FORMATS)
    if job.input_format == "nifti" or (job.input_format == "dicom" and job.is_volume):
        names.append("nifti")
    if job.input_format == "dicom":
        names.append("dicom-seg")
    return {name: f"{base}/result?format={name}" for name in names}


def public_extras(job: Job, public: dict[str, Any]) -> dict[str, Any]:
    """``public`` (the dict ``to_public`` validates) with the medical parts of ``job`` added, in place."""
    meta = job.input_meta
    if meta:
        public["input"].update({k: v for k, v in meta.items() if k not in public["input"]})
    if job.progress and job.is_volume:
        public["progress"] = job.progress
    result = public.get("result")
    if result is None:
        return public
    base = public["urls"]["get"]
    result["formats"] = formats_of(job, base)
    if job.is_volume:
        result["volume"] = {"shape": meta.get("shape"), "slice_axis": meta.get("slice_axis")} if meta else None
    return public
