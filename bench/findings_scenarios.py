"""The scenarios of bench/findings.py: one function per finding of issue 18, each yielding result lines.

Sizes come from ``Scale``; every scenario starts a service of its own (``Bench.service``).
"""

from __future__ import annotations

import collections
import functools
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.findings_stack import Bench, Service, attempt, healthy_caller
from tests import components
from wave_grpc.channel import CLIENT_ADDRESS_METADATA
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

ACCEPT = [("Accept", media_type) for media_type in components.ALL_MANIFEST_TYPES]


def create(image: str, **fields: Any) -> pb.CreateContainerRequest:
    return pb.CreateContainerRequest(container_image=image, **fields)


def pull_path(target_image: str, kind: str = "manifests", ref: str = "") -> str:
    """``/v2/wt/<token>/<path>/<kind>/<ref>`` for a target image ``host/wt/<token>/<path>:<tag>``."""
    name, tag = target_image.split("/", 1)[1].rsplit(":", 1)
    return f"/v2/{name}/{kind}/{ref or tag}"


def http_timed(service: Service, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, float, dict[str, str]]:
    started = time.monotonic()
    try:
        answer = components.http_request(method, service.gateway_url + path, timeout=180, **kwargs)
    except (OSError, http.client.HTTPException) as error:
        return -1, type(error).__name__.encode(), time.monotonic() - started, {}
    return answer.status, answer.body, time.monotonic() - started, {k.lower(): v for k, v in answer.headers}


def slow_upstreams(bench: Bench) -> Iterator[dict[str, Any]]:
    """Finding 1: dripping creations whose callers give up; a healthy caller's latency meanwhile."""
    for count in bench.scale.drips:
        with bench.service() as service, healthy_caller(service, bench.base_image) as healthy:
            time.sleep(4)  # the healthy caller's baseline
            attack = time.monotonic()
            with service.stub() as stub:
                calls = [
                    stub.CreateContainer.future(
                        create(f"{bench.drip_hosts[i % len(bench.drip_hosts)].host}/drip/img:t{i}"),
                        timeout=bench.scale.drip_deadline,
                    )
                    for i in range(count)
                ]
                codes = collections.Counter("OK" if call.exception() is None else call.code().name for call in calls)
            left = time.monotonic()
            time.sleep(2)
            still_open = sum(hostile.counters()["open"] for hostile in bench.drip_hosts)
            time.sleep(15)  # the callers are gone: does their work still hold the upstream pool?
            yield {
                "input": f"{count} CreateContainer of <r>/drip/img (manifest at 1 byte/s) spread over "
                f"{len(bench.drip_hosts)} dripping listed registries, client deadline "
                f"{bench.scale.drip_deadline:.0f}s, all at once",
                "outcome": {"codes": dict(codes)},
                "seconds": round(left - attack, 1),
                "upstream_responses_still_dripping_2s_after_callers_left": still_open,
                "memory_end": service.memory(),
                "healthy_before_attack": healthy.summary(until=attack),
                "healthy_during_and_17s_after": healthy.summary(since=attack),
            }


def fat_config(bench: Bench) -> Iterator[dict[str, Any]]:
    """Finding 2: a 31 MiB config of ``{}``s; peak RSS, seconds, a healthy caller meanwhile, the first pull."""
    with bench.service() as service, healthy_caller(service, bench.base_image) as healthy:
        time.sleep(4)
        start_memory, attack = service.memory(), time.monotonic()
        with service.stub() as stub:
            request = create(f"{bench.hostile.host}/fat-config/img:latest")
            outcome, seconds, answer = attempt(stub.CreateContainer, request, timeout=300)
        pull: dict[str, Any] = {}
        if answer is not None:
            status, body, took, _ = http_timed(service, "GET", pull_path(answer.target_image), headers=ACCEPT)
            pull = {"status": status, "seconds": round(took, 2), "bytes": len(body)}
        time.sleep(2)
        yield {
            "input": f"CreateContainer of {bench.hostile.host}/fat-config/img: a {bench.scale.fat_mib} MiB config "
            "of {},{},... (one creation)",
            "outcome": outcome,
            "seconds": seconds,
            "first_pull": pull,
            "memory_start": start_memory,
            "memory_end": service.memory(),
            "healthy_before": healthy.summary(until=attack),
            "healthy_during": healthy.summary(since=attack),
        }


def _ping_while(service: Service, work: Callable[[], None]) -> list[float]:
    """``GET /v2/`` latencies (s) while ``work`` runs in a thread."""
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    pings: list[float] = []
    while worker.is_alive():
        pings.append(http_timed(service, "GET", "/v2/")[2])
        time.sleep(0.1)
    worker.join()
    return pings


