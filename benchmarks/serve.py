"""The served Bento against a plain FastAPI + torch server of the same model, in one run.

Both servers run on loopback, one after the other, and load the same model folder, the same
medflow preprocessing (medflow.imaging.preprocess) and the same forward pass (channels_last,
medflow.serving.engine.probabilities), so that they differ in serving only; the Bento is built
from deploy/bentofile.yaml by medflow.registry.packaging, exactly as the pipeline builds it,
into a temporary BENTOML_HOME. The model is the network of params.yaml's `train` section with
random weights (speed does not depend on what it learnt). An async aiohttp client POSTs one
synthetic DICOM file to /predict, at concurrency 1 and 32, and records each request's latency;
in-process inference (read + preprocess + forward, no HTTP; the median of three fresh
processes) gives the floor; an app that answers a constant gives the cost of HTTP alone, and a
BentoML API that takes the upload and does nothing the cost of BentoML alone
(benchmarks/bentoml_noop.py).

Targets: at concurrency 32 medflow's requests/s >= the plain server's; at concurrency 1 the
Bento's p50 at most 5 ms above in-process inference. `--soak`: 50 clients for 60 s against
the Bento, zero errors and a steady server RSS. It reports, it does not gate: exit code 0
whether targets are met or missed.

    .venv/bin/python benchmarks/serve.py                  # 400 requests per level
    .venv/bin/python benchmarks/serve.py --quick          # 100 requests per level
    .venv/bin/python benchmarks/serve.py --soak           # and the 60 s soak
    .venv/bin/python benchmarks/serve.py --segment        # a U-Net's Bento, POST /segment

`--prediction-log`: instead, the Bento with its prediction log off and on, served side by
side and measured in alternating blocks (benchmarks/_serve_log.py). Targets: logging adds at
most 0.5 ms to the p50 at concurrency 1 and costs at most 5 % of the requests/s at 32; the
log-on store holds one row per answered request, the log-off store none.

    .venv/bin/python benchmarks/serve.py --prediction-log          # 2400 requests per level
    .venv/bin/python benchmarks/serve.py --prediction-log --quick  # 400

`--segment`: the same comparison for a segmentation model (a U-Net of train.unet_channels,
random weights, a threshold of 0.5): the Bento's /segment (masks back in the upload's
geometry, areas, boxes, mask PNGs: medflow.serving.segment) against the plain server doing the
same work with the same functions; the floor is that work in process.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# Module level: FastAPI resolves the handler's (string) annotations in this module's globals.
from fastapi import File, UploadFile

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 32)
TARGET_OVERHEAD_MS = 5.0
TARGET_THROUGHPUT_RATIO = 1.0
SOAK_GROWTH_MIB = 50.0  # "steady": the server tree grows by less than this over the soak


@dataclass(frozen=True)
class Load:
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rps: float


# ---- the plain server: what a team would write without BentoML --------------------------


def plain_app(model_dir: Path):  # -> fastapi.FastAPI
    import torch
    from fastapi import FastAPI, HTTPException

    from medflow.imaging.preprocess import DicomError, preprocess_dataset, read_dicom
    from medflow.models.artifact import load_model
    from medflow.serving.engine import probabilities

    net, spec = load_model(model_dir)
    net = net.eval().to(memory_format=torch.channels_last)  # as the Bento's, so as fast
    params = spec.preprocess_params
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ok": True}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008 (FastAPI's idiom)
        try:
            image, _ = preprocess_dataset(read_dicom(file.file), params)
        except DicomError as exc:
            raise HTTPException(400, str(exc)) from None
        probs = probabilities(net, image[None], torch.device("cpu"))[0].tolist()
        return {"probabilities": dict(zip(spec.class_names, probs, strict=True))}

    @app.post("/segment")
    def segment(file: UploadFile = File(...)) -> dict:  # noqa: B008 (FastAPI's idiom)
        try:
            return segment_answer(net, spec, read_dicom(file.file))
        except DicomError as exc:
            raise HTTPException(400, str(exc)) from None

    return app


def segment_answer(net, spec, ds) -> dict:  # noqa: ANN001 (torch, ModelSpec, Dataset)
    """What /segment computes, without the service: preprocess, sigmoid, masks in the
    upload's geometry, segments with their PNGs (medflow.serving.segment)."""
    import torch

    from medflow.imaging.preprocess import preprocess_dataset
    from medflow.serving.engine import probabilities
    from medflow.serving.segment import pixel_spacing, segments, source_masks

    image, summary = preprocess_dataset(ds, spec.preprocess_params)
    probs = probabilities(net, image[None], torch.device("cpu"), "sigmoid")[0]
    masks = source_masks(probs, spec.threshold, summary.original_shape)
    spacing = pixel_spacing(ds)
    return {"segments": [s.model_dump() for s in segments(masks, spec.class_names[1:], spacing)]}


