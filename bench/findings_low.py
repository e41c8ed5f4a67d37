"""The low findings of issue 18 for bench/findings.py: one service, one result line each."""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import secrets
import statistics
import string
import time
from collections.abc import Iterator
from typing import Any

from bench.findings_scenarios import ACCEPT, create, http_timed, pull_path
from bench.findings_stack import Bench, Service, attempt
from tests import components
from tests.hostile import LAYER_BYTES
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

TOKEN_ALPHABET = string.ascii_lowercase + string.digits


def _deep_json(bench: Bench, service: Service) -> dict[str, Any]:
    image = f"{bench.hostile.host}/deep-json/img:latest"
    body = f'{{"containerImage": "{image}"}}'.encode()
    status, answer, took, _ = http_timed(
        service, "POST", "/v1alpha1/inspect", headers=[("Content-Type", "application/json")], body=body
    )
    return {
        "input": f"REST POST /v1alpha1/inspect of {image} (a manifest of '[' nested 200,000 deep)",
        "outcome": {"http_status": status, "body": answer[:300].decode(errors="replace")},
        "seconds": round(took, 2),
    }


def _disk_full(bench: Bench, service: Service) -> dict[str, Any]:
    if bench.small_disk is None:
        return {"input": "disk full", "outcome": "skipped: no privilege to mount a tmpfs on this machine"}
    gz, diff_id = components.layer_tar_gz({"random.bin": os.urandom(3 << 20)})
    layer = pb.ContainerLayer(
        location="data:" + base64.b64encode(gz).decode(),
        gzip_digest="sha256:" + hashlib.sha256(gz).hexdigest(),
        gzip_size=len(gz),
        tar_digest=diff_id,
    )
    with service.stub() as stub:
        request = create(bench.base_image, container_config=pb.ContainerConfig(layers=[layer]))
        outcome, seconds, _ = attempt(stub.CreateContainer, request, timeout=120)
    leftovers = [p.name for p in bench.small_disk.rglob("*") if p.is_file()]
    return {
        "input": "CreateContainer with a 3 MiB inline layer, the layer store on a 1 MiB tmpfs",
        "outcome": outcome,
        "seconds": seconds,
        "files_left_on_the_small_disk": leftovers,
    }


def _empty_blob(bench: Bench, service: Service) -> dict[str, Any]:
    with service.stub() as stub:
        request = create(f"{bench.hostile.host}/empty-blob/img:latest")
        outcome, _, answer = attempt(stub.CreateContainer, request, timeout=60)
    result: dict[str, Any] = {
        "input": 'a proxied (blobs = "proxy") base layer answered 200 with Content-Length: 0 upstream, '
        "GET through the gateway",
        "creation": outcome,
    }
    if answer is not None:
        digest = "sha256:" + hashlib.sha256(LAYER_BYTES).hexdigest()
        status, body, _, headers = http_timed(service, "GET", pull_path(answer.target_image, "blobs", digest))
        result["outcome"] = {
            "http_status": status,
            "content_length": headers.get("content-length"),
            "body_bytes": len(body) if status > 0 else None,
            "body": body[:200].decode(errors="replace"),
        }
        result["expected_bytes"] = len(LAYER_BYTES)
    return result


def _duplicate_platforms(bench: Bench, service: Service) -> dict[str, Any]:
    platforms = ",".join(["linux/amd64"] * 2048)
    with service.stub() as stub:
        request = create(bench.base_image, container_platform=platforms)
        outcome, seconds, _ = attempt(stub.CreateContainer, request, timeout=60)
    return {
        "input": f"container_platform of {len(platforms):,} characters: linux/amd64 2,048 times",
        "outcome": outcome,
        "seconds": seconds,
    }


def _guessing(bench: Bench, service: Service) -> dict[str, Any]:
    with service.stub() as stub:
        live = stub.CreateContainer(create(bench.base_image), timeout=60)
    live_path = pull_path(live.target_image)
    name = live_path.split("/", 3)[3]  # <path>/manifests/<tag>

    def guess() -> str:
        return "/v2/wt/" + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(12)) + "/" + name

    timings: dict[str, list[float]] = {"live": [], "unknown": []}
    for _ in range(40):  # interleaved, 80 answers: under a limit of 120 misses a minute
        timings["live"].append(http_timed(service, "GET", live_path, headers=ACCEPT)[2])
        timings["unknown"].append(http_timed(service, "GET", guess(), headers=ACCEPT)[2])
    statuses: collections.Counter[int] = collections.Counter()
    started = time.monotonic()
    while time.monotonic() - started < bench.scale.guess_seconds:
        statuses[http_timed(service, "GET", guess(), headers=ACCEPT)[0]] += 1
    elapsed = time.monotonic() - started
    return {
        "input": f"unknown 12-character tokens GET one after another for {bench.scale.guess_seconds:.0f}s "
        "(one client, one connection per request); before that 40 live and 40 unknown answers timed",
        "guesses_per_second": round(sum(statuses.values()) / elapsed, 1),
        "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "live_token_median_ms": round(statistics.median(timings["live"]) * 1000, 2),
        "unknown_token_median_ms": round(statistics.median(timings["unknown"]) * 1000, 2),
    }


def _get_container(bench: Bench, service: Service) -> dict[str, Any]:
    with service.stub() as owner:
        token = owner.CreateContainer(create(bench.base_image), timeout=60).container_token
    with service.stub() as holder:
        outcome, _, answer = attempt(holder.GetContainer, pb.GetContainerRequest(container_token=token), timeout=30)
    record = answer.container if answer is not None else None
    return {
        "input": "GetContainer(token) from another connection (a token holder, not the gateway)",
        "outcome": outcome,
        "owner": record.owner if record is not None else None,
        "creator_address": record.creator_address if record is not None else None,
    }


def low_findings(bench: Bench) -> Iterator[dict[str, Any]]:
    """The low findings; the layer store is on a 1 MiB tmpfs, the hostile registry's blobs are proxied."""
    store = {"store": f"file://{bench.small_disk}/layers"} if bench.small_disk is not None else {}
    registries = [
        bench.route(bench.hostile, blobs="proxy"),
        bench.route(bench.hostile_small),
        bench.route(bench.registry),
    ]
    with bench.service({"registries": registries, "layers": store}) as service:
        for name, check in (
            ("deep_json", _deep_json),
            ("disk_full", _disk_full),
            ("empty_blob", _empty_blob),
            ("duplicate_platforms", _duplicate_platforms),
            ("token_guessing", _guessing),
            ("get_container", _get_container),
        ):
            yield {"finding": name, **check(bench, service)}
