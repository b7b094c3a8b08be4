"""Reading DICOM safely, decoding pixels, and the one preprocessing path the Bento imports."""
