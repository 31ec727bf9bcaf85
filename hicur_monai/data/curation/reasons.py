"""Rejection and duplicate reasons of the curation manifest, in one place.

Every input file and every output image ends as one manifest row whose ``status`` is
``accepted``, ``rejected`` or ``duplicate``; rejected and duplicate rows carry one of the
reason codes below in ``reason`` and a human sentence in ``detail``. The table is also the
documentation (``docs/curation.md`` lists it).
"""

from __future__ import annotations

__all__ = ["ACCEPTED", "REJECTED", "DUPLICATE", "STATUSES", "REASONS", "CurationReject"]

ACCEPTED = "accepted"
REJECTED = "rejected"
DUPLICATE = "duplicate"
STATUSES = (ACCEPTED, REJECTED, DUPLICATE)

#: reason code -> what it means
REASONS: dict[str, str] = {
    # discovery
    "permission_denied": "the file or folder cannot be read with the current permissions",
    "broken_symlink": "a symbolic link whose target does not exist",
    "directory_loop": "a symbolic link to a folder that is already being walked (a loop); not followed",
    "symlink_alias": "a symbolic link to a folder already walked through another path; not walked twice",
    "symlink_loop": "a symbolic link that leads back to itself through other links (the system reports a loop)",
    "outside_source": "a symbolic link whose target lies outside its source folder; not followed "
                      "(`--follow-external-links` follows it)",
    "unreadable_entry": "a folder entry the file system cannot describe (I/O error, name too long, ...); "
                        "the detail names the error",
    "not_a_regular_file": "a socket, FIFO or device node",
    "excluded_by_rule": "an `exclude` rule of the rules file matched the path",
    # format / reading
    "empty_file": "the file has 0 bytes",
    "not_an_image": "the content is not DICOM, NIfTI, NRRD, PNG or JPEG",
    "truncated": "the file ends before its declared content (cut-off download or copy)",
    "unreadable": "the reader failed to decode the file (corrupt content)",
    "no_pixel_data": "a DICOM object without pixel data (structured report, RT plan, ...)",
    # identification / de-identification
    "unknown_modality": "the modality could not be established from headers or rules (never guessed)",
    "unknown_sequence": "an MRI image whose sequence (T1/T2/T1C) could not be established",
    "unsupported_sequence": "an MRI sequence the toolkit does not use (DWI, FLAIR, ADC, localiser, ...)",
    "localizer": "a DICOM localiser / scout image",
    "burned_in_annotation": "DICOM BurnedInAnnotation is YES: identifiers may be part of the pixels",
    # quality control
    "non_finite": ("the image contains NaN or infinite values, or its DICOM rescale slope / intercept is not a "
                   "finite number"),
    "constant_image": "the image is empty or constant (no information)",
    "wrong_dimensionality": "not a 2D image or 3D volume of the expected channels (e.g. 4D, 1D, grey endoscopy)",
    "too_small": "an in-plane side is below the minimum size",
    "too_large": "an absurd size read from the header before decoding: a side, the voxel count or the decoded "
                 "size (voxels x channels x 4 bytes, `--max-decoded-mb`) above the limits",
    "no_slices_in_range": "the slice range of a rule or mask selects no slice (empty mask)",
    "mask_error": "the mask named by a rule cannot be read or does not match the image",
    "empty_slice": "a slice of a volume that is constant (e.g. outside the body)",
    # robustness
    "worker_crashed": "the worker process died on this file twice (decoder crash); the run went on",
    "internal_error": "an unexpected error of the curation code on this file (please report it)",
    # duplicates (status ``duplicate``)
    "exact_duplicate_file": "byte-identical to an earlier input file",
    "exact_duplicate": "pixel-identical to an earlier output image",
    "near_duplicate": "perceptual hash within the threshold of an earlier image of the same modality and sequence",
}


class CurationReject(Exception):
    """Raised inside the per-file pipeline to reject a file with a reason code.

    Args:
        reason: a key of :data:`REASONS`.
        detail: a sentence that must not contain identifiers (no absolute paths, no header values).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown curation reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
