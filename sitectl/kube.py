"""`sitectl kube manifests`: one site in one Kubernetes namespace, for a user with rights
in that namespace only (nothing cluster-scoped: no CRD, no ClusterRole, no webhook).

Printed as JSON, which is YAML 1.2 and which `kubectl apply -f` takes as a List: no YAML
emitter to get wrong. The objects, all named vanrouter-SITE:

    ServiceAccount  no API token mounted: the router never talks to the API server
    Secret          the site's keys and certificates, and its links' (links.NAME.*)
    ConfigMap       site.toml, with bind and admin_bind 0.0.0.0 (the kubelet probes the
                    admin port from outside the pod) and host the Service's DNS name
    Deployment      one replica (a site is one router identity), non-root, read-only root
                    filesystem, no privileges; the Secret and ConfigMap projected into one
                    read-only site dir, an emptyDir for the runtime dir and one for
                    the data dir, or with --data-size the PersistentVolumeClaim
    Service         the link port
    PersistentVolumeClaim  with --data-size: the data dir (token grants, certificates
                    issued, revoked and renewed) kept across pod restarts
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import re
from dataclasses import replace
from typing import Any, Protocol

import certs
from router.endpoint import Endpoint
from router.names import InvalidName
from router.site.atomic import read_regular
from router.site.config import dump_config
from router.site.directory import ENV_DATA_DIR, ENV_RUN_DIR, ENV_SITE_DIR, Site
from router.site.linkfiles import MAX_LINK_FILE_BYTES
from router.version import package_version
from sitectl.errors import UsageError

PREFIX = "vanrouter-"
SITE_MOUNT = "/etc/vanrouter/site"
RUN_MOUNT = "/run/vanrouter"
DATA_MOUNT = "/var/lib/vanrouter"
# The Containerfile's ENTRYPOINT and CMD: the tests check that the two agree.
COMMAND = ["sitectl", "run"]
ARGS = ["--log-format", "json"]
UID = 10001  # the Containerfile's USER
FILE_MODE = 0o440  # read by the router's group (fsGroup), by nobody else
# After SIGTERM: the drain, then links (1 s) and HTTP connections (1 s) close.
GRACE_MARGIN_S = 10
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
SITE_FILES = ("ca.crt", "ca.key", "router.crt", "router.key", "identity.key")
MAX_SECRET_BYTES = 1024 * 1024  # what the API server stores in one Secret
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
MAX_IMAGE = 255
# Namespaced kinds only: the tests refuse any other.
KINDS = ("ServiceAccount", "Secret", "ConfigMap", "Deployment", "Service",
         "PersistentVolumeClaim")
# A storage request as most clusters' provisioners take it: whole binary units.
_SIZE = re.compile(r"^[1-9][0-9]{0,5}(Mi|Gi|Ti)$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class _Ctx(Protocol):
    site: Site


def dns_label(value: str, what: str, *, most: int = 63) -> str:
    """A DNS-1123 label: what Kubernetes takes as a namespace or in an object's name."""
    if len(value) > most or not _LABEL.fullmatch(value):
        raise UsageError(f"{what} {value[:80]!r} is not a DNS-1123 label of at most {most} "
                         "characters (lowercase letters, digits and '-', starting and "
                         "ending with a letter or digit)")
    return value


def storage_size(value: str) -> str:
    if not _SIZE.fullmatch(value):
        raise UsageError(f"--data-size {value[:80]!r} is not a size such as 100Mi or 1Gi "
                         "(a whole number of Mi, Gi or Ti)")
    return value


def storage_class(value: str) -> str:
    if not _SUBDOMAIN.fullmatch(value):
        raise UsageError(f"--storage-class {value[:80]!r} is not a storage class name "
                         "(lowercase letters, digits, '-' and '.')")
    return value


