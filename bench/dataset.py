"""Dataset service throughput against an S3-compatible server on loopback (`make bench NAME=dataset`).

In one run: start moto's S3 server (a separate process), upload a set of photo-like JPEGs with captions, ingest them
into S3 storage, start the real dataset service process, then measure
  raw      plain boto3 GETs of the same stored objects (as many threads as the service has workers),
  stream   StreamSamples with as_stored (the service's overhead over raw S3),
  resized  StreamSamples resized and cropped to 512 px buckets (JPEG q95, the default: the bucket copies that
           ingest made), and the same resized on the fly (random crops: decode, resize, encode per sample),
and write bench/results/dataset.json with raw_images_per_s, stream_images_per_s, ratio_vs_raw, resized_images_per_s.
Usage: python -m bench.dataset [--images 300] [--chunk-size 64] [--workers N] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "dataset.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(check, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def _moto_up(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=1).read()
        return True
    except OSError:
        return False


def make_images(count: int, *, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """Photo-like JPEGs (crops of scikit-image's photographs) of 0.6-2.4 MP with varied aspect ratios."""
    from PIL import Image

    from swarm_launcher.demo_images import DEMO_IMAGES, skimage_data_dir

    rng = random.Random(seed)
    data_dir = skimage_data_dir()
    sources = []
    for filename, name, caption, _ in DEMO_IMAGES:
        try:
            with Image.open(data_dir / filename) as im:
                sources.append((im.convert("RGB"), caption))
        except OSError:
            continue
    images = []
    for i in range(count):
        source, caption = sources[i % len(sources)]
        aspect = rng.uniform(0.6, 1.8)
        area = rng.uniform(0.6e6, 2.4e6)
        width, height = int((area * aspect) ** 0.5), int((area / aspect) ** 0.5)
        sw, sh = source.size
        crop_w, crop_h = rng.randint(sw // 2, sw), rng.randint(sh // 2, sh)
        left, top = rng.randint(0, sw - crop_w), rng.randint(0, sh - crop_h)
        image = source.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=rng.randint(85, 95))
        images.append((f"photos/{i // 100:03d}/img {i:05d}.jpg", out.getvalue(), f"{caption} #{i}"))
    return images


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to show where the time goes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _timed(fn, pids: dict[str, int]) -> tuple[float, dict[str, float]]:
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    return elapsed, {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="service workers (default: its own default)")
    parser.add_argument("--rounds", type=int, default=3, help="repeat each measurement; the median is reported")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    import boto3
    from botocore.config import Config

    from swarm import rpc
    from swarm_dataset.client import iter_chunk_messages
    from swarm_dataset.index import Index
    from swarm_dataset.ingest import IngestOptions, ingest
    from swarm_dataset.server import default_workers
    from swarm_dataset.storage import open_storage
    from swarm_launcher.processes import start_service

    workers = args.workers or default_workers()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = None
    try:
        _wait_until(lambda: _moto_up(endpoint), timeout=60, what="moto S3 server")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, max_pool_connections=64))
        s3.create_bucket(Bucket="raw")
        images = make_images(args.images)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: (s3.put_object(Bucket="raw", Key=item[0], Body=item[1]),
                                        s3.put_object(Bucket="raw", Key=item[0][:-4] + ".txt",
                                                      Body=item[2].encode())), images))
        megapixels = statistics.mean(len(data) for _, data, _ in images) / 1e3
        print(f"{len(images)} JPEGs uploaded to {endpoint} (mean {megapixels:.0f} kB)")

        workdir = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
        index_path = workdir / "index.sqlite"
        storage = open_storage("s3://objects/bench", endpoint_url=endpoint)
        storage.ensure_bucket()
        index = Index(index_path)
        ingest_cpu = {"s3_server": _cpu_seconds(moto.pid), "ingest": _cpu_seconds(os.getpid())}
        report = ingest(source=open_storage("s3://raw/photos", endpoint_url=endpoint), index=index, storage=storage,
                        options=IngestOptions(workers=4), progress=False)
        ingest_cpu = {name: round(1000 * (_cpu_seconds(pid) - ingest_cpu[name]) / max(report.added, 1), 2)
                      for name, pid in (("s3_server", moto.pid), ("ingest", os.getpid()))}
        keys = [s.key for s in index.list_samples(limit=10**6)]
        ids = [s.id for s in index.list_samples(limit=10**6)]
        index.close()
        ingest_rate = report.added / report.seconds
        print(f"ingest: {report.added} images in {report.seconds:.1f} s = {ingest_rate:.0f} images/s "
              f"(CPU ms per image: ingest {ingest_cpu['ingest']:.1f}, s3_server {ingest_cpu['s3_server']:.1f})")

        service = start_service("dataset", ["dataset", "serve", "--listen", "127.0.0.1:0", "--index",
                                            str(index_path), "--s3-endpoint-url", endpoint, "--metrics-port", "0",
                                            "--workers", str(workers)], workdir=workdir, env=env)
        address = service.wait_ready(timeout=60)["grpc_address"]
        chunks = [ids[i:i + args.chunk_size] for i in range(0, len(ids), args.chunk_size)]

        def raw_parallel():
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda key: s3.get_object(Bucket="objects", Key=f"bench/{key}")["Body"].read(), keys))

        def raw_sequential():
            for key in keys:
                s3.get_object(Bucket="objects", Key=f"bench/{key}")["Body"].read()

        channel = rpc.channel(address)  # one connection, as a trainer's prefetcher keeps

        def stream(**options):
            def run():  # chunk after chunk, one stream at a time: no overlap between chunks
                total = 0
                for chunk in chunks:
                    total += sum(1 for _ in iter_chunk_messages(address, chunk, timeout=300, channel=channel,
                                                                **options))
                assert total == len(ids)
            return run

        measurements = {"raw": raw_parallel, "raw_sequential": raw_sequential, "stream": stream(as_stored=True),
                        "resized": stream(), "resized_on_the_fly": stream(random_crop=True)}
        stream(as_stored=True)()  # warm-up: connections, S3 pools, page cache
        pids = {"service": service.popen.pid, "s3_server": moto.pid, "bench_client": os.getpid()}
        rates: dict[str, list[float]] = {name: [] for name in measurements}
        cpu_ms: dict[str, dict[str, list[float]]] = {name: {p: [] for p in pids} for name in measurements}
        for _ in range(args.rounds):
            for name, fn in measurements.items():
                elapsed, cpu = _timed(fn, pids)
                rates[name].append(len(ids) / elapsed)
                for process, seconds in cpu.items():
                    cpu_ms[name][process].append(1000 * seconds / len(ids))
        median = {name: statistics.median(values) for name, values in rates.items()}
        cpu_per_image = {name: {p: round(statistics.median(v), 2) for p, v in by_process.items()}
                         for name, by_process in cpu_ms.items()}
        result = {
            "raw_images_per_s": round(median["raw"], 1),
            "stream_images_per_s": round(median["stream"], 1),
            "ratio_vs_raw": round(median["stream"] / median["raw"], 3),
            "resized_images_per_s": round(median["resized"], 1),
            "raw_sequential_images_per_s": round(median["raw_sequential"], 1),
            # Random crops cannot use the bucket copies made at ingest: every image is decoded and resized here.
            "resized_on_the_fly_images_per_s": round(median["resized_on_the_fly"], 1),
            "ingest_images_per_s": round(ingest_rate, 1),
            "ingest_cpu_ms_per_image": ingest_cpu,
            "images": len(ids), "chunk_size": args.chunk_size, "service_workers": workers,
            "mean_image_kb": round(megapixels, 1), "bucket_resolution": 512, "cpus": os.cpu_count(),
            "rounds": {name: [round(v, 1) for v in values] for name, values in rates.items()},
            "cpu_ms_per_image": cpu_per_image,
        }
        print(f"raw boto3 GETs ({workers} threads): {result['raw_images_per_s']:.0f} images/s "
              f"(sequential: {result['raw_sequential_images_per_s']:.0f})")
        print(f"stream as stored:                 {result['stream_images_per_s']:.0f} images/s "
              f"(ratio vs raw {result['ratio_vs_raw']:.2f})")
        print(f"stream resized to 512 px buckets: {result['resized_images_per_s']:.0f} images/s "
              f"(bucket copies made at ingest; resizing on the fly: "
              f"{result['resized_on_the_fly_images_per_s']:.0f} images/s)")
        for name, by_process in cpu_per_image.items():
            print(f"  CPU ms per image, {name:<15}" + "  ".join(f"{p} {v:.1f}" for p, v in by_process.items()))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
        channel.close()
        return 0
    finally:
        if service is not None:
            service.stop(timeout=20)
        moto.terminate()
        moto.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