async def echo_app(scope: dict, receive, send) -> None:
    """Reads the request and answers a constant: the cost of HTTP alone, client included."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    ok = scope["path"] == "/readyz" or scope["method"] == "POST"
    await send({"type": "http.response.start", "status": 200 if ok else 404, "headers": []})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


def _run_plain(model_dir: Path, port: int) -> None:
    import uvicorn

    app = echo_app if model_dir.name == "echo" else plain_app(model_dir)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def serve_plain(model_dir: Path, workdir: Path) -> Iterator[tuple[str, int]]:
    """The plain server of model_dir on loopback (the echo app for a path named `echo`)."""
    import httpx

    from medflow.registry.infra_validation import free_port, stop_process_group

    port = free_port()
    log = workdir / f"plain-{model_dir.name}.log"
    cmd = [sys.executable, __file__, "--_plain", str(model_dir), "--_port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plain server did not start:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        yield url, proc.pid
    finally:
        stop_process_group(proc)


# ---- the Bento --------------------------------------------------------------------------


def build(workdir: Path, params_file: Path, segment: bool = False) -> tuple[Path, str]:
    """A model folder of the params' network (with `segment`, their U-Net) and the Bento
    serving it; (model_dir, bento)."""
    import torch

    from medflow.config import PackageParams, load_params
    from medflow.models.artifact import ModelSpec, save_model
    from medflow.models.net import build_network, build_unet
    from medflow.registry.packaging import run_package

    sys.path.insert(0, str(ROOT))
    from tests.helpers.handoffs import write_evaluated

    p = load_params(params_file)
    torch.manual_seed(p.train.seed)
    n = len(p.data.class_names)
    if segment:
        net = build_unet(1, n - 1, p.train.unet_channels, p.train.dropout)
        spec = ModelSpec(
            "unet",
            1,
            n - 1,
            p.train.width,
            p.train.dropout,
            list(p.data.class_names),
            p.preprocess.model_dump(),
            provenance={"data_hash": "benchmark"},
            task="segmentation",
            unet_channels=list(p.train.unet_channels),
        )
    else:
        net = build_network(p.train.architecture, 1, n, p.train.width, p.train.dropout)
        spec = ModelSpec(
            p.train.architecture,
            1,
            n,
            p.train.width,
            p.train.dropout,
            list(p.data.class_names),
            p.preprocess.model_dump(),
            provenance={"data_hash": "benchmark"},
        )
    model_dir = workdir / "model"
    save_model(model_dir, net, spec)
    if segment:
        _write_segmentation_evaluated(workdir, list(p.data.class_names[1:]))
    else:
        write_evaluated(workdir, auroc=0.5)
    result = run_package(
        PackageParams(),
        model_dir,
        workdir / "metrics.json",
        workdir / "gate.json",
        ROOT,
        workdir / "package.json",
    )
    return model_dir, result.bento_tag


def _write_segmentation_evaluated(folder: Path, segment_names: list[str]) -> None:
    """metrics.json and gate.json of a segmentation model the gate accepted (threshold 0.5)."""
    from medflow.config import GateParams
    from medflow.handoffs import NO_CHAMPION, ChampionComparison, GateReport, SegmentationMetrics

    scores = {"dice": 0.9, "iou": 0.8, "hd95": 2.0}
    values = {f"{k}{end}": v for k, v in scores.items() for end in ("", "_ci_low", "_ci_high")}
    metrics = SegmentationMetrics(
        **values,
        detection_sensitivity=1.0,
        false_positives_per_image=0.0,
        per_segment={name: scores for name in segment_names},
        threshold=0.5,
        n_images=1,
        n_patients=1,
        n_lesions=1,
    )
    metrics.write(folder / "metrics.json")
    GateReport(
        passed=True,
        decision="accepted",
        failures=[],
        rules=[],
        champion=ChampionComparison(status=NO_CHAMPION, reason="benchmark"),
        thresholds=GateParams(),
        metrics=metrics,
    ).write(folder / "gate.json")


def sample_file(workdir: Path) -> bytes:
    """One synthetic DICOM file (the first site: 96x96, 12 bits, with a window)."""
    from medflow.config import SynthParams
    from medflow.data.synthetic import run_synth

    run_synth(SynthParams(n_patients=6, images_per_patient=1), ["normal", "lesion"], workdir / "s")
    return next((workdir / "s").rglob("IM0001*")).read_bytes()


# ---- measuring --------------------------------------------------------------------------


def in_process_p50(model_dir: Path, data: bytes, n: int) -> float:
    """p50 ms of read + preprocess + forward in this process: the floor of any server."""
    import torch

    from medflow.imaging.preprocess import preprocess_dataset, read_dicom
    from medflow.models.artifact import load_model
    from medflow.serving.engine import probabilities

    net, spec = load_model(model_dir)
    net = net.eval().to(memory_format=torch.channels_last)  # as the Bento runs it
    params = spec.preprocess_params
    cpu = torch.device("cpu")
    times = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        if spec.task == "segmentation":
            segment_answer(net, spec, read_dicom(io.BytesIO(data)))
            if i >= 10:
                times.append((time.perf_counter() - t0) * 1000)
            continue
        image, _ = preprocess_dataset(read_dicom(io.BytesIO(data)), params)
        probabilities(net, image[None], cpu)[0].tolist()
        if i >= 10:  # warm-up
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _floor(model_dir: Path, sample: Path) -> float:
    """in_process_p50 in a fresh process, as each server is one (same threads, no build)."""
    cmd = [sys.executable, __file__, "--_floor", str(model_dir), str(sample)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _headers() -> dict[str, str]:
    token = os.environ.get("MEDFLOW_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _load(
    url: str,
    data: bytes,
    concurrency: int,
    n: int | None,
    seconds: float | None,
    route: str = "/predict",
):
    """n requests (or as many as fit in `seconds`) from `concurrency` clients.

    The client is aiohttp, not httpx: on this machine an httpx round trip to a server that
    answers at once costs 2.7 ms against aiohttp's 0.6 ms, and the client shares the cores
    with the server (`--echo` measures it). Both servers get the same client."""
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    deadline = time.monotonic() + seconds if seconds else None
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=_headers()
    ) as client:

        async def worker() -> None:
            nonlocal sent
            while (n is None or sent < n) and (deadline is None or time.monotonic() < deadline):
                sent += 1
                form = aiohttp.FormData()
                form.add_field("file", data, filename="image.dcm", content_type="application/dicom")
                t0 = time.perf_counter()
                try:
                    async with client.post(f"{url}{route}", data=form) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            errors.append(f"HTTP {resp.status}: {body[:200]!r}")
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall


def measure(url: str, data: bytes, concurrency: int, n: int, route: str = "/predict") -> Load:
    warm_up = max(10, concurrency * 2)
    asyncio.run(_load(url, data, concurrency, warm_up, None, route))
    lat, errors, wall = asyncio.run(_load(url, data, concurrency, n, None, route))
    if errors:
        print(f"  {len(errors)} errors at concurrency {concurrency}, first: {errors[0]}")
    if len(lat) < 2:
        nan = float("nan")
        return Load(concurrency, n, len(errors), nan, nan, len(lat) / wall)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return Load(concurrency, n, len(errors), statistics.median(lat), q[98], len(lat) / wall)


def tree_rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def soak(url: str, pid: int, data: bytes, clients: int, seconds: float) -> dict:
    """`clients` clients for `seconds` s; the server tree's RSS sampled every ~second."""
    asyncio.run(_load(url, data, clients, clients * 4, None))  # warm-up: allocations settle
    samples: list[tuple[float, float]] = []

    async def sampler(stop: asyncio.Event) -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, tree_rss_mib(pid)))
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(sampler(stop))
        result = await _load(url, data, clients, None, seconds)
        stop.set()
        await task
        return result

    lat, errors, wall = asyncio.run(run())
    start, end = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    growth = end - start
    # A leak keeps growing; warm-up growth flattens. The second half's growth tells them apart.
    second = [rss for t, rss in samples if t >= samples[-1][0] / 2]
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(lat) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rps": len(lat) / wall,
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": statistics.quantiles(lat, n=100)[98] if len(lat) > 1 else None,
        "rss_start_mib": start,
        "rss_end_mib": end,
        "rss_peak_mib": peak,
        "rss_growth_mib": growth,
        "rss_growth_second_half_mib": second[-1] - second[0],
        "rss_samples": [(round(t, 1), round(rss, 1)) for t, rss in samples],
        "steady": growth < SOAK_GROWTH_MIB,
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        help="per server and concurrency (default 400, 100 with --quick; --prediction-log: per"
        " mode and concurrency, default 2400, 400 with --quick)",
    )
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--quick", action="store_true", help="100 requests per level; soak 15 s")
    parser.add_argument("--soak", action="store_true", help="also the soak test")
    parser.add_argument(
        "--segment", action="store_true", help="a U-Net's Bento and POST /segment instead"
    )
    parser.add_argument(
        "--prediction-log",
        action="store_true",
        help="instead: the Bento with the prediction log off against on",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        help="--prediction-log: fresh server pairs, one after the other (default 3, 1 with"
        " --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="--prediction-log: blocks per mode, level and session (default 4)",
    )
    parser.add_argument("--soak-clients", type=int, default=50)
    parser.add_argument("--soak-seconds", type=float, help="default 60; 15 with --quick")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of every candidate (default 1)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--_plain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_floor", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._plain:
        _run_plain(args._plain, args._port)
        return 0
    if args._floor:
        print(in_process_p50(args._floor[0], args._floor[1].read_bytes(), 200))
        return 0
    if args.requests is None:
        args.requests = (
            (400 if args.quick else 2400) if args.prediction_log else 100 if args.quick else 400
        )
    args.sessions = args.sessions or (1 if args.quick else 3)
    args.rounds = args.rounds or 4
    if args.soak_seconds is None:
        args.soak_seconds = 15.0 if args.quick else 60.0
    logging.basicConfig(level=logging.WARNING)
    # Same intra-op threads for the floor and both servers (children inherit the environment).
    # torch's default (one per core) makes a forward pass 50x slower from the main thread of a
    # process when other work shares the cores: measured 335 ms against 6 ms with 1 thread.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    if args.prediction_log:
        return compare_prediction_log(args)

    with tempfile.TemporaryDirectory(prefix="medflow-bench-serve-") as tmp:
        work = Path(tmp)
        # A store of our own: the benchmark's Bento never mixes with the project's models.
        os.environ["BENTOML_HOME"] = str(work / "bentoml")
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        import torch

        from medflow.registry.infra_validation import serve_bento

        t0 = time.perf_counter()
        model_dir, bento_tag = build(work, args.params, segment=args.segment)
        route = "/segment" if args.segment else "/predict"
        data = sample_file(work)
        print(f"built {bento_tag} in {time.perf_counter() - t0:.1f} s; sample {len(data)} bytes")
        (work / "sample.dcm").write_bytes(data)
        floors = [_floor(model_dir, work / "sample.dcm")]

        results: dict[str, list[Load]] = {}
        rss: dict[str, float] = {}
        with serve_plain(Path("echo"), work) as (url, _):
            http_only = measure(url, data, 1, args.requests)
        noop_dir = work / "noop"
        noop_dir.mkdir()
        shutil.copy(ROOT / "benchmarks" / "bentoml_noop.py", noop_dir)
        with serve_bento("bentoml_noop:Noop", workdir=noop_dir) as server:
            bentoml_only = measure(server.url, data, 1, args.requests)
        with serve_plain(model_dir, work) as (url, pid):
            results["plain"] = [measure(url, data, c, args.requests, route) for c in CONCURRENCY]
            rss["plain"] = tree_rss_mib(pid)
            floors.append(_floor(model_dir, work / "sample.dcm"))
        with serve_bento(bento_tag, workdir=work / "serve") as server:
            results["medflow"] = [
                measure(server.url, data, c, args.requests, route) for c in CONCURRENCY
            ]
            rss["medflow"] = tree_rss_mib(server.pid)
            floors.append(_floor(model_dir, work / "sample.dcm"))
            soaked = (
                soak(server.url, server.pid, data, args.soak_clients, args.soak_seconds)
                if args.soak
                else None
            )

    print(
        f"model {load_net_name(args.params, args.segment)}, {route}, 1 DICOM file,"
        f" torch {torch.__version__}"
        f" ({args.threads} threads),"
        f" {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; client, servers"
        " and in-process run on the same machine"
    )
    # The median: a fresh process here runs the same code at either about 7 or about 9.5 ms
    # (bimodal, from process to process and over time; the servers are processes too), so the
    # minimum would credit the floor with luck that no server run is sure to have.
    floor = statistics.median(floors)
    print(
        f"in-process read + preprocess + forward: p50 {floor:.2f} ms (median of {len(floors)}"
        f" fresh processes, before the servers, beside the plain one, beside the Bento:"
        f" {' / '.join(f'{f:.2f}' for f in floors)} ms)"
    )
    print(
        f"HTTP alone (uvicorn app answering a constant, same client): p50 {http_only.p50_ms:.2f} ms"
    )
    print(
        f"BentoML alone (an API taking the same upload, doing nothing; benchmarks/bentoml_noop.py):"
        f" p50 {bentoml_only.p50_ms:.2f} ms, {bentoml_only.p50_ms - http_only.p50_ms:+.2f} over"
        " HTTP alone"
    )
    print(f"{'server':<8} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>6}")
    for name, loads in results.items():
        for r in loads:
            print(
                f"{name:<8} {r.concurrency:>4} {r.p50_ms:8.2f} {r.p99_ms:8.2f}"
                f" {r.rps:8.1f} {r.errors:>6}   (server RSS {rss[name]:.0f} MiB)"
            )
    med1, med32 = results["medflow"]
    plain1, plain32 = results["plain"]
    overhead = med1.p50_ms - floor
    ratio = med32.rps / plain32.rps
    print(
        f"concurrency 1: medflow p50 overhead over in-process {overhead:+.2f} ms"
        f" (target <= {TARGET_OVERHEAD_MS} ms)  {_verdict(overhead <= TARGET_OVERHEAD_MS)};"
        f" plain's {plain1.p50_ms - floor:+.2f} ms"
    )
    print(
        f"concurrency 32: medflow / plain throughput {ratio:.2f}x"
        f" (target >= {TARGET_THROUGHPUT_RATIO}x)  {_verdict(ratio >= TARGET_THROUGHPUT_RATIO)}"
    )
    if soaked:
        s = soaked
        print(
            f"soak: {s['clients']} clients for {s['seconds']} s: {s['requests']} requests,"
            f" {s['errors']} errors, {s['rps']:.1f} req/s, p50 {s['p50_ms']:.1f} ms,"
            f" p99 {s['p99_ms']:.1f} ms  {_verdict(s['errors'] == 0)}"
        )
        print(
            f"soak memory (server tree RSS): start {s['rss_start_mib']:.0f} MiB, end"
            f" {s['rss_end_mib']:.0f} MiB, peak {s['rss_peak_mib']:.0f} MiB, growth"
            f" {s['rss_growth_mib']:+.1f} MiB, of it in the second half"
            f" {s['rss_growth_second_half_mib']:+.1f} MiB"
            f" ({'steady' if s['steady'] else 'NOT steady'};"
            f" target < {SOAK_GROWTH_MIB:.0f} MiB)  {_verdict(s['steady'])}"
        )
        if s["first_error"]:
            print(f"  first error: {s['first_error']}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "route": route,
                    "in_process_p50_ms": floor,
                    "in_process_p50_ms_each": floors,
                    "http_alone_p50_ms": http_only.p50_ms,
                    "bentoml_noop_p50_ms": bentoml_only.p50_ms,
                    "loads": {k: [asdict(r) for r in v] for k, v in results.items()},
                    "overhead_ms": overhead,
                    "throughput_ratio": ratio,
                    "soak": soaked,
                },
                indent=2,
            )
        )
    return 0


