"""Upstream requests of one pull sequence, ``blobs = "redirect"`` against ``blobs = "cache"`` (issue 20).

    python -m bench.cache_counts

The sequence: six creations of one tag, each pulled whole right after (the tag's
manifest, the config, every layer; a ``307`` followed as a runtime would), three
before a restart of ``wave-grpc serve`` and three after, with
``[upstream] tag_cache_ttl = "off"``. Each creation has its own env, as different
users' would, so each is a new token. The upstream is a real docker-registry behind
tests/faultproxy.py ``--record``, which logs every response it forwarded; the
counts are read from that log. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.cache import CacheStack
from tests import components
from tests.upstreams import FaultProxy
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]
_RECORDED = re.compile(r"^=== (GET|HEAD) (\S+) -> (\d+)$", re.MULTILINE)
MODES = ("redirect", "cache")
KINDS = ("manifest GETs", "manifest HEADs", "blob GETs", "blob HEADs", "other")


def pull(stack: CacheStack, target: str) -> None:
    """What a runtime fetches for ``target``: its manifest (through an index if one is served), config, layers."""
    name, tag = target.split("/", 1)[1].rsplit(":", 1)
    base = f"/v2/{name}"
    document = json.loads(stack.http("GET", f"{base}/manifests/{tag}", ACCEPT).body)
    if "manifests" in document:
        digest = document["manifests"][0]["digest"]
        document = json.loads(stack.http("GET", f"{base}/manifests/{digest}", ACCEPT).body)
    for descriptor in [document["config"], *document["layers"]]:
        resp = stack.http("GET", f"{base}/blobs/{descriptor['digest']}")
        location = resp.header("Location")
        if resp.status == 307 and location is not None:
            resp = components.http_request("GET", location)
        if resp.status != 200:
            raise RuntimeError(f"GET {descriptor['digest']} of {target}: {resp.status}")


def run_sequence(stack: CacheStack, image: str) -> None:
    for round_ in range(2):
        for creation in range(3):
            env = [f"RUN={round_}-{creation}"]
            pull(stack, stack.create(image, container_config=pb.ContainerConfig(env=env)).target_image)
        if round_ == 0:
            stack.restart()


def upstream_requests(record: Path) -> Counter[str]:
    """``METHOD path`` -> how many times the upstream answered it."""
    text = record.read_text(errors="replace") if record.exists() else ""
    return Counter(f"{match.group(1)} {match.group(2)}" for match in _RECORDED.finditer(text))


def by_kind(requests: Counter[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for request, n in requests.items():
        method, path = request.split(" ", 1)
        family = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else ""
        counts[f"{family} {method}s" if family else "other"] += n
    return counts


def count_mode(work: Path, registry: components.Registry, repository: str, mode: str) -> Counter[str]:
    record = work / f"{mode}-upstream.log"
    with FaultProxy(registry.url, work, record=record) as proxy:
        stack = CacheStack(
            work / mode,
            registries=[{"name": proxy.host, "endpoint": proxy.url, "blobs": mode}],
            gateway={"access_log": False},
            upstream={"tag_cache_ttl": "off"},
            cache={"store": f"file://{work / mode / 'cache'}"},
        )
        with stack.start():
            run_sequence(stack, f"{proxy.host}/{repository}:latest")
        time.sleep(1.0)  # the proxy logs a response after its last byte went out
    return upstream_requests(record)


def render(requests: dict[str, Counter[str]], paths: bool) -> str:
    counts = {mode: by_kind(counted) for mode, counted in requests.items()}
    lines = [
        "| `blobs =` | " + " | ".join(KINDS) + " | all |",
        "|---|" + "---:|" * (len(KINDS) + 1),
    ]
    for mode, counted in counts.items():
        cells = [str(counted[kind]) for kind in KINDS]
        lines.append(f"| `{mode}` | " + " | ".join(cells) + f" | {sum(counted.values())} |")
    if paths:
        for mode, counted in requests.items():
            lines += ["", f'`blobs = "{mode}"`, each request the upstream answered:', ""]
            lines += [f"    {n:3d}  {request}" for request, n in sorted(counted.items(), key=lambda item: item[0])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", action="store_true", help="also list each request the upstream answered")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wave-cache-counts-"))
    try:
        registry = components.start_registry(work / "registry")
        try:
            images = components.push_busybox_images(work / "images", registry)
            counts = {mode: count_mode(work, registry, images.repository, mode) for mode in MODES}
        finally:
            registry.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(counts, args.paths), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