def image_ref(value: str) -> str:
    if len(value) > MAX_IMAGE or not _IMAGE.fullmatch(value):
        raise UsageError(f"--image {value[:80]!r} is not an image reference "
                         "(e.g. registry.example/team/vanrouter:0.1.0)")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret_files(site: Site) -> dict[str, tuple[str, bytes]]:
    """Secret key -> (path in the site dir, bytes): the site's own PEM files and every
    link's four files (a Secret key holds no '/', so links/x.toml is links.x.toml)."""
    files = {name: (name, certs.load_pem(site.root / name)) for name in SITE_FILES}
    for link in site.link_names():
        toml, *pems = site.link_files(link)
        files[f"links.{toml.name}"] = (f"links/{toml.name}",
                                       read_regular(toml, MAX_LINK_FILE_BYTES))
        for pem in pems:
            files[f"links.{pem.name}"] = (f"links/{pem.name}", certs.load_pem(pem))
    return files


def manifests(site: Site, *, namespace: str, image: str, service_type: str = "ClusterIP",
              advertise: tuple[str, ...] | None = None, data_size: str | None = None,
              storage_class_name: str | None = None) -> dict[str, Any]:
    """The List of objects for `site` in `namespace`; with `data_size`, the data dir is a
    PersistentVolumeClaim of that size (of `storage_class_name`, else the default)."""
    cfg = site.config()
    dns_label(namespace, "namespace")
    name = PREFIX + dns_label(cfg.name, "site name", most=63 - len(PREFIX))
    image_ref(image)
    if data_size is not None:
        storage_size(data_size)
    if storage_class_name is not None:
        if data_size is None:
            raise UsageError("--storage-class needs --data-size (an emptyDir has no class)")
        storage_class(storage_class_name)
    if not cfg.admin_port:
        raise UsageError(f"site {cfg.name} has no admin port, which the probes need: set "
                         "admin_port in site.toml")
    host = f"{name}.{namespace}.svc"
    pod_cfg = replace(cfg, host=host, bind="0.0.0.0", admin_bind="0.0.0.0",
                      advertise=cfg.advertise if advertise is None else advertise)
    site_toml = dump_config(pod_cfg)
    files = secret_files(site)
    size = sum(len(_b64(data)) for _, data in files.values())
    if size > MAX_SECRET_BYTES - 64 * 1024:
        raise UsageError(f"the site's keys and links come to {size} bytes, more than one "
                         "Secret holds: delete links it no longer needs")
    labels = {"app.kubernetes.io/name": "vanrouter", "app.kubernetes.io/instance": cfg.name}
    if _LABEL_VALUE.fullmatch(package_version()):  # not "unknown (not installed)"
        labels["app.kubernetes.io/version"] = package_version()
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}

    def meta() -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels)}

    # A change of config or keys changes the pod template, so `kubectl apply` rolls it.
    digest = hashlib.sha256(site_toml.encode())
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + files[key][1])
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta(), "type": "Opaque",
         "data": {key: _b64(data) for key, (_, data) in sorted(files.items())}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(),
         "data": {"site.toml": site_toml}},
        _deployment(meta(), selector, image=image, files=files,
                    grace=math.ceil(cfg.limits.drain_timeout_s) + GRACE_MARGIN_S,
                    link_port=cfg.link_port, admin_port=cfg.admin_port,
                    config_hash=digest.hexdigest()[:16], persistent=data_size is not None),
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(),
         "spec": {"type": service_type, "selector": selector,
                  "ports": [{"name": "link", "port": cfg.link_port, "targetPort": "link",
                             "protocol": "TCP"}]}},
    ]
    if data_size is not None:
        claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": data_size}}}
        if storage_class_name is not None:
            claim["storageClassName"] = storage_class_name
        items.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(),
                      "spec": claim})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def env() -> dict[str, str]:
    """The container's environment: where the site, runtime and data dirs are mounted
    (`kubectl exec ... sitectl status` finds the router through the same variables)."""
    return {ENV_SITE_DIR: SITE_MOUNT, ENV_RUN_DIR: RUN_MOUNT, ENV_DATA_DIR: DATA_MOUNT,
            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _deployment(meta: dict[str, Any], selector: dict[str, str], *, image: str,
                files: dict[str, tuple[str, bytes]], grace: int, link_port: int,
                admin_port: int, config_hash: str, persistent: bool) -> dict[str, Any]:
    name = meta["name"]
    drop_all = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "runAsNonRoot": True, "privileged": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}}

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "admin"}, "periodSeconds": period,
                "timeoutSeconds": 3, "failureThreshold": failures}

    container = {
        "name": "router", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": list(COMMAND), "args": list(ARGS),
        "env": [{"name": k, "value": v} for k, v in env().items()],
        "ports": [{"name": "link", "containerPort": link_port, "protocol": "TCP"},
                  {"name": "admin", "containerPort": admin_port, "protocol": "TCP"}],
        "startupProbe": probe("/healthz", 2, 30),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}},
        "securityContext": drop_all,
        "volumeMounts": [{"name": "site", "mountPath": SITE_MOUNT, "readOnly": True},
                         {"name": "run", "mountPath": RUN_MOUNT},
                         {"name": "data", "mountPath": DATA_MOUNT}],
    }
    data_volume: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": name}} if persistent
        else {"emptyDir": {"sizeLimit": "64Mi"}})
    site_volume = {"defaultMode": FILE_MODE, "sources": [
        {"configMap": {"name": name, "items": [{"key": "site.toml", "path": "site.toml"}]}},
        {"secret": {"name": name, "items": [{"key": key, "path": path}
                                            for key, (path, _) in sorted(files.items())]}},
    ]}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two routers with one identity
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": meta["labels"],
                             "annotations": {"vanrouter/config-hash": config_hash}},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID,
                                        "runAsGroup": UID, "fsGroup": UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [
                        {"name": "site", "projected": site_volume},
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                        {"name": "data", **data_volume},
                    ],
                },
            },
        },
    }


