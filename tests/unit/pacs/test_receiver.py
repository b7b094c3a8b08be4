"""The receiver in-process: a real pynetdicom SCP on loopback, a real pynetdicom SCU."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medflow.cli.pacs import _receive_source
from medflow.config import Params
from medflow.errors import PacsError
from medflow.pacs.receive_files import Filer, Targets
from medflow.pacs.receiver import CANNOT_UNDERSTAND, Receiver, ReceiverSettings
from tests.helpers.deid_key import KEY
from tests.helpers.dicom_files import image_dataset


@pytest.fixture
def receiver(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Receiver]:
    caplog.set_level(logging.DEBUG, logger="medflow")
    targets = Targets(tmp_path / "in", tmp_path / "held", None, ("normal", "lesion"), KEY)
    settings = ReceiverSettings("MEDFLOW", "127.0.0.1", 0, ("MODALITY1",))
    r = Receiver(settings, Filer(targets))
    r.start()
    yield r
    r.stop()


def _associate(port: int, calling: str) -> object:
    scu = AE(ae_title=calling)
    scu.add_requested_context(Verification)
    scu.add_requested_context(CTImageStorage, [RLELossless])  # a sender of compressed data
    return scu.associate("127.0.0.1", port, ae_title="MEDFLOW")


def _dataset(**attrs: object) -> Dataset:
    return image_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8), **attrs)


def test_echo_and_store_keep_the_sent_encoding(receiver: Receiver, caplog):
    ds = _dataset()
    ds.compress(RLELossless)
    assoc = _associate(receiver.port, "MODALITY1")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    (path,) = (receiver.filer.t.source / "received").rglob("*.dcm")
    got = pydicom.dcmread(path)
    assert got.file_meta.TransferSyntaxUID == RLELossless  # stored as sent, not transcoded
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert (got.pixel_array == ds.pixel_array).all()
    assert receiver.counts.filed == 1 and receiver.counts.echoes == 1
    uids = (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    records = caplog.get_records("setup") + caplog.records
    ours = "\n".join(r.getMessage() for r in records if r.name.startswith("medflow"))
    assert "receiving as AE MEDFLOW" in ours and not any(u in ours for u in uids)


def test_an_unlisted_calling_ae_is_rejected(receiver: Receiver, caplog):
    assoc = _associate(receiver.port, "INTRUDER")
    assert assoc.is_rejected
    assert receiver.counts.rejected == 1
    assert "association from AE INTRUDER rejected" in caplog.text
    assert not receiver.filer.t.source.exists() or not any(receiver.filer.t.source.rglob("*"))


def test_no_allowed_titles_rejects_everyone(tmp_path: Path, caplog):
    targets = Targets(tmp_path / "in", tmp_path / "held", None, ("normal", "lesion"), KEY)
    r = Receiver(ReceiverSettings("MEDFLOW", "127.0.0.1", 0, ()), Filer(targets))
    r.start()
    try:
        assert "every association will be rejected" in caplog.text
        assert _associate(r.port, "MODALITY1").is_rejected
    finally:
        r.stop()


def test_an_instance_without_study_uid_is_refused(receiver: Receiver, caplog):
    ds = _dataset()
    ds.compress(RLELossless)
    del ds.StudyInstanceUID
    assoc = _associate(receiver.port, "MODALITY1")
    assert assoc.send_c_store(ds).Status == CANNOT_UNDERSTAND
    assoc.release()
    assert receiver.counts.failed == 1 and "has no StudyInstanceUID" in caplog.text
    assert ds.SOPInstanceUID not in caplog.text


def test_a_busy_port_is_a_clear_error(receiver: Receiver, tmp_path: Path):
    targets = Targets(tmp_path / "in2", tmp_path / "held2", None, ("a", "b"), KEY)
    settings = ReceiverSettings("MEDFLOW", "127.0.0.1", receiver.port, ("MODALITY1",))
    with pytest.raises(PacsError, match=f"cannot listen on 127.0.0.1:{receiver.port}"):
        Receiver(settings, Filer(targets)).start()


@pytest.mark.parametrize(
    ("source", "message"),
    [("synthetic", "synth stage rewrites"), ("pacs", "mirrors the PACS query")],
)
def test_sources_the_receiver_must_not_write_into(tmp_path: Path, source: str, message: str):
    with pytest.raises(PacsError, match=message):
        _receive_source(Params(), tmp_path, source)
    assert _receive_source(Params(), tmp_path, "incoming") == tmp_path / "incoming"