def _pulls(service: Service, path: str, into: list[dict[str, Any]]) -> None:
    """The tag, then GET, GET, HEAD of its first manifest: is it served from a cache or rebuilt per request?"""
    for method in ("GET", "GET", "GET", "HEAD"):
        status, body, took, headers = http_timed(service, method, path, headers=ACCEPT)
        size = len(body) or int(headers.get("content-length", "0"))
        answer = {"method": method, "ref": path.rsplit("/", 1)[1][:20], "status": status, "seconds": round(took, 2)}
        document = json.loads(body) if status == 200 and body else {}
        into.append(answer | {"bytes": size} | ({"layers": len(document["layers"])} if "layers" in document else {}))
        if "manifests" in document:  # the index: the rest of the pulls are its first manifest
            path = path.rsplit("/", 1)[0] + "/" + document["manifests"][0]["digest"]


def push_many_layers(bench: Bench, layers: int) -> str:
    """An index of ``scale.platforms`` in the real registry, each manifest ``layers`` layers (one blob repeated)."""
    url, repository = bench.registry.url, f"many/l{layers}"
    gz, diff_id = components.layer_tar_gz({"one": b"1"})
    layer = {"mediaType": components.OCI_LAYER_GZIP, "digest": components.push_blob(url, repository, gz)}
    entries = []
    for platform in bench.scale.platforms:
        os_name, arch, *variant = platform.split("/")
        config = {"architecture": arch, "os": os_name, "rootfs": {"type": "layers", "diff_ids": [diff_id] * layers}}
        config |= {"variant": variant[0]} if variant else {}
        config_bytes = json.dumps(config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": components.OCI_MANIFEST,
            "config": {
                "mediaType": components.OCI_CONFIG,
                "digest": components.push_blob(url, repository, config_bytes),
                "size": len(config_bytes),
            },
            "layers": [{**layer, "size": len(gz)}] * layers,
        }
        body = json.dumps(manifest).encode()
        digest = components.put_manifest(url, repository, components.sha256_digest(body), body, components.OCI_MANIFEST)
        platform_fields = {"architecture": arch, "os": os_name} | ({"variant": variant[0]} if variant else {})
        entries.append(
            {"mediaType": components.OCI_MANIFEST, "digest": digest, "size": len(body), "platform": platform_fields}
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": components.OCI_INDEX, "manifests": entries}).encode()
    components.put_manifest(url, repository, "latest", index, components.OCI_INDEX)
    return f"{bench.registry.host}/{repository}"


def huge_image(bench: Bench) -> Iterator[dict[str, Any]]:
    """Finding 3: platforms x (source + includes) x many layers; creation time, served manifest, pulls."""
    for layers in bench.scale.layers:
        image = push_many_layers(bench, layers)
        includes = [f"{image}:latest"] * bench.scale.includes
        platforms = ",".join(bench.scale.platforms)
        total = layers * (bench.scale.includes + 1) * len(bench.scale.platforms)
        with bench.service() as service:
            with service.stub() as stub:
                request = create(f"{image}:latest", container_includes=includes, container_platform=platforms)
                outcome, seconds, answer = attempt(stub.CreateContainer, request, timeout=300)
            pulls: list[dict[str, Any]] = []
            pings: list[float] = []
            if answer is not None:
                work = functools.partial(_pulls, service, pull_path(answer.target_image), pulls)
                pings = _ping_while(service, work)
            yield {
                "input": f"CreateContainer of {image} (an index of {len(bench.scale.platforms)} platforms, "
                f"{layers} layers each, in the real registry) with {bench.scale.includes} includes of it, "
                f"all platforms: {total:,} layers",
                "outcome": outcome,
                "seconds": seconds,
                "pulls": pulls,
                "v2_ping_during_pulls_max_s": round(max(pings), 2) if pings else None,
                "memory_end": service.memory(),
            }


def _listing(stub: Any, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    outcome, _, answer = attempt(stub.ListContainers, pb.ListContainersRequest(), metadata=metadata, timeout=30)
    if answer is not None:
        outcome["tokens_listed"] = len(answer.containers)
    return outcome


def shared_addresses(bench: Bench) -> Iterator[dict[str, Any]]:
    """Finding 4: two anonymous callers at one address; forged forwarded addresses under creates_per_minute=5."""
    with bench.service({"limits": {"creates_per_minute": 5}}) as service:
        with service.stub() as caller_a, service.stub() as caller_b:
            created = caller_a.CreateContainer(create(bench.base_image), timeout=60)
            seen_by_b = _listing(caller_b)
            forged_codes: collections.Counter[str] = collections.Counter()
            for i in range(12):
                forged = ((CLIENT_ADDRESS_METADATA, f"10.0.0.{i + 1}"),)
                request = create(bench.base_image, container_config=pb.ContainerConfig(env=[f"FORGED={i}"]))
                outcome, _, _ = attempt(caller_b.CreateContainer, request, metadata=forged, timeout=60)
                forged_codes[outcome["code"]] += 1
            forged_listing = _listing(caller_b, ((CLIENT_ADDRESS_METADATA, "10.0.0.1"),))
        yield {
            "input": "caller A (own connection, 127.0.0.1) creates 1 token; caller B (another connection, same "
            f"address) lists; then B sends 12 creations with forged {CLIENT_ADDRESS_METADATA} 10.0.0.1..12 "
            "from loopback, [limits].creates_per_minute = 5; then B lists claiming 10.0.0.1",
            "a_created": created.container_token != "",
            "b_lists_a": seen_by_b,
            "forged_creations": dict(forged_codes),
            "forged_address_listing": forged_listing,
        }
    yield from _rest_forwarded(bench)


def _rest_forwarded(bench: Bench) -> Iterator[dict[str, Any]]:
    """REST creations with X-Forwarded-For: forged (no trusted proxy) and from a trusted reverse proxy."""
    for proxies in ((), ("127.0.0.1",)):
        optional = {"gateway": {"trusted_proxies": list(proxies)}} if proxies else {}
        with bench.service({"limits": {"creates_per_minute": 5}}, optional) as service:
            statuses: collections.Counter[int] = collections.Counter()
            for i in range(8):
                body = {"containerImage": bench.base_image, "containerConfig": {"env": [f"REST={i}"]}}
                headers = [("Content-Type", "application/json"), ("X-Forwarded-For", f"10.1.0.{i + 1}")]
                status, _, _, _ = http_timed(
                    service, "POST", "/v1alpha2/container", headers=headers, body=json.dumps(body).encode()
                )
                statuses[status] += 1
            yield {
                "input": "8 REST creations (POST /v1alpha2/container) from 127.0.0.1, each X-Forwarded-For "
                f"10.1.0.1..8, [limits].creates_per_minute = 5, [gateway].trusted_proxies = {list(proxies)}",
                "config_keys_this_checkout_refused": service.dropped,
                "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
            }


def medium_inputs(bench: Bench) -> Iterator[dict[str, Any]]:
    """Finding 5: a huge container_platform, millions of env entries, a 100 MB env; a healthy caller meanwhile."""
    unit = "linux/amd64,"
    inputs: list[tuple[str, Callable[[], pb.CreateContainerRequest]]] = [
        (
            f"container_platform of {bench.scale.platform_mib} MiB ('linux/amd64,' repeated)",
            lambda: create(bench.base_image, container_platform=unit * ((bench.scale.platform_mib << 20) // len(unit))),
        ),
        (
            f"{bench.scale.env_entries:,} env entries ('E<i>=1')",
            lambda: create(
                bench.base_image,
                container_config=pb.ContainerConfig(env=[f"E{i}=1" for i in range(bench.scale.env_entries)]),
            ),
        ),
        (
            f"one env entry of {bench.scale.env_mib} MiB",
            lambda: create(
                bench.base_image, container_config=pb.ContainerConfig(env=["BIG=" + "x" * (bench.scale.env_mib << 20)])
            ),
        ),
    ]
    with bench.service() as service, healthy_caller(service, bench.base_image) as healthy:
        time.sleep(3)
        for label, build in inputs:
            request = build()
            started = time.monotonic()
            with service.stub() as stub:
                outcome, seconds, _ = attempt(stub.CreateContainer, request, timeout=300)
            time.sleep(1)
            yield {
                "input": f"CreateContainer with {label}",
                "outcome": outcome,
                "seconds": seconds,
                "memory_end": service.memory(),
                "healthy_during": healthy.summary(since=started),
            }


def freeze_dripping(bench: Bench) -> Iterator[dict[str, Any]]:
    """Finding 5 (freezes): a freeze whose source's layer drips at one byte every 10 s; does it end?"""
    target = bench.route(bench.registry, push_repositories=["*"])
    registries = [bench.route(bench.hostile_small), target]
    optional = {"service": {"freeze_deadline": "20s"}}
    with bench.service({"registries": registries}, optional) as service, service.stub() as stub:
        request = create(
            f"{bench.hostile_small.host}/drip-layers/img:latest",
            freeze=True,
            build_repository=f"{bench.registry.host}/frozen/drip",
        )
        outcome, _, answer = attempt(stub.CreateContainer, request, timeout=60)
        started, status = time.monotonic(), None
        while answer is not None and time.monotonic() - started < bench.scale.freeze_wait:
            status = stub.GetContainerStatus(pb.GetContainerStatusRequest(request_id=answer.request_id), timeout=30)
            if status.status == pb.CONTAINER_STATUS_DONE:
                break
            time.sleep(1)
        yield {
            "input": f"freeze of {bench.hostile_small.host}/drip-layers/img (its layer at 1 byte per 10 s) "
            f"to {bench.registry.host}/frozen/drip; [service].freeze_deadline = 20s where the checkout has it",
            "config_keys_this_checkout_refused": service.dropped,
            "creation": outcome,
            "status_after": pb.ContainerStatus.Name(status.status) if status is not None else None,
            "succeeded": status.succeeded if status is not None else None,
            "reason": status.reason[:300] if status is not None else None,
            "seconds_watched": round(time.monotonic() - started, 1),
        }


SCENARIOS: dict[str, Callable[[Bench], Iterator[dict[str, Any]]]] = {
    "s1_slow_upstreams": slow_upstreams,
    "s2_fat_config": fat_config,
    "s3_huge_image": huge_image,
    "s4_shared_addresses": shared_addresses,
    "s5_medium_inputs": medium_inputs,
    "s6_freeze_dripping": freeze_dripping,
}