def cmd_manifests(ctx: _Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    advertise = None
    if a.advertise:
        try:
            advertise = tuple(str(Endpoint.parse(x)) for x in a.advertise)
        except InvalidName as exc:
            raise UsageError(f"--advertise: {exc}") from None
    image = a.image if a.image is not None else f"vanrouter:{package_version()}"
    doc = manifests(ctx.site, namespace=a.namespace, image=image,
                    service_type=a.service_type, advertise=advertise,
                    data_size=a.data_size, storage_class_name=a.storage_class)
    print(json.dumps(doc, indent=2))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    kube = sub.add_parser("kube", parents=[common], help="Kubernetes").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = kube.add_parser("manifests", parents=[common], help="print this site's objects for "
                        "one namespace (kubectl apply -f -)")
    p.add_argument("--namespace", required=True)
    p.add_argument("--image", help="the router image built from the Containerfile "
                   "(default: vanrouter:VERSION, this sitectl's version)")
    p.add_argument("--service-type", default="ClusterIP", choices=SERVICE_TYPES,
                   help="how other sites reach the link port (default: %(default)s)")
    p.add_argument("--advertise", action="append", metavar="HOST:PORT",
                   help="where sites outside the cluster dial this one (a load balancer, a "
                   "node port); repeatable (default: the site's own advertise, and the "
                   "Service's name vanrouter-SITE.NAMESPACE.svc)")
    p.add_argument("--data-size", metavar="SIZE",
                   help="keep the data dir (token grants, certificates issued, revoked and "
                   "renewed) on a PersistentVolumeClaim of SIZE (e.g. 100Mi) instead of an "
                   "emptyDir that a new pod starts without")
    p.add_argument("--storage-class", metavar="NAME",
                   help="the claim's storage class (default: the cluster's default)")
    p.set_defaults(func=cmd_manifests)
