"""De-identification: keyed pseudonyms and the DICOM PS3.15 Annex E basic profile.

* Pseudonyms (patients, UIDs, file ids) are HMAC-SHA256 values keyed by the user's salt:
  the same patient gets the same pseudonym in every worker, shard and resumed run, and
  nobody without the salt can recompute or reverse them. The salt lives only in memory;
  outputs keep a *fingerprint* (an HMAC of a fixed message) so a resume or a merge can
  check that the same salt was used.
* DICOM headers go through the Annex E table of ``dicom-anonymizer`` (Kitware; the
  ``dicomfields_2026c`` table: remove / empty / dummy-replace names, IDs, dates,
  institution, device serials, descriptions, overlays, private tags), with two
  changes: UIDs are replaced by keyed UIDs (``2.25.<int>``, consistent across files, not
  random per process), and Patient Name / Patient ID become the patient pseudonym.
  Acquisition parameters (TR, TE, field strength, kVp, spacing, ...) are not in the table
  and are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = [
    "SALT_ENV",
    "Pseudonymizer",
    "read_salt",
    "profile_actions",
    "deidentify_dataset",
    "identifying_values",
    "kept_values",
    "path_sensitive_values",
    "header_json",
    "ANNEX_E_TABLE",
    "read_header",
]

#: environment variable that may hold the salt
SALT_ENV = "HICUR_CURATION_SALT"
#: the Annex E table version used (module of ``dicomanonymizer.dicom_anonymization_databases``)
ANNEX_E_TABLE = "dicomfields_2026c"
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "DA", "DT", "TM", "AS", "UI", "UR", "IS", "DS"}


def read_salt(salt_file: str | os.PathLike | None = None) -> str:
    """The user's salt, from ``salt_file`` or the ``HICUR_CURATION_SALT`` environment variable.

    Raises:
        ValueError: no salt given, or a salt shorter than 4 characters.
    """
    if salt_file:
        try:
            salt = open(salt_file, encoding="utf-8").read().strip()
        except OSError as err:
            raise ValueError(f"{salt_file}: cannot read the salt file ({err.strerror})") from None
        where = str(salt_file)
    else:
        salt = os.environ.get(SALT_ENV, "").strip()
        where = f"${SALT_ENV}"
        if not salt:
            raise ValueError(
                f"no pseudonymisation salt: pass --salt-file FILE or set {SALT_ENV}. The salt keys the patient "
                "pseudonyms; keep it secret and reuse it for every shard and resume of one data set."
            )
    if len(salt) < 4:
        raise ValueError(f"{where}: the salt must have at least 4 characters")
    return salt


class Pseudonymizer:
    """Keyed, deterministic pseudonyms (HMAC-SHA256 with the user's salt)."""

    def __init__(self, salt: str) -> None:
        if not salt:
            raise ValueError("an empty salt gives no protection")
        self._key = salt.encode("utf-8")

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def patient(self, key: str) -> str:
        """Patient pseudonym ``P`` + 16 hex digits."""
        return "P" + self._digest("patient", key.strip()).hex()[:16]

    def uid(self, uid: str) -> str:
        """A keyed DICOM UID ``2.25.<128-bit int>`` (at most 44 characters)."""
        return "2.25." + str(int.from_bytes(self._digest("uid", uid.strip())[:16], "big"))

    def source_id(self, rel: str) -> str:
        """File id: 16 hex digits of the keyed hash of the relative source path."""
        return self._digest("source", rel).hex()[:16]

    def group(self, key: str) -> str:
        """Series / volume group id (16 hex digits)."""
        return self._digest("group", key).hex()[:16]

    def fingerprint(self) -> str:
        """A value that identifies the salt without revealing it (stored in ``run.json``)."""
        return self._digest("fingerprint", "hicur-monai").hex()[:24]


@lru_cache(maxsize=1)
def _base_actions() -> dict:
    from dicomanonymizer.simpledicomanonymizer import initialize_actions

    return initialize_actions(ANNEX_E_TABLE)


def _uid_tags() -> list[tuple]:
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    tags = dicom_anonymization_database_selector(ANNEX_E_TABLE)
    return list(tags["U_TAGS"]) + list(tags["X_Z_U_STAR_TAGS"])


def _keyed_uid_action(pseudo: Pseudonymizer) -> Callable[[Dataset, tuple], None]:
    def keyed_uid(dataset: Dataset, tag: tuple) -> None:
        el = dataset.get(tag)
        if el is None:
            return
        if el.VR == "UI":
            if isinstance(el.value, MultiValue):
                el.value = [pseudo.uid(str(v)) for v in el.value]
            elif el.value:
                el.value = pseudo.uid(str(el.value))
        elif el.VR == "SQ":  # sequences of references: replace every UID inside, drop the rest of the profile's fields
            for item in el.value:
                for sub in list(item):
                    if sub.VR == "UI" and sub.value:
                        keyed_uid(item, sub.tag)

    return keyed_uid


def profile_actions(pseudo: Pseudonymizer, patient: str) -> dict[tuple, Callable[[Dataset, tuple], None]]:
    """The basic-profile action table with keyed UIDs and the patient pseudonym (for ``anonymize_dataset``)."""
    keyed_uid = _keyed_uid_action(pseudo)

    def set_patient(dataset: Dataset, tag: tuple) -> None:
        if tag in dataset:
            dataset[tag].value = patient

    actions = dict(_base_actions())
    for tag in _uid_tags():
        if len(tag) == 2:
            actions[tag] = keyed_uid
    actions[(0x0010, 0x0010)] = set_patient
    actions[(0x0010, 0x0020)] = set_patient
    return actions


def kept_values(ds: Dataset) -> set[str]:
    """Text values of the public attributes the basic profile keeps (manufacturer, spacing, ...)."""
    actions = _base_actions()
    out: set[str] = set()
    for el in ds.iterall():
        if el.VR in _TEXT_VRS and el.tag.group != 0x0002 and not el.tag.is_private \
                and (el.tag.group, el.tag.element) not in actions:
            vals = el.value if isinstance(el.value, MultiValue) else [el.value]
            out.update(str(v).strip() for v in vals if v is not None and v != "")
    return out


#: attributes whose values, found in a source path, make curation redact that path
PATH_SENSITIVE = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate",
                  "StudyID", "InstitutionName", "ReferringPhysicianName")


