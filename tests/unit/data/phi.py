"""Shared by the de-identification and ingest tests."""

KEY = b"unit-test-key-0123456789"
# The original values of these attributes must never reach an output.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
