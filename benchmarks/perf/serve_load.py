"""Load on ``zoo serve``: N clients send M requests each to 127.0.0.1, beside ``zoo predict`` in the same run.

A tiny CNNDetector checkpoint is fitted first, untimed (as ``startup.py`` fits it). The images are real
photographs of scikit-image's, resized to 128 px PNGs, ``--images`` of them (the photographs repeated
under different names). Then, on the same images:
    zoo predict's scoring (``zoo.predict.predict``, the function the command runs, batch 8) of the folder,
        timed in this process once the model is loaded: its batch throughput, no start-up counted;
    ``zoo predict`` of one image in a fresh process: its start-up;
    ``zoo serve --ckpt_path <it>`` in a fresh process, timed from its start to its first answer;
    N client threads, each on its own keep-alive connection, sending M requests of one image each
        (the images in turn), with no pause between requests.
Reported: the server's throughput as a ratio to zoo predict's, p50 and p99 latency, the error count (any
answer but 200, or a failed connection), the server's RSS growth from the 100th answer to the last, and the
start to first answer as a ratio to zoo predict's start-up on one image.

Only 127.0.0.1 is ever contacted, and the run is bounded: N x M requests, each with a 60 s timeout.

Example:
    python benchmarks/perf/serve_load.py --clients 8 --requests 125 --out reports/perf/serve_load.json
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image
from skimage import data as photos
from startup import ZOO, fit_tiny_checkpoint, run_timed

from zoo.bench.perf import write_result

PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "immunohistochemistry", "coins")
TARGETS = {"throughput_ratio_min": 0.8, "errors_max": 0, "rss_growth_max": 0.10, "first_answer_ratio_max": 2.0}


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        name = PHOTOGRAPHS[i % len(PHOTOGRAPHS)]
        path = folder / f"{i:04d}-{name}.png"
        Image.fromarray(getattr(photos, name)()).convert("RGB").resize((128, 128)).save(path)
        paths.append(path)
    return paths


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{path.name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def first_answer(port: int, body: tuple[bytes, str], proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"zoo serve exited ({proc.returncode}):\n{proc.stderr.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/models/CNNDetector/predict", body=body[0], headers={"Content-Type": body[1]})
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit("zoo serve gave no answer in time")


def load(port: int, pid: int, bodies: list[tuple[bytes, str]], clients: int, requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    rss_at_100: list[int] = []

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for k in range(requests):
            body, kind = bodies[(index * requests + k) % len(bodies)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/models/CNNDetector/predict", body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                problem = f"HTTP {response.status}"
            except OSError as err:
                ok, problem = False, f"{type(err).__name__}: {err}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - start)
                if not ok:
                    errors.append(problem)
                if len(latencies) == 100:
                    rss_at_100.append(rss(pid))
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests": len(latencies), "clients": clients, "wall_s": round(wall, 3),
        "throughput_images_per_s": round(len(latencies) / wall, 2),
        "latency_p50_ms": round(1000 * statistics.median(ordered), 1),
        "latency_p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "errors": len(errors), "first_errors": errors[:3],
        "rss_at_100th_mb": round(rss_at_100[0] / 2**20, 1), "rss_at_last_mb": round(rss(pid) / 2**20, 1),
    }


def batch_rate(export: Path, folder: Path) -> float:
    """Images per second of zoo predict's scoring (``zoo.predict.predict``, its default batch of 8) on ``folder``.

    Timed in this process, after the model is loaded and once warm, so that no start-up is counted: the
    command's start-up is measured on its own (``zoo_predict_one_image_s``).
    """
    from zoo.predict import expand, load_model, predict

    model = load_model(str(export), None, None, {})
    items = expand(folder)
    predict(model, items[:8], device="cpu")
    start = time.perf_counter()
    frame = predict(model, items, device="cpu")
    rate = len(items) / (time.perf_counter() - start)
    if frame["error"].notna().any():
        raise SystemExit(f"zoo predict failed on {frame['error'].dropna().iloc[0]}")
    return rate


def measure(work: Path, clients: int, requests: int, count: int) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    export = fit_tiny_checkpoint(work, env)
    paths = write_images(work / "images", count)
    predict = [*ZOO, "predict", "--ckpt_path", str(export), "--device", "cpu", "--output", str(work / "p.csv"),
               "--inputs", str(paths[0])]
    run_timed(predict, env)  # a warm file cache for every figure
    one, _ = run_timed(predict, env)
    predict_rate = batch_rate(export, work / "images")

    port = free_port()
    bodies = [multipart(p) for p in paths]
    start = time.perf_counter()
    proc = subprocess.Popen([*ZOO, "serve", "--ckpt_path", str(export), "--device", "cpu", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first_answer(port, bodies[0], proc, time.monotonic() + 120)
        first = time.perf_counter() - start
        figures = load(port, proc.pid, bodies, clients, requests)
    finally:
        proc.terminate()
        proc.wait(30)
    figures.update({
        "images": count, "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
        "zoo_predict_one_image_s": round(one, 3), "zoo_predict_images_per_s": round(predict_rate, 2),
        "throughput_ratio": round(figures["throughput_images_per_s"] / predict_rate, 3),
        "rss_growth": round(figures["rss_at_last_mb"] / figures["rss_at_100th_mb"] - 1, 4),
        "start_to_first_answer_s": round(first, 3),
        "first_answer_ratio": round(first / one, 3),
    })
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (N)")
    parser.add_argument("--requests", type=int, default=125, help="requests per client (M)")
    parser.add_argument("--images", type=int, default=200, help="photographs sent, and scored by zoo predict")
    parser.add_argument("--out", type=str, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    if args.clients * args.requests < 100:
        parser.error("send at least 100 requests: the RSS growth is measured from the 100th")
    with tempfile.TemporaryDirectory(prefix="zoo-serve-load-") as work:
        figures = measure(Path(work), args.clients, args.requests, args.images)
    return write_result(args.out, "serve_load", figures, ratio=figures["throughput_ratio"], targets=TARGETS)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
