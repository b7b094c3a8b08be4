"""Reading DICOM, de-identification, the manifest, splits and synthetic data."""
