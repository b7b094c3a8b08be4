"""Retrieval throughput: medflow's pull against a bare dicomweb-client loop, same studies.

A real Orthanc (Debian's orthanc + orthanc-dicomweb, started here with its own storage)
holds, in turn, two corpora STOW'd before the clock starts:

- `ct`: a PACS-like CT corpus (benchmarks/_dicom_corpus.py): series of 120 slices, mixed
  transfer syntaxes (compressed ones stay compressed: both sides ask for any syntax);
- `xr`: the synthetic chest X-rays of the synth stage, one image per study (request-bound).

On each, timed from the first query to the last file on disk, fresh output folder each round:

1. bare: `search_for_studies`, then for each study `retrieve_study` and `save_as` of each
   instance as `<SOPInstanceUID>.dcm` (sequential, no labels, no atomic writes, no tokens);
2. medflow: `run_pull` (QIDO-RS studies, series; WADO-RS by series on pacs.workers threads;
   atomic files under keyed tokens; labels.csv; the record), in this process;
3. medflow with ingest.workers 2: the same shards on 2 local worker processes.

Rounds alternate the candidates; the best of --repeat counts. Target (issue 21): medflow >=
0.9x the bare loop. It reports, it does not gate: exit code 0 whether met or missed.

    .venv/bin/python benchmarks/pacs_retrieve.py              # 480 CT files 512x512, 240 X-rays
    .venv/bin/python benchmarks/pacs_retrieve.py --quick      # 240 CT files 256x256, 120 X-rays
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pydicom
from _dicom_corpus import write_corpus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medflow.config import DataParams, PacsParams, SynthParams  # noqa: E402
from medflow.data.synthetic import run_synth  # noqa: E402
from medflow.data.workers import local_mapper, serial_mapper  # noqa: E402
from medflow.pacs.pull import run_pull  # noqa: E402
from tests.helpers.orthanc import Orthanc  # noqa: E402

KEY = b"medflow-benchmark-key-not-a-secret"
TARGET = 0.9  # x the bare dicomweb-client loop, at least
ANY = (("application/dicom", "*"),)


def bare_loop(orthanc: Orthanc, out: Path) -> int:
    """What a user would write with dicomweb-client: every study, every instance, to disk."""
    client = orthanc.client()
    studies = client.search_for_studies(limit=100000)
    n = 0
    for study in studies:
        uid = pydicom.Dataset.from_json(study).StudyInstanceUID
        for ds in client.retrieve_study(uid, media_types=ANY):
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            n += 1
    return n


def medflow_pull(orthanc: Orthanc, out: Path, labels: Path, workers: int) -> int:
    pacs = PacsParams(url=orthanc.dicomweb)
    mapper = serial_mapper if workers == 1 else local_mapper(workers, ("medflow.pacs.retrieve",))
    result = run_pull(
        pacs, DataParams(source="pacs"), out, labels, KEY, mapper=mapper, env=orthanc.env
    )
    return result.retrieved


def publish(kind: str, orthanc: Orthanc, scratch: Path, files: int, size: int) -> Path:
    """STOW the corpus; the study labels CSV (every study labelled)."""
    folder = scratch / f"corpus-{kind}"
    if kind == "ct":
        paths = [folder / c.rel for c in write_corpus(folder, files, size=size)]
    else:
        synth = SynthParams(n_patients=max(6, files // 2), images_per_patient=2)
        run_synth(synth, ["normal", "lesion"], folder)
        paths = [folder / p for p in pd.read_csv(folder / "labels.csv").path]
    stored = 0
    for start in range(0, len(paths), 40):
        stored += orthanc.store(paths[start : start + 40])
    studies = sorted({pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in paths})
    labels = scratch / f"labels-{kind}.csv"
    pd.DataFrame({"StudyInstanceUID": studies, "label": "normal"}).to_csv(labels, index=False)
    print(f"{kind}: {stored} instances in {len(studies)} studies STOW'd", file=sys.stderr)
    return labels


def measure(kind: str, args: argparse.Namespace, scratch: Path) -> dict[str, object]:
    orthanc = Orthanc(scratch / f"orthanc-{kind}").start()
    try:
        files = args.files if kind == "ct" else args.files // 2
        labels = publish(kind, orthanc, scratch, files, args.size)
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        candidates = {
            "bare": lambda out: bare_loop(orthanc, out),
            "medflow": lambda out: medflow_pull(orthanc, out, labels, 1),
            "medflow-2-processes": lambda out: medflow_pull(orthanc, out, labels, 2),
        }
        for round_ in range(args.repeat):
            order = list(candidates) if round_ % 2 == 0 else list(reversed(candidates))
            for name in order:
                out = scratch / f"out-{kind}-{name}-{round_}"
                out.mkdir()
                start = time.perf_counter()
                counts[name] = candidates[name](out)
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, float("inf")), seconds)
                shutil.rmtree(out)
        figures = {name: counts[name] / best[name] for name in best}
        row = {
            "corpus": kind,
            "instances": counts,
            "seconds": {k: round(v, 3) for k, v in best.items()},
            "instances_per_s": {k: round(v, 1) for k, v in figures.items()},
            "ratio": round(figures["medflow"] / figures["bare"], 3),
            "ratio_2_processes": round(figures["medflow-2-processes"] / figures["bare"], 3),
        }
        return row
    finally:
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=480, help="CT instances (X-rays: half)")
    parser.add_argument("--size", type=int, default=512, help="CT rows and columns")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best counts")
    parser.add_argument("--quick", action="store_true", help="240 CT files of 256x256")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.files, args.size = 240, 256
    with tempfile.TemporaryDirectory(prefix="medflow-pacs-bench-") as tmp:
        rows = [measure(kind, args, Path(tmp)) for kind in ("ct", "xr")]
    print(
        f"pacs_retrieve: {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}"
    )
    for row in rows:
        ips = row["instances_per_s"]
        verdict = "PASS" if row["ratio"] >= TARGET else "MISS"
        print(
            f"{row['corpus']}: bare {ips['bare']}/s, medflow {ips['medflow']}/s"
            f" (2 processes {ips['medflow-2-processes']}/s); ratio {row['ratio']}x"
            f" (2 processes {row['ratio_2_processes']}x), target >= {TARGET}x: {verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
