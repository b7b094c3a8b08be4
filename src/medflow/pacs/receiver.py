"""`medflow receive`: a DICOM C-STORE and C-ECHO SCP (pynetdicom) that files each received
instance into the source folder (medflow.pacs.receive_files), where the data watcher sees it.

Only the configured calling AE titles may associate. The received bytes are written as sent
(file meta added, no re-encoding), so any transfer syntax, compressed ones too, is kept as is.
Logs carry counts and AE titles (which name devices, not patients), never a UID.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from medflow.errors import PacsError
from medflow.pacs.receive_files import Filer

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # could not write: the sender may try again later
CANNOT_UNDERSTAND = 0xC000  # no Study Instance UID, or not decodable: sending again won't help
UNEXPECTED_FAILURE = 0xC001  # a bug here; the log line names the exception type
REFRESH_SECONDS = 5.0  # how often an idle receiver re-reads the labels to file held studies


@dataclass(frozen=True)
class ReceiverSettings:
    """Who the receiver is and whom it accepts (params pacs.receive, CLI overrides)."""

    ae_title: str
    host: str
    port: int
    allowed: tuple[str, ...]  # calling AE titles; empty: every association is rejected


@dataclass
class Counts:
    """What the receiver did, for the logs (counts only)."""

    filed: int = 0  # written into the source folder
    held: int = 0  # written into the held folder, waiting for a label
    failed: int = 0  # answered with a failure status
    echoes: int = 0
    rejected: int = 0  # associations refused (calling AE title not allowed)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def summary(self) -> str:
        return (
            f"{self.filed} filed, {self.held} held for a label, {self.failed} failed,"
            f" {self.echoes} echoes, {self.rejected} associations rejected"
        )


class _NoOne(list[str]):
    """A calling-AE list that is non-empty to pynetdicom (so it checks) but matches nobody."""

    def __bool__(self) -> bool:
        return True


class _ReceiverAE(AE):
    """pynetdicom reads an empty require_calling_aet as "accept anyone"; here it means no one:
    a receiver configured with no senders must not take images from anybody."""

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        return AE.require_calling_aet.fget(self) or _NoOne()  # type: ignore[attr-defined]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        AE.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]


def make_ae(settings: ReceiverSettings) -> AE:
    """The application entity: every storage SOP class in every transfer syntax, and
    Verification (C-ECHO). Raises ValueError for an invalid AE title."""
    ae = _ReceiverAE(ae_title=settings.ae_title)
    ae.require_calling_aet = list(settings.allowed)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


class Receiver:
    """A running SCP: start() listens in background threads, stop() shuts it down."""

    def __init__(self, settings: ReceiverSettings, filer: Filer) -> None:
        self.settings = settings
        self.filer = filer
        self.counts = Counts()
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        """Listen on host:port. Raises PacsError when the address cannot be bound."""
        s = self.settings
        if not s.allowed:
            logger.warning(
                "no allowed calling AE titles (params pacs.receive.allowed_calling_ae_titles or"
                " --allow): every association will be rejected"
            )
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        try:
            self._server = make_ae(s).start_server(
                (s.host, s.port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            raise PacsError(
                f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc} (another receiver"
                " or program on that port? choose another with --port)"
            ) from None
        logger.info(
            "receiving as AE %s on %s:%d from %s; filed into %s, unlabelled studies held in %s",
            s.ae_title,
            s.host,
            self.port,
            ", ".join(s.allowed) or "no one",
            self.filer.t.source,
            self.filer.t.held,
        )

    @property
    def port(self) -> int:
        """The port listened on (the bound one, when settings.port was 0)."""
        return self._server.server_address[1] if self._server else self.settings.port

    def stop(self) -> Counts:
        """Stop listening (open associations are aborted); log and return the counts."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        logger.info("receiver stopped: %s", self.counts.summary())
        return self.counts

    def serve(self, stop: threading.Event, refresh_seconds: float = REFRESH_SECONDS) -> Counts:
        """start(), then file held studies whose label appeared every refresh_seconds until
        `stop` is set; then stop()."""
        self.start()
        try:
            while not stop.wait(refresh_seconds):
                self.filer.refresh()
        finally:
            self.stop()
        return self.counts

    # ------------------------------------------------------------------ handlers
    def _on_store(self, event: Event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            study = str(ds.get("StudyInstanceUID", "") or "")
            accession = str(ds.get("AccessionNumber", "") or "")
        except Exception as exc:  # a malformed dataset must not stop the association
            return self._failed(calling, f"could not be decoded ({type(exc).__name__})")
        if not study:
            return self._failed(calling, "has no StudyInstanceUID", CANNOT_UNDERSTAND)
        sop = str(event.request.AffectedSOPInstanceUID)
        try:
            filed = self.filer.store(event.encoded_dataset(), study, sop, accession)
        except OSError as exc:
            return self._failed(
                calling, f"could not be written ({exc.strerror or 'I/O error'})", OUT_OF_RESOURCES
            )
        except PacsError as exc:  # labels.csv unusable: a message naming the file, no UID
            return self._failed(calling, f"could not be labelled: {exc}", OUT_OF_RESOURCES)
        except Exception as exc:
            return self._failed(calling, f"failed ({type(exc).__name__})", UNEXPECTED_FAILURE)
        self.counts.add("filed" if filed else "held")
        return SUCCESS

    def _failed(self, calling: str, what: str, status: int = CANNOT_UNDERSTAND) -> int:
        self.counts.add("failed")
        logger.warning("an instance from AE %s %s: answered 0x%04X", calling, what, status)
        return status

    def _on_echo(self, event: Event) -> int:
        self.counts.add("echoes")
        return SUCCESS

    def _on_rejected(self, event: Event) -> None:
        self.counts.add("rejected")
        logger.warning(
            "association from AE %s rejected: not an allowed calling AE title",
            event.assoc.requestor.ae_title,
        )


def quiet_pynetdicom() -> None:
    """pynetdicom logs requests (with UIDs) at INFO and DEBUG: keep only its warnings."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
