"""Client errors of the service: each a 4xx status and a JSON body naming the problem.

The body is {"error": <short code>, "detail": <what was wrong and what to send instead>}.
Details are built from derived values only (sizes, tag names, photometric, modality), never
from file names or identifying header values.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse

from medflow.imaging.dicom import (
    DicomError,
    ImageTooLarge,
    NoPixelData,
    NotAnImage,
    UndecodablePixels,
    UnsupportedImage,
    UnsupportedPhotometric,
)


class ServeError(Exception):
    """A request the service refuses; `status` is the HTTP status, `code` a stable name."""

    def __init__(self, status: HTTPStatus, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail = status, code, detail

    def response(self) -> JSONResponse:
        """The JSON error response, with WWW-Authenticate (401) or Retry-After (503)."""
        headers = None
        if self.status == HTTPStatus.UNAUTHORIZED:
            headers = {"WWW-Authenticate": "Bearer"}
        elif self.status == HTTPStatus.SERVICE_UNAVAILABLE:
            headers = {"Retry-After": "1"}
        return JSONResponse(
            {"error": self.code, "detail": self.detail}, status_code=self.status, headers=headers
        )


# Most specific first: NotAnImage etc. are DicomErrors too.
_DICOM_ERRORS: tuple[tuple[type[DicomError], HTTPStatus, str], ...] = (
    (ImageTooLarge, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "image_too_large"),
    (NoPixelData, HTTPStatus.UNPROCESSABLE_ENTITY, "no_pixel_data"),
    (NotAnImage, HTTPStatus.UNPROCESSABLE_ENTITY, "not_an_image"),
    (UnsupportedPhotometric, HTTPStatus.UNPROCESSABLE_ENTITY, "unsupported_photometric"),
    (UnsupportedImage, HTTPStatus.UNPROCESSABLE_ENTITY, "unsupported_image"),
    (UndecodablePixels, HTTPStatus.UNPROCESSABLE_ENTITY, "undecodable_pixel_data"),
)


def from_dicom_error(exc: DicomError) -> ServeError:
    """The HTTP error for a DicomError raised while checking or decoding an image."""
    for kind, status, code in _DICOM_ERRORS:
        if isinstance(exc, kind):
            return ServeError(status, code, str(exc))
    return ServeError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_image", str(exc))
