"""De-identification of DICOM datasets on export (DICOM PS3.15 Annex E).

The Basic Application Level Confidentiality Profile (PS3.15 E.2, Table E.1-1) with the options
"Retain Patient Characteristics" (E.3.9: weight, size, sex, age stay: the SUV variants need them),
"Retain Longitudinal Temporal Information with Full Dates" (E.3.6: dates and times stay: the SUV
decay correction needs them) and, where the SUV needs vendor tags, "Retain Safe Private" (E.3.10:
only the private tags in :data:`KEEP_PRIVATE`). What goes:

- every person name (VR PN) anywhere, except PatientName which becomes the pseudonym;
- the identifying attributes in :data:`REMOVE_KEYWORDS` (action X) and :data:`EMPTY_KEYWORDS`
  (Type 2, action Z: kept, empty), in nested sequences too;
- private tags, except the SUV ones when asked;
- every UID that is not a registered DICOM UID (class, transfer syntax and coding scheme UIDs under
  1.2.840.10008 stay): replaced by a new one (action U), through one :class:`UIDMap` per export so
  that references between the exported objects stay consistent.

PatientIdentityRemoved (0012,0062) becomes YES, DeidentificationMethod (0012,0063) and
DeidentificationMethodCodeSequence (0012,0064, CID 7050) say what was done, and
LongitudinalTemporalInformationModified (0028,0303) says UNMODIFIED (PS3.15 E.3.6).
"""
from __future__ import annotations

import copy
import logging
from typing import Iterable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from PETDiffusionLib.physics.suv import (GE_PET_SCAN_DATETIME, PHILIPS_ACTIVITY_CONC_SCALE_FACTOR,
                                         PHILIPS_SUV_SCALE_FACTOR)

log = logging.getLogger(__name__)

# Attributes removed wherever they occur (PS3.15 Table E.1-1, action X/X/D for these keywords).
REMOVE_KEYWORDS: tuple[str, ...] = (
    "PatientBirthTime", "PatientBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID", "MilitaryRank",
    "BranchOfService", "MedicalRecordLocator", "PatientInsurancePlanCodeSequence",
    "CountryOfResidence", "RegionOfResidence", "PatientComments", "AdditionalPatientHistory",
    "EthnicGroup", "Occupation", "ResponsiblePerson", "ResponsibleOrganization",
    "PatientReligiousPreference", "MedicalAlerts", "Allergies", "PregnancyStatus",
    "SmokingStatus", "LastMenstrualDate", "SpecialNeeds", "PatientState",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "InstitutionCodeSequence", "StationName", "DeviceSerialNumber", "DeviceUID",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianIdentificationSequence", "OperatorIdentificationSequence",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence", "PerformedProcedureStepID",
    "ScheduledProcedureStepID", "RequestedProcedureID", "AdmissionID", "AdmittingDiagnosesDescription",
    "PerformedLocation", "PerformedStationName", "ScheduledStationName", "RequestingService",
    "CurrentPatientLocation", "PatientInstitutionResidence", "IconImageSequence",
    "OriginalAttributesSequence", "DigitalSignaturesSequence", "ModifiedAttributesSequence",
)
# Free-text descriptions (PS3.15 Table E.1-1, action X): removed from source data
# (``remove_descriptions``); the descriptions this project writes itself (SYNTHETIC markers,
# derivation notes, dicom_export.py) carry no identity and stay.
DESCRIPTION_KEYWORDS: tuple[str, ...] = (
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription", "ReasonForStudy",
    "AcquisitionComments", "DerivationDescription", "FrameComments",
)
# Type 2 attributes that must stay present but are emptied (PS3.15 action Z).
# PatientBirthDate is Type 2 in the Patient module (PS3.3 C.7.1.1): action Z keeps it, empty.
EMPTY_KEYWORDS: tuple[str, ...] = ("PatientBirthDate", "ReferringPhysicianName", "AccessionNumber",
                                   "StudyID", "ContentCreatorName")
# Kept on purpose (SUV and the demographic tasks): PatientWeight, PatientSize, PatientSex,
# PatientAge, all dates and times, RadiopharmaceuticalInformationSequence; the vendor SUV tags:
KEEP_PRIVATE: tuple[tuple[int, int], ...] = (
    PHILIPS_SUV_SCALE_FACTOR, PHILIPS_ACTIVITY_CONC_SCALE_FACTOR, GE_PET_SCAN_DATETIME)

# DeidentificationMethod (0012,0063) is LO: at most 64 characters.
DEID_METHOD = "PETDiffusion PS3.15 basic; retain patient chars, dates, dose"
# CID 7050 "De-identification Method" (PS3.16), scheme DCM.
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
CODE_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")
DICOM_ROOT = "1.2.840.10008."  # registered DICOM UIDs (PS3.6 Annex A): never replaced