def compare_prediction_log(args: argparse.Namespace) -> int:
    """--prediction-log: one Bento served twice at once, its prediction log off and on
    (benchmarks/_serve_log.py measures, checks the rows and reports)."""
    import _serve_log as plog
    import torch

    from medflow.registry.infra_validation import serve_bento

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    per_block = -(-args.requests // (args.sessions * args.rounds))
    out: dict = {"started": started, "n_sessions": args.sessions, "blocks": args.rounds}
    out["per_block"] = per_block
    with tempfile.TemporaryDirectory(prefix="medflow-bench-serve-log-") as tmp:
        work = Path(tmp)
        os.environ["BENTOML_HOME"] = str(work / "bentoml")
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        t0 = time.perf_counter()
        _, bento_tag = build(work, args.params)
        data = sample_file(work)
        print(f"built {bento_tag} in {time.perf_counter() - t0:.1f} s; sample {len(data)} bytes")
        stores = {mode: work / f"log-{mode}" / "predictions.sqlite" for mode in plog.MODES}
        for store in stores.values():
            store.parent.mkdir()

        def serve(mode: str, session: int):  # -> a running Bento with the mode's log setting
            env = plog.server_env(mode == plog.ON, stores[mode])
            return serve_bento(bento_tag, workdir=work / f"serve-{mode}-{session}", env=env)

        sessions, rows = plog.run_sessions(
            serve,
            stores,
            data,
            CONCURRENCY,
            args.sessions,
            args.rounds,
            per_block,
            _load,
            _headers(),
        )
    load_after = os.getloadavg()
    print(
        f"model {load_net_name(args.params)}, /predict, 1 DICOM file, torch {torch.__version__}"
        f" ({args.threads} threads), {os.cpu_count()} CPUs; started {started}; both servers"
        f" side by side, package.serve defaults but the log; {args.sessions} session(s) (fresh"
        f" servers) x {args.rounds} blocks per mode and level x {per_block} requests (each"
        f" block after its own warm-up), off/on order alternating; load average"
        f" {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end"
    )
    plog.report(sessions, rows, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def load_net_name(params_file: Path, segment: bool = False) -> str:
    from medflow.config import load_params

    t = load_params(params_file).train
    size = load_params(params_file).preprocess.image_size
    if segment:
        return f"unet channels {t.unet_channels}, {size} px"
    return f"{t.architecture} width {t.width}, {size} px"


if __name__ == "__main__":
    raise SystemExit(main())
