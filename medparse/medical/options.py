"""The medical job options as the worker and the probe read them (already schema-checked by the gateway)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medparse.medical.errors import OptionRejected

MODEL_2D = "medimageparse"
MODEL_3D = "medimageparse-3d"
#: The samples read NIfTI slices as ``volume[:, :, k]``.
DEFAULT_SLICE_AXIS = 2


@dataclass(frozen=True)
class MedicalOptions:
    modality: str | None = None
    #: a CT preset name or {"center", "width"}
    window: str | dict[str, float] | None = None
    #: one frame of a multi-frame DICOM (a 2-D job), or the volume of a 4-D NIfTI
    frame: int | None = None
    slice_axis: int | None = None
    #: slice indices to segment, a list or {"start", "stop"} (stop exclusive); None = all
    slices: list[int] | dict[str, int] | None = None
    model: str = MODEL_2D

    @classmethod
    def from_job(cls, options: Mapping[str, Any] | None) -> MedicalOptions:
        o = dict(options or {})
        return cls(
            modality=o.get("modality"),
            window=o.get("window"),
            frame=o.get("frame"),
            slice_axis=o.get("slice_axis"),
            slices=o.get("slices"),
            model=o.get("model") or MODEL_2D,
        )

    @property
    def uses_3d_model(self) -> bool:
        return self.model == MODEL_3D

    def slice_count(self, count: int) -> int:
        """How many slices the selection picks on an axis with ``count`` slices, building nothing.

        A header may declare millions of slices: the count is what gets checked against the limit,
        before ``slice_indices`` makes a list of them.

        Raises:
            OptionRejected: an index outside 0..count-1 or an empty selection.
        """
        if self.slices is None:
            return count
        if isinstance(self.slices, dict):
            start, stop = self._start_stop(count)
            return stop - start
        return len(self._chosen(count))

    def slice_indices(self, count: int, *, limit: int) -> list[int]:
        """The selected slices of an axis with ``count`` slices, sorted and unique.

        Raises:
            OptionRejected: an index outside 0..count-1, an empty selection, or more than ``limit`` slices.
        """
        selected = self.slice_count(count)
        if selected > limit:
            raise OptionRejected("options.slices", f"{selected} slices; at most {limit} per job, choose slices")
        if self.slices is None:
            return list(range(count))
        if isinstance(self.slices, dict):
            return list(range(*self._start_stop(count)))
        return self._chosen(count)

    def _start_stop(self, count: int) -> tuple[int, int]:
        assert isinstance(self.slices, dict)
        start, stop = int(self.slices["start"]), int(self.slices["stop"])
        if not 0 <= start < stop <= count:
            raise OptionRejected(
                "options.slices", f"start/stop must satisfy 0 <= start < stop <= {count} (slices on this axis)"
            )
        return start, stop

    def _chosen(self, count: int) -> list[int]:
        # A list given in the options is bounded by the options' size (max_options_chars).
        assert isinstance(self.slices, list)
        chosen = sorted(set(int(i) for i in self.slices))
        if not chosen or chosen[0] < 0 or chosen[-1] >= count:
            raise OptionRejected("options.slices", f"slice indices must be within 0..{count - 1}")
        return chosen

    def echo(self) -> dict[str, Any]:
        """The options that shaped the preprocessing, for provenance."""
        out: dict[str, Any] = {"model": self.model}
        for name in ("modality", "window", "frame", "slice_axis", "slices"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out