class UIDMap(dict):
    """Old UID -> new UID, the same new UID each time an old one is seen (PS3.15 E.2 action U)."""

    def new(self, uid: str) -> str:
        uid = str(uid)
        if uid not in self:
            self[uid] = generate_uid()
        return self[uid]


def _walk(ds: Dataset) -> Iterable[Dataset]:
    yield ds
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _replace_uids(item: Dataset, uid_map: UIDMap) -> None:
    for elem in list(item):
        if elem.VR != "UI" or elem.value in (None, ""):
            continue
        values = elem.value if isinstance(elem.value, (list, tuple)) or elem.VM > 1 else [elem.value]
        new = [v if str(v).startswith(DICOM_ROOT) else uid_map.new(v) for v in values]
        elem.value = new if elem.VM > 1 else new[0]


def _method_codes(kept_private: bool) -> Sequence:
    codes = [CODE_BASIC_PROFILE, CODE_PATIENT_CHARACTERISTICS, CODE_FULL_DATES]
    if kept_private:
        codes.append(CODE_SAFE_PRIVATE)
    items = []
    for value, meaning in codes:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, "DCM", meaning
        items.append(c)
    return Sequence(items)


def deidentify(ds: Dataset, pseudo_id: str = "ANONYMOUS", keep_private: bool = False,
               uid_map: UIDMap | None = None, suv_private: bool = True,
               remove_descriptions: bool = False) -> Dataset:
    """De-identify ``ds`` in place and return it.

    PatientName and PatientID become ``pseudo_id`` (the same value for every file of one patient
    keeps a series together); other identifying attributes and person names are removed in nested
    sequences too. Private tags are removed, except the SUV ones in :data:`KEEP_PRIVATE` (with their
    private creators) when ``suv_private``, or all when ``keep_private``. With ``uid_map`` every
    non-DICOM UID is replaced through it (pass one map for all objects of an export).
    ``remove_descriptions`` also removes the free-text descriptions (:data:`DESCRIPTION_KEYWORDS`).
    """
    remove = REMOVE_KEYWORDS + (DESCRIPTION_KEYWORDS if remove_descriptions else ())
    kept_private = keep_private
    keep = set(KEEP_PRIVATE) if suv_private else set()
    keep |= {(g, (e >> 8) & 0xFF) for g, e in keep}  # their private creators
    for item in _walk(ds):
        for kw in remove:
            if kw in item:
                delattr(item, kw)
        for kw in EMPTY_KEYWORDS:
            if kw in item:
                setattr(item, kw, "")
        for elem in list(item):
            if elem.VR == "PN" and elem.keyword != "PatientName":
                elem.value = ""
        if not keep_private:
            for elem in list(item):
                if elem.tag.is_private:
                    if (elem.tag.group, elem.tag.element) in keep:
                        kept_private = kept_private or not elem.tag.is_private_creator
                    else:
                        del item[elem.tag]
        if uid_map is not None:
            _replace_uids(item, uid_map)
    if uid_map is not None and hasattr(ds, "file_meta") and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or uid_map.new(
            ds.file_meta.MediaStorageSOPInstanceUID)
    ds.PatientName = pseudo_id
    ds.PatientID = pseudo_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    ds.DeidentificationMethodCodeSequence = _method_codes(kept_private)
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    return ds


def deidentify_series(datasets: Iterable[Dataset], pseudo_id: str = "ANONYMOUS",
                      uid_map: UIDMap | None = None) -> list[Dataset]:
    """De-identified copies of ``datasets`` (the originals are untouched), all UIDs replaced through
    one map so the copies still form one study and series; no private tag is kept."""
    uid_map = UIDMap() if uid_map is None else uid_map
    out = [deidentify(copy.deepcopy(ds), pseudo_id, uid_map=uid_map, suv_private=False,
                      remove_descriptions=True) for ds in datasets]
    log.info("de-identified %d DICOM instance(s) (PS3.15 basic profile, %d UIDs replaced)",
             len(out), len(uid_map))
    return out


DEID_KEYWORDS = ("PatientIdentityRemoved", "DeidentificationMethod",
                 "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified")


def copy_deidentification_status(sources: list[Dataset], target: Dataset) -> Dataset:
    """Make ``target`` (an object derived from ``sources``) state truthfully whether the patient's
    identity was removed: YES with the sources' method only when every source says YES; else NO
    and no method."""
    removed = bool(sources) and all(str(s.get("PatientIdentityRemoved", "")).upper() == "YES"
                                    for s in sources)
    for kw in DEID_KEYWORDS:
        if kw in target:
            delattr(target, kw)
    if removed:
        for kw in DEID_KEYWORDS:
            if kw in sources[0]:
                setattr(target, kw, copy.deepcopy(sources[0].data_element(kw).value))
    target.PatientIdentityRemoved = "YES" if removed else "NO"
    return target
