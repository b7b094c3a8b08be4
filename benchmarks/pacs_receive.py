"""Receive throughput: `medflow receive` against a bare pynetdicom SCP, on the same instances.

One pynetdicom SCU association sends N instances of a PACS-like CT corpus (mixed transfer
syntaxes, benchmarks/_dicom_corpus.py) to, in turn:

1. a bare pynetdicom C-STORE SCP (STACK_NOTES part 2 §2): decode, add the file meta,
   `save_as` to a temporary name, rename to `<SOPInstanceUID>.dcm`; nothing else;
2. `medflow receive` filing into a source folder with `labels.csv` (a row per instance, the
   file rewritten atomically each time), studies labelled by a study labels CSV;
3. `medflow receive` filing into class folders (no labels.csv).

Each SCP runs in its own process (started, and answering a C-ECHO, before the clock starts);
the clock runs on the SCU side from A-ASSOCIATE to A-RELEASE. Rounds alternate the candidates;
the best of --repeat rounds counts. Target (issue 21): medflow >= 0.9x the bare SCP. It
reports, it does not gate: the exit code is 0 whether the target is met or missed.

    .venv/bin/python benchmarks/pacs_receive.py                # 600 files of 512 x 512, best of 3
    .venv/bin/python benchmarks/pacs_receive.py --quick        # 150 files of 256 x 256
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import yaml
from _dicom_corpus import write_corpus

ROOT = Path(__file__).resolve().parents[1]
KEY = "medflow-benchmark-key-not-a-secret"
TARGET = 0.9  # x the bare pynetdicom SCP, at least
CANDIDATES = ("bare", "medflow-labels-csv", "medflow-class-folders")


def bare_scp(port: int, out: Path) -> None:
    """The bare SCP (run in a child process): the STACK_NOTES snippet, all storage classes."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    def on_store(event):  # noqa: ANN001, ANN202
        ds = event.dataset
        ds.file_meta = event.file_meta
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".part")
        os.close(fd)
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out / f"{ds.SOPInstanceUID}.dcm")
        return 0x0000

    ae = AE(ae_title="MEDFLOW")
    ae.require_calling_aet = ["BENCHSCU"]
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _echo_ok(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDFLOW")
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def _project(
    base: Path, datasets: list[pydicom.Dataset], labels: dict[str, str], csv_mode: bool
) -> Path:
    """A project folder: params.yaml (data.source: incoming) and the study labels CSV."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        source="incoming", class_names=["normal", "lesion"], task="classification"
    )
    (base / "data" / "incoming").mkdir(parents=True)
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with (base / "data" / "pacs_labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["StudyInstanceUID", "label"])
        writer.writerows(
            sorted(
                {(str(ds.StudyInstanceUID), labels[str(ds.StudyInstanceUID)]) for ds in datasets}
            )
        )
    if csv_mode:
        (base / "data" / "incoming" / "labels.csv").write_text("path,label\n")
    return base


def _start(candidate: str, base: Path, port: int, datasets, labels) -> subprocess.Popen:  # noqa: ANN001
    log = (base.parent / f"{base.name}.log").open("wb")
    if candidate == "bare":
        out = base / "out"
        out.mkdir(parents=True)
        cmd = [sys.executable, __file__, "--bare-scp", str(port), str(out)]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    project = _project(base, datasets, labels, csv_mode=candidate == "medflow-labels-csv")
    env = {**os.environ, "MEDFLOW_DEID_KEY": KEY, "MEDFLOW_LOG_LEVEL": "WARNING"}
    medflow = str(Path(sys.executable).parent / "medflow")
    cmd = [
        medflow,
        "receive",
        "--params",
        str(project / "params.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--allow",
        "BENCHSCU",
    ]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=project)


def _send(port: int, datasets: list[pydicom.Dataset]) -> float:
    """Seconds to send every dataset over one association (A-ASSOCIATE to A-RELEASE)."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCHSCU")
    for ts in sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets}):
        ae.add_requested_context(datasets[0].SOPClassUID, [ts])
    start = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDFLOW")
    assert assoc.is_established, "the SCP refused the association"
    bad = sum(assoc.send_c_store(ds).Status != 0 for ds in datasets)
    assoc.release()
    seconds = time.perf_counter() - start
    if bad:
        raise RuntimeError(f"{bad} C-STOREs failed")
    return seconds


def _count_written(candidate: str, base: Path) -> int:
    where = base / "out" if candidate == "bare" else base / "data" / "incoming"
    return sum(1 for p in where.rglob("*.dcm"))


def run(n: int, size: int, repeat: int, work: Path) -> dict[str, object]:
    corpus = work / "corpus"
    files = write_corpus(corpus, n, size=size)
    datasets = [pydicom.dcmread(corpus / f.rel) for f in files]
    labels = {str(ds.StudyInstanceUID): f.label for ds, f in zip(datasets, files, strict=True)}
    mb = sum((corpus / f.rel).stat().st_size for f in files) / 1e6
    seconds: dict[str, list[float]] = {c: [] for c in CANDIDATES}
    for r in range(repeat):
        for candidate in CANDIDATES:
            base = work / f"{candidate}-{r}"
            port = _free_port()
            proc = _start(candidate, base, port, datasets, labels)
            try:
                deadline = time.monotonic() + 60
                while not _echo_ok(port):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{candidate} did not start: see {base}.log")
                    time.sleep(0.2)
                seconds[candidate].append(_send(port, datasets))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            written = _count_written(candidate, base)
            if written != n:
                raise RuntimeError(f"{candidate} wrote {written} of {n} files")
            shutil.rmtree(base)
            print(
                f"round {r + 1} {candidate:22s} {n / seconds[candidate][-1]:7.1f} files/s",
                flush=True,
            )
    best = {c: n / min(s) for c, s in seconds.items()}
    median = {c: n / statistics.median(s) for c, s in seconds.items()}
    return {
        "files": n,
        "size": size,
        "megabytes": round(mb, 1),
        "repeat": repeat,
        "best_files_per_s": best,
        "median_files_per_s": median,
        "ratio_best": {c: best[c] / best["bare"] for c in CANDIDATES[1:]},
        "ratio_median": {c: median[c] / median["bare"] for c in CANDIDATES[1:]},
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="150 files of 256 x 256")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), Path(args.bare_scp[1]))
        return
    n, size = (150, 256) if args.quick else (args.files, args.size)
    print(
        f"{platform.python_version()}, pydicom {pydicom.__version__}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}: {n} files of {size} x {size}, best of {args.repeat}"
    )
    with tempfile.TemporaryDirectory(prefix="medflow-bench-receive-") as tmp:
        figures = run(n, size, args.repeat, Path(tmp))
    print(f"\n{figures['files']} files, {figures['megabytes']} MB, one association each")
    for c in CANDIDATES:
        print(
            f"  {c:22s} best {figures['best_files_per_s'][c]:7.1f} files/s"
            f"   median {figures['median_files_per_s'][c]:7.1f} files/s"
        )
    for c in CANDIDATES[1:]:
        ratio = figures["ratio_best"][c]
        verdict = "PASS" if ratio >= TARGET else "MISS"
        print(
            f"{c} / bare SCP: {ratio:.2f}x best, {figures['ratio_median'][c]:.2f}x median"
            f" (target >= {TARGET}x)  {verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
