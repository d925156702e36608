"""De-identification of DICOM datasets on export.

A subset of the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, with the
"Retain Patient Characteristics" and "Retain Longitudinal Temporal Information" options (PS3.15
E.3.10, E.3.6): names, IDs, birth date, addresses, telephone numbers, institution and operator
identities and private tags go; weight, sex, age, height, the dates and times and the dose that SUV
needs (PHYSICS.md §1) stay. The vendor private tags that SUV needs are kept by name.
"""
from __future__ import annotations

import logging
from typing import Iterable

from pydicom.dataset import Dataset

from PETDiffusionLib.physics.suv import (GE_PET_SCAN_DATETIME, PHILIPS_ACTIVITY_CONC_SCALE_FACTOR,
                                         PHILIPS_SUV_SCALE_FACTOR)

log = logging.getLogger(__name__)

# Attributes removed wherever they occur (PS3.15 Table E.1-1, action X/Z/D for these keywords).
REMOVE_KEYWORDS: tuple[str, ...] = (
    "PatientBirthTime", "PatientBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID", "MilitaryRank",
    "MedicalRecordLocator", "PatientInsurancePlanCodeSequence", "CountryOfResidence",
    "RegionOfResidence", "PatientComments", "AdditionalPatientHistory", "EthnicGroup",
    "Occupation", "ResponsiblePerson", "ResponsibleOrganization",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PhysiciansOfRecord", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "OperatorsName", "RequestingPhysician", "ScheduledPerformingPhysicianName",
    "DeviceSerialNumber", "RequestAttributesSequence", "ReferencedPatientSequence",
    "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
    "PerformedProcedureStepID", "ScheduledProcedureStepID", "RequestedProcedureID",
)
# Type 2 attributes that must stay present but are emptied or replaced (PS3.15 action Z).
# PatientBirthDate is Type 2 in the Patient module (PS3.3 C.7.1.1): action Z keeps it, empty.
EMPTY_KEYWORDS: tuple[str, ...] = ("PatientBirthDate", "ReferringPhysicianName", "AccessionNumber",
                                   "StudyID")
# Kept on purpose (SUV and the demographic tasks): PatientWeight, PatientSize, PatientSex,
# PatientAge, all dates and times, RadiopharmaceuticalInformationSequence.
KEEP_PRIVATE: tuple[tuple[int, int], ...] = (
    PHILIPS_SUV_SCALE_FACTOR, PHILIPS_ACTIVITY_CONC_SCALE_FACTOR, GE_PET_SCAN_DATETIME)

# DeidentificationMethod (0012,0063) is LO: at most 64 characters.
DEID_METHOD = "PETDiffusion PS3.15 basic; retain patient chars, dates, dose"


def _walk(ds: Dataset) -> Iterable[Dataset]:
    yield ds
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def deidentify(ds: Dataset, pseudo_id: str = "ANONYMOUS", keep_private: bool = False) -> Dataset:
    """De-identify ``ds`` in place and return it.

    PatientName and PatientID become ``pseudo_id`` (the same value for every file of one patient
    keeps a series together); other identifying attributes are removed in nested sequences too.
    Private tags are removed except the SUV ones in :data:`KEEP_PRIVATE` (their private creator
    elements stay with them).
    """
    for item in _walk(ds):
        for kw in REMOVE_KEYWORDS:
            if kw in item:
                delattr(item, kw)
        for kw in EMPTY_KEYWORDS:
            if kw in item:
                setattr(item, kw, "")
        if not keep_private:
            keep = set(KEEP_PRIVATE)
            keep |= {(g, (e >> 8) & 0xFF) for g, e in KEEP_PRIVATE}  # their private creators
            for elem in list(item):
                if elem.tag.is_private and (elem.tag.group, elem.tag.element) not in keep:
                    del item[elem.tag]
    ds.PatientName = pseudo_id
    ds.PatientID = pseudo_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    return ds
