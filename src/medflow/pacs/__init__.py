"""The PACS: a DICOMweb source, a DIMSE receiver, and results sent back by STOW-RS."""
