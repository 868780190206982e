"""Load test of `efficientad serve` on loopback: N concurrent clients, a fixed number of requests.

    python benchmarks/serve_load.py IMAGE_FOLDER [--model model.safetensors] [--clients 1 4 16]
        [--requests 96] [--time-limit 300] [--max-batch 8] [--max-wait-ms 5] [--threads 2]

The service runs as its own process (`python -m efficientad_ext serve`, as a user starts it), so
its resident memory can be read from /proc after warm-up and after every level (give a client
count twice, e.g. ``--clients 1 4 16 16``, to see whether a repeated load grows it). For each
client count, that many threads each send one image per request (multipart, one file), the next
as soon as the last is answered, until --requests requests have been sent in all at that level
or --time-limit seconds have passed. Every request is accounted for: answered 200, failed (any
other status, or a connection error), or lost (no answer within the client timeout).

Reported per level: throughput, latency p50/p95/p99 (client side, from sending to the last byte
of the answer), the batch sizes the service formed (each answer's ``batch_size``: the images in
the network call that scored it), failed and lost. Then, in the same run and on the same images,
`efficientad infer` on a folder (the whole command, start-up included) and ``EfficientAD.infer_each``
in this process at --max-batch images per call: the throughput a user gets without the service.

Without --model, a freshly initialised EfficientAD-S is saved and served (speed does not depend
on the weights). Bounded: nothing here runs longer than about (levels + 1) x --time-limit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CLIENT_TIMEOUT_S = 120.0


@dataclass
class Level:
    clients: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: Counter = field(default_factory=Counter)
    failed: int = 0
    lost: int = 0
    failures: Counter = field(default_factory=Counter)
    rss_after_mib: float = 0.0  # the service's resident memory once the level is done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def multipart_one(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def start_server(model: Path, port: int, args, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "efficientad_ext", "serve", str(model), "--port", str(port)]
    cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.pop("EFFICIENTAD_SERVE_TOKEN", None)
    server = subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            if get(port, "/readyz")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server was not ready within 180 s:\n{log_path.read_text()}")


def one_request(port: int, name: str, data: bytes, level: Level, lock: threading.Lock) -> None:
    body, content_type = multipart_one(name, data)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
    try:
        conn.request("POST", "/v1/score", body=body, headers={"Content-Type": content_type})
        r = conn.getresponse()
        payload = r.read()
        ms = (time.perf_counter() - t0) * 1e3
        with lock:
            if r.status == 200:
                level.latencies_ms.append(ms)
                level.batch_sizes[json.loads(payload)["results"][0]["batch_size"]] += 1
            else:
                level.failed += 1
                level.failures[f"HTTP {r.status}"] += 1
    except TimeoutError:
        with lock:
            level.lost += 1
    except OSError as e:
        with lock:
            level.failed += 1
            level.failures[type(e).__name__] += 1
    finally:
        conn.close()


def run_level(port: int, images: list[tuple[str, bytes]], clients: int, requests: int, limit_s: float) -> Level:
    level, lock = Level(clients), threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + limit_s

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            name, data = images[i % len(images)]
            one_request(port, name, data, level, lock)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.seconds = time.perf_counter() - t0
    return level


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def level_row(level: Level) -> str:
    n = len(level.latencies_ms)
    lat = " | ".join(f"{percentile(level.latencies_ms, q):.0f}" for q in (50, 95, 99))
    sizes = ", ".join(f"{b}: {c}" for b, c in sorted(level.batch_sizes.items()))
    mean_batch = sum(b * c for b, c in level.batch_sizes.items()) / max(1, n)
    return (
        f"| {level.clients} | {n} | {n / level.seconds:.2f} | {lat} | {mean_batch:.2f} ({sizes}) "
        f"| {level.failed} | {level.lost} | {level.rss_after_mib:.0f} |"
    )


def time_infer_command(model: Path, folder: Path, batch: int, threads: int, out: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "efficientad_ext", "infer", str(model), str(folder), "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd + ["--batch-size", str(batch), "--no-images", "--device", "cpu"], env=env, check=True)
    return time.perf_counter() - t0


def time_infer_in_process(model: Path, paths: list[Path], batch: int, threads: int) -> float:
    import torch
    from PIL import Image

    import efficientad_ext

    torch.set_num_threads(threads)
    loaded = efficientad_ext.load_model(model, device="cpu")
    efficientad_ext.infer([Image.open(paths[0])], model=loaded)  # warm-up, as the service's
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):  # images of mixed sizes: infer_each, as the service
        loaded.infer_each([Image.open(p) for p in paths[i : i + batch]])
    return time.perf_counter() - t0


def report_levels(args, paths: list[Path], levels: list[Level], rss_before: float) -> None:
    print(
        f"{len(paths)} distinct images from {args.folder}; {args.requests} requests per level; service: "
        f"max batch {args.max_batch}, max wait {args.max_wait_ms} ms, {args.threads} torch threads, CPU; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "| clients | answered | requests/s | p50 ms | p95 ms | p99 ms | mean batch (sizes: answers) | failed | lost "
        "| service RSS after, MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for level in levels:
        print(level_row(level))
        for kind, count in level.failures.items():
            print(f"    {level.clients} clients: {count} x {kind}")
    print(f"service resident memory after warm-up, before the first level: {rss_before:.0f} MiB")
    sys.stdout.flush()


def prepare(args, tmp: Path) -> tuple[Path, list[Path]]:
    from efficientad_ext.data import list_images

    paths = list_images(args.folder)[: args.requests]
    if not paths:
        raise SystemExit(f"no images in {args.folder}")
    model = args.model
    if model is None:
        import torch

        from efficientad_ext import EfficientAD, save_model

        torch.manual_seed(0)
        model = tmp / "model.safetensors"
        save_model(EfficientAD(), model)
    return model, paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of images (the files directly in it)")
    parser.add_argument("--model", type=Path, help="model file (default: a fresh EfficientAD-S)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=96, help="requests per client count")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per client count at most")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the service's torch threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp = Path(tmp)
        model, paths = prepare(args, tmp)
        images = [(p.name, p.read_bytes()) for p in paths]
        port = free_port()
        server = start_server(model, port, args, tmp / "server.log")
        try:
            rss_before = rss_mib(server.pid)
            levels = []
            for clients in args.clients:
                levels.append(run_level(port, images, clients, args.requests, args.time_limit))
                levels[-1].rss_after_mib = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(60)
        report_levels(args, paths, levels, rss_before)
        folder = tmp / "images"
        folder.mkdir()
        for p in paths:
            (folder / p.name).symlink_to(p.resolve())
        command_s = time_infer_command(model, folder, args.max_batch, args.threads, tmp / "infer-out")
        in_process_s = time_infer_in_process(model, paths, args.max_batch, args.threads)

    n = len(paths)
    print(
        f"efficientad infer on a folder of the same {n} images, batch {args.max_batch}: "
        f"{n / command_s:.2f} images/s for the whole command ({command_s:.1f} s, start-up included); "
        f"EfficientAD.infer_each in-process: {n / in_process_s:.2f} images/s"
    )
    return 0 if all(level.failed == 0 and level.lost == 0 for level in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