def path_sensitive_values(ds: Dataset) -> set[str]:
    """Values of :data:`PATH_SENSITIVE` (and person-name components), for the source-path check."""
    from hicur_monai.data.curation.dicom_values import values

    out: set[str] = set()
    for kw in PATH_SENSITIVE:
        for x in values(ds, kw) or ():
            sx = x.strip()
            if len(sx) >= 3:
                out.add(sx)
                out.update(p for p in sx.replace("^", " ").split() if len(p) >= 3)
    return out


def identifying_values(ds: Dataset) -> set[str]:
    """Text values of every element the basic profile changes (names, IDs, dates, ...), for leak checks.

    Values that a kept public attribute of the same header also holds are left out.

    Values shorter than 3 characters are left out (they would match everywhere).
    """
    actions = _base_actions()
    out: set[str] = set()

    def add(v: Any) -> None:
        s = str(v).strip()
        if len(s) >= 3:
            out.add(s)
            if "^" in s:  # person names: every component
                out.update(p for p in s.split("^") if len(p) >= 3)

    kept: set[str] = set()
    for el in ds.iterall():
        tag = (el.tag.group, el.tag.element)
        if el.VR not in _TEXT_VRS or el.tag.group == 0x0002:
            continue
        vals = el.value if isinstance(el.value, MultiValue) else [el.value]
        strs = [str(v).strip() for v in vals if v is not None and v != ""]
        if tag in actions or el.tag.is_private:
            for v in strs:
                add(v)
        else:
            kept.update(strs)
    # a value that a kept public attribute also holds (a manufacturer, a spacing) identifies no one
    return out - kept


@lru_cache(maxsize=1)
def _split_actions() -> tuple[dict[tuple, Callable], list[tuple[tuple, Callable]], frozenset]:
    """The table as (single-tag actions, repeating-group (mask) actions, UID tags)."""
    base = _base_actions()
    singles = {t: a for t, a in base.items() if len(t) == 2}
    masks = [(t, a) for t, a in base.items() if len(t) == 4]
    return singles, masks, frozenset(t for t in _uid_tags() if len(t) == 2)


def _remove_private(ds: Dataset) -> None:
    """Delete private tags at every level, converting only sequences (``Dataset.remove_private_tags``
    decodes every element of the file, which costs more than the rest of the profile)."""
    for tag in list(ds.keys()):
        if tag.is_private:
            del ds[tag]
            continue
        if ds.get_item(tag).VR == "SQ":
            for item in ds[tag].value:
                _remove_private(item)


def deidentify_dataset(ds: Dataset, pseudo: Pseudonymizer, patient: str) -> Dataset:
    """Apply the basic profile to ``ds`` in place (and return it).

    The actions are ``dicom-anonymizer``'s (remove / empty / dummy-replace per the Annex E
    table); they are applied to the elements the dataset has (one pass over the dataset
    rather than one look-up per table row). Private tags are removed; Patient Name / ID
    become ``patient``; UIDs become keyed UIDs; ``PatientIdentityRemoved`` is set to ``YES``
    and ``DeidentificationMethod`` says how.
    """
    singles, masks, uid_tags = _split_actions()
    keyed = _keyed_uid_action(pseudo)

    def set_patient(dataset: Dataset, tag: tuple) -> None:
        dataset[tag].value = patient

    for dset, is_meta in ((ds, False), (getattr(ds, "file_meta", None), True)):
        if dset is None:
            continue
        for tag_obj in list(dset.keys()):
            tag = (tag_obj.group, tag_obj.element)
            if is_meta and tag_obj.group != 0x0002:
                continue
            if tag in ((0x0010, 0x0010), (0x0010, 0x0020)):
                set_patient(dset, tag)
                continue
            if tag in uid_tags:
                keyed(dset, tag)
                continue
            act = singles.get(tag)
            if act is None and 0x5000 <= tag_obj.group <= 0x60FF:
                act = next((a for (g, e, gm, em), a in masks
                            if tag_obj.group & gm == g & gm and tag_obj.element & em == e & em), None)
            if act is not None:
                act(dset, tag)
    _remove_private(ds)
    if hasattr(ds, "file_meta") and "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 E.1 basic profile, keyed pseudonyms (hicur-monai)"
    return ds


def header_json(ds: Dataset) -> str:
    """The (de-identified) header as DICOM JSON, without pixel, overlay or other bulk data."""
    clean = Dataset()
    for el in ds:
        if el.tag.group in (0x7FE0,) or 0x6000 <= el.tag.group <= 0x60FF:
            continue
        if el.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue
        clean.add(el)
    return clean.to_json(bulk_data_threshold=4096, bulk_data_element_handler=lambda _el: "")


def read_header(path: str) -> Dataset:
    """Read a DICOM header, deferring large values (pixel data is not loaded)."""
    return pydicom.dcmread(path, defer_size="64 KB", force=False)
