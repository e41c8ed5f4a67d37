"""Real components for tests: a real registry, real images and real pulling clients.

Everything runs offline on 127.0.0.1 from Debian packages (see
``/work/shared/REAL-COMPONENTS.md``): CNCF distribution (``docker-registry``), skopeo,
umoci, podman, containerd/ctr, dockerd (docker.io), htpasswd, busybox-static and
redis-server.

Processes are started as children of the test process, remembered by their
``ManagedProcess`` object (never in module globals) and stopped by PID.

The modules, lowest first (a module imports only those above it):

* ``oci``: media types, ``sha256_digest``;
* ``http``: plain-HTTP requests and the registry API calls;
* ``processes``: ports, tools, ``run_tool``, ``ManagedProcess`` and ``Component``,
  the context-manager base of every helper that owns a process;
* ``registry``: ``docker-registry`` (``start_registry``);
* ``images``: the busybox test images and readers of image bytes;
* ``runtimes``: skopeo, umoci, podman and containerd;
* ``redis``: redis-server (``start_redis``);
* ``docker``: a private Docker daemon (``DockerDaemon``, Debian ``docker.io``);
* ``project_image``: the repo's own image built offline with podman
  (``build_project_image``) and run (``PodmanContainer``), and a stand-in for
  the official registry and redis images (``build_peer_image``).

Callers write ``from tests import components`` and ``components.start_registry(...)``.
"""

from __future__ import annotations

from tests.components.docker import DockerDaemon
from tests.components.http import (
    HttpResponse,
    LoopbackListener,
    get_blob,
    get_manifest,
    http_request,
    push_blob,
    put_manifest,
    raw_exchange,
)
from tests.components.images import (
    BASE_REPOSITORY,
    BaseImages,
    ImageManifest,
    TaggedImage,
    iter_tar_names,
    layer_tar_gz,
    push_busybox_images,
    read_oci_image_config,
)
from tests.components.oci import (
    ALL_MANIFEST_TYPES,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    sha256_digest,
)
from tests.components.processes import (
    Component,
    ManagedProcess,
    ToolError,
    free_port,
    missing_component,
    require_tool,
    run_tool,
    vm_hwm_kib,
)
from tests.components.project_image import PodmanContainer, ProjectImage, build_peer_image, build_project_image
from tests.components.redis import RedisServer, start_redis
from tests.components.registry import Registry, start_registry
from tests.components.runtimes import (
    Containerd,
    podman_argv,
    podman_cleanup,
    podman_command,
    podman_inspect,
    podman_pull,
    podman_run,
    podman_runroot,
    skopeo_copy,
    skopeo_copy_to_oci,
    skopeo_inspect,
    umoci_unpack,
)

__all__ = [
    "ALL_MANIFEST_TYPES",
    "BASE_REPOSITORY",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "BaseImages",
    "Component",
    "Containerd",
    "DockerDaemon",
    "HttpResponse",
    "ImageManifest",
    "LoopbackListener",
    "ManagedProcess",
    "PodmanContainer",
    "ProjectImage",
    "RedisServer",
    "Registry",
    "TaggedImage",
    "ToolError",
    "build_peer_image",
    "build_project_image",
    "free_port",
    "get_blob",
    "get_manifest",
    "http_request",
    "iter_tar_names",
    "layer_tar_gz",
    "missing_component",
    "podman_argv",
    "podman_cleanup",
    "podman_command",
    "podman_inspect",
    "podman_pull",
    "podman_run",
    "podman_runroot",
    "push_blob",
    "push_busybox_images",
    "put_manifest",
    "raw_exchange",
    "read_oci_image_config",
    "require_tool",
    "run_tool",
    "sha256_digest",
    "skopeo_copy",
    "skopeo_copy_to_oci",
    "skopeo_inspect",
    "start_redis",
    "start_registry",
    "umoci_unpack",
    "vm_hwm_kib",
]
