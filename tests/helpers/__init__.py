"""Helpers every test tier shares: identifying values of DICOM files, hashes, dvc stages."""
