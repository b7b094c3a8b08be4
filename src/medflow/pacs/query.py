"""QIDO-RS queries of the pull: which studies, series and instances params `pacs` matches.

Hierarchical, so a large PACS is never listed whole: studies by the study-level filters,
then each study's series by the series-level ones, then a series' instances only when the
raw folder holds part of it. Results carry UIDs: they stay in memory, never in a log line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dicomweb_client import DICOMwebClient

from medflow.config import PacsParams
from medflow.pacs.client import call

# QIDO-RS study-level matching keys (PS3.18 Table 10.6.1-5, and what servers accept there);
# every other filter key matches at the series level (Modality, BodyPartExamined, ...).
STUDY_KEYS = frozenset(
    {
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyInstanceUID",
        "StudyID",
        "ReferringPhysicianName",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "IssuerOfPatientID",
    }
)
# filter values that identify a patient or a study: never shown in a record, log or error
IDENTIFYING_KEYS = frozenset(
    {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "AccessionNumber",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "IssuerOfPatientID",
        "ReferringPhysicianName",
        "StudyID",
    }
)
PAGE = 1000  # results asked for per QIDO-RS request

_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_SOP_CLASS = "00080016"
_ACCESSION = "00080050"
_MODALITY = "00080060"
_N_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances
_N_STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances


def split_filters(filters: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """params pacs.filters as (study-level, series-level) QIDO-RS matching keys."""
    study = {k: v for k, v in filters.items() if k in STUDY_KEYS}
    series = {k: v for k, v in filters.items() if k not in STUDY_KEYS}
    return study, series


def shown_filters(filters: Mapping[str, str]) -> dict[str, str]:
    """The filters as they may be shown: identifying values replaced by "(hidden)"."""
    return {k: "(hidden)" if k in IDENTIFYING_KEYS else v for k, v in sorted(filters.items())}


@dataclass(frozen=True)
class FoundStudy:
    uid: str
    accession: str
    n_instances: int | None = None  # NumberOfStudyRelatedInstances, when the server gives it


@dataclass(frozen=True)
class FoundSeries:
    study_uid: str
    uid: str
    n_instances: int | None  # NumberOfSeriesRelatedInstances, when the server gives it
    modality: str = ""


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _count(item: Mapping[str, Any], tag: str) -> int | None:
    text = _value(item, tag)
    return int(text) if text.isdigit() else None


def search_all(
    pacs: PacsParams, what: str, search: Callable[[int, int], list[dict[str, Any]]], tag: str
) -> list[dict[str, Any]]:
    """Every result of a paged QIDO-RS search, `search(offset, limit)`, de-duplicated by the
    UID at `tag`.

    Not dicomweb-client's get_remaining: it pages until an empty page, and Orthanc 1.10
    ignores `offset` with some keys (ModalitiesInStudy), so that never ends. A page that
    brings nothing new ends the search here.
    """
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = call(pacs, what, lambda o=offset: search(o, PAGE))
        new = {_value(item, tag): item for item in page if _value(item, tag) not in found}
        found.update(new)
        if len(page) < PAGE or not new:
            return list(found.values())
        offset += len(page)


def find_studies(
    client: DICOMwebClient, pacs: PacsParams, filters: Mapping[str, str]
) -> list[FoundStudy]:
    """The studies the study-level filters match."""
    found = search_all(
        pacs,
        "QIDO-RS search for studies",
        lambda offset, limit: client.search_for_studies(
            search_filters=dict(filters),
            fields=["AccessionNumber", "NumberOfStudyRelatedInstances"],
            offset=offset,
            limit=limit,
        ),
        _STUDY_UID,
    )
    return [
        FoundStudy(_value(s, _STUDY_UID), _value(s, _ACCESSION), _count(s, _N_STUDY_INSTANCES))
        for s in found
    ]


def find_series(
    client: DICOMwebClient,
    pacs: PacsParams,
    study_uid: str,
    filters: Mapping[str, str],
    *,
    with_seg: bool = False,
) -> list[FoundSeries]:
    """A study's series the series-level filters match (with_seg: and its SEG series, the
    masks of a segmentation task, whatever the filters say of the images)."""
    queries = [dict(filters)]
    if with_seg and filters:
        queries.append({"Modality": "SEG"})
    series: dict[str, FoundSeries] = {}
    for query in queries:
        for item in search_all(
            pacs,
            "QIDO-RS search for series",
            lambda offset, limit, q=query: client.search_for_series(
                study_uid,
                search_filters=q,
                fields=["NumberOfSeriesRelatedInstances"],
                offset=offset,
                limit=limit,
            ),
            _SERIES_UID,
        ):
            uid = _value(item, _SERIES_UID)
            series[uid] = FoundSeries(
                study_uid, uid, _count(item, _N_INSTANCES), _value(item, _MODALITY)
            )
    return list(series.values())


def find_instances(
    client: DICOMwebClient, pacs: PacsParams, study_uid: str, series_uid: str
) -> list[str]:
    """The SOP Instance UIDs of one series."""
    found = search_all(
        pacs,
        "QIDO-RS search for instances",
        lambda offset, limit: client.search_for_instances(
            study_uid, series_uid, offset=offset, limit=limit
        ),
        _SOP_UID,
    )
    return [_value(i, _SOP_UID) for i in found]


def find_instance_classes(
    client: DICOMwebClient, pacs: PacsParams, study_uid: str, series_uid: str
) -> dict[str, str]:
    """{SOP Instance UID: SOP Class UID} of one series."""
    found = search_all(
        pacs,
        "QIDO-RS search for instances",
        lambda offset, limit: client.search_for_instances(
            study_uid, series_uid, fields=["SOPClassUID"], offset=offset, limit=limit
        ),
        _SOP_UID,
    )
    return {_value(i, _SOP_UID): _value(i, _SOP_CLASS) for i in found}
