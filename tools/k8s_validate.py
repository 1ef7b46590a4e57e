#!/usr/bin/python3
# k8s_validate.py - checks Kubernetes manifests offline, with no cluster:
# each document is deserialised strictly into the Kubernetes API's own
# models (Debian's python3-kubernetes: the OpenAPI schema of the API as
# generated classes), so an unknown or misspelt field, a wrong type or a
# missing required field is an error naming its path; then the project's
# own rules for deploy/k8s are checked (probes, preStop, non-root, read-only
# root file system, resources, selectors that match, the ConfigMap's
# settings accepted by ctr-server's own parser).
#
#   /usr/bin/python3 tools/k8s_validate.py [--ctr-server BUILD/ctr-server] FILE.yaml...
#
# Exit status 0 when every document passes, 1 otherwise (each problem on
# stderr as FILE:DOC: path: message), 2 on unusable input.
#
# The schema is the one python3-kubernetes was generated from (the client
# version printed first; Debian 12: 22.6, Kubernetes API 1.22).  Kinds
# whose API version is newer than that schema are checked against the
# older version they are identical to: autoscaling/v2 HorizontalPodAutoscaler
# against autoscaling/v2beta2 (v2 is v2beta2 made stable, field for field).
# Kubernetes quantities ("2", "768Mi") must be written as strings here and
# match the quantity syntax; integer-or-string fields (ports, maxSurge) take
# either.

import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

try:
    import kubernetes
    from kubernetes.client import models as km
except ImportError:  # pragma: no cover
    print("k8s_validate: python3-kubernetes is not installed (deploy/install.sh)", file=sys.stderr)
    sys.exit(2)

# (apiVersion, kind) -> model class name.
KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "Secret"): "V1Secret",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v1", "HorizontalPodAutoscaler"): "V1HorizontalPodAutoscaler",
    # v2 (Kubernetes 1.23+) has exactly v2beta2's fields.
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2beta2HorizontalPodAutoscaler",
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler"): "V2beta2HorizontalPodAutoscaler",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}

QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
# Fields the Python client types loosely ('object') that the API defines as
# IntOrString: an int or a string.
INT_OR_STRING = {"port", "target_port", "max_surge", "max_unavailable", "min_available"}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, msg):
        self.items.append(f"{where}: {msg}")


def deserialize(value, typ, path, probs):
    """Builds the model object for value (a YAML value) of OpenAPI type typ,
    refusing anything the schema does not have.  Returns the object (or
    None after a problem)."""
    if value is None:
        return None
    if typ.startswith("list["):
        if not isinstance(value, list):
            probs.add(path, f"expected a list, got {type(value).__name__}")
            return None
        inner = typ[5:-1]
        return [deserialize(v, inner, f"{path}[{i}]", probs) for i, v in enumerate(value)]
    if typ.startswith("dict("):
        if not isinstance(value, dict):
            probs.add(path, f"expected a map, got {type(value).__name__}")
            return None
        inner = typ[typ.index(",") + 1:-1].strip()
        return {k: deserialize(v, inner, f"{path}.{k}", probs) for k, v in value.items()}
    if typ == "str":
        if not isinstance(value, str):
            probs.add(path, f"expected a string, got {type(value).__name__} {value!r}"
                      " (quote it)")
        return value
    if typ == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            probs.add(path, f"expected an integer, got {value!r}")
        return value
    if typ == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            probs.add(path, f"expected a number, got {value!r}")
        return value
    if typ == "bool":
        if not isinstance(value, bool):
            probs.add(path, f"expected true or false, got {value!r}")
        return value
    if typ in ("object", "datetime", "date"):
        return value
    cls = getattr(km, typ, None)
    if cls is None:
        probs.add(path, f"schema type {typ} unknown to this client")
        return None
    if not isinstance(value, dict):
        probs.add(path, f"expected an object ({typ}), got {type(value).__name__}")
        return None
    by_json = {j: a for a, j in cls.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            probs.add(f"{path}.{key}", f"unknown field (not in {typ})")
            continue
        sub = f"{path}.{key}"
        if attr in INT_OR_STRING and cls.openapi_types[attr] == "object":
            if not isinstance(v, (int, str)) or isinstance(v, bool):
                probs.add(sub, f"expected an integer or a string, got {v!r}")
        kwargs[attr] = deserialize(v, cls.openapi_types[attr], sub, probs)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        probs.add(path, f"{typ}: {e}")
        return None


def walk_quantities(obj, path, probs):
    """Every requests/limits value must be a quantity string."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("requests", "limits") and isinstance(v, dict):
                for rk, rv in v.items():
                    if not isinstance(rv, str) or not QUANTITY.match(rv):
                        probs.add(f"{path}.{k}.{rk}", f"not a quantity string: {rv!r}")
            walk_quantities(v, f"{path}.{k}", probs)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            walk_quantities(v, f"{path}[{i}]", probs)


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_rules(docs, probs, ctr_server):
    """Rules for the scorer's manifests, across documents."""
    by_kind = {}
    for where, d in docs:
        by_kind.setdefault(d.get("kind"), []).append((where, d))
    deps = by_kind.get("Deployment", [])
    if not deps:
        probs.add("deploy/k8s", "no Deployment")
        return
    for where, d in deps:
        spec = d["spec"]
        tmpl = spec["template"]
        pod_labels = tmpl["metadata"].get("labels", {})
        if not labels_match(spec["selector"].get("matchLabels"), pod_labels):
            probs.add(f"{where}: spec.selector", "does not match the pod template's labels")
        pod = tmpl["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            probs.add(f"{where}: pod securityContext.runAsNonRoot", "must be true")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for c in pod["containers"]:
            cw = f"{where}: container {c['name']}"
            lp, rp = c.get("livenessProbe", {}), c.get("readinessProbe", {})
            if lp.get("httpGet", {}).get("path") != "/healthz":
                probs.add(f"{cw}.livenessProbe", "must GET /healthz")
            if rp.get("httpGet", {}).get("path") != "/readyz":
                probs.add(f"{cw}.readinessProbe", "must GET /readyz")
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
            if not pre or os.path.basename(pre[0]) != "sleep":
                probs.add(f"{cw}.lifecycle.preStop", "must pause (exec sleep N)")
            else:
                pause = int(pre[1])
                # preStop pause + ctr-server's drain (10 s) must fit the grace.
                if grace < pause + 10:
                    probs.add(f"{where}: terminationGracePeriodSeconds",
                              f"{grace} s < preStop {pause} s + drain 10 s")
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                probs.add(f"{cw}.securityContext.readOnlyRootFilesystem", "must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                probs.add(f"{cw}.securityContext.allowPrivilegeEscalation", "must be false")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        probs.add(f"{cw}.resources.{part}.{r}", "missing")
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in (lp, rp, c.get("startupProbe", {})):
                port = probe.get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    probs.add(f"{cw}: probe port", f"{port!r} is not a named container port")
            mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
            vols = {v["name"] for v in pod.get("volumes", [])}
            for name, m in mounts.items():
                if name not in vols:
                    probs.add(f"{cw}.volumeMounts.{name}", "no such volume")
            if "models" not in mounts or not mounts["models"].get("readOnly"):
                probs.add(f"{cw}.volumeMounts", "the model volume must be mounted read-only")
        for where_s, s in by_kind.get("Service", []):
            if not labels_match(s["spec"].get("selector"), pod_labels):
                probs.add(f"{where_s}: spec.selector", "selects no pod of the Deployment")
            for p in s["spec"].get("ports", []):
                tp = p.get("targetPort")
                names = {cp.get("name") for c in pod["containers"] for cp in c.get("ports", [])}
                if isinstance(tp, str) and tp not in names:
                    probs.add(f"{where_s}: targetPort", f"{tp!r} names no container port")
        for where_p, p in by_kind.get("PodDisruptionBudget", []):
            if not labels_match(p["spec"]["selector"].get("matchLabels"), pod_labels):
                probs.add(f"{where_p}: spec.selector", "selects no pod of the Deployment")
        for where_h, h in by_kind.get("HorizontalPodAutoscaler", []):
            ref = h["spec"]["scaleTargetRef"]
            if ref.get("kind") != "Deployment" or ref.get("name") != d["metadata"]["name"]:
                probs.add(f"{where_h}: scaleTargetRef", "does not name the Deployment")
        cms = {cm["metadata"]["name"]: (w, cm) for w, cm in by_kind.get("ConfigMap", [])}
        for v in pod.get("volumes", []):
            ref = v.get("configMap", {}).get("name")
            if ref and ref not in cms:
                probs.add(f"{where}: volume {v['name']}", f"ConfigMap {ref} is not in the manifests")
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            cfg = env.get("CTR_CONFIG")
            if not cfg:
                continue
            mount = next((m for m in c.get("volumeMounts", [])
                          if cfg.startswith(m["mountPath"].rstrip("/") + "/")), None)
            vol = mount and next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
            cmname = vol and vol.get("configMap", {}).get("name")
            key = cfg[len(mount["mountPath"].rstrip("/")) + 1:] if mount else None
            if not cmname or cmname not in cms or key not in cms[cmname][1].get("data", {}):
                probs.add(f"{where}: CTR_CONFIG", f"{cfg} is not a key of a mounted ConfigMap")
                continue
            check_settings(cms[cmname][0], key, cms[cmname][1]["data"][key], env, probs, ctr_server)


def check_settings(where, key, text, env, probs, ctr_server):
    """ctr-server's own parser reads the settings file (and the CTR_*
    variables the Deployment sets): exit status 2 is a settings error.  With
    the model path missing here, a good file ends in exit 1 ("cannot load
    the model") without serving."""
    if not ctr_server:
        return
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, key)
        with open(path, "w") as f:
            f.write(text)
        e = {k: v for k, v in os.environ.items() if not k.startswith("CTR_")}
        e.update({k: v for k, v in env.items() if k.startswith("CTR_") and v is not None})
        e["CTR_CONFIG"] = path
        e["CTR_MODEL"] = os.path.join(d, "no-model.safetensors")
        r = subprocess.run([ctr_server], env=e, capture_output=True, text=True, timeout=30)
        if r.returncode == 2 or "cannot load the model" not in r.stderr + r.stdout:
            probs.add(f"{where}: data.{key}",
                      f"ctr-server refuses these settings: {(r.stderr or r.stdout).strip()}")


def main():
    ap = argparse.ArgumentParser(description="Checks Kubernetes manifests offline.")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--ctr-server", help="ctr-server to check the ConfigMap's settings with")
    ap.add_argument("--no-rules", action="store_true", help="schema only")
    args = ap.parse_args()
    print(f"k8s_validate: python3-kubernetes {kubernetes.__version__} models")
    probs = Problems()
    docs = []
    for path in args.files:
        try:
            with open(path) as f:
                loaded = list(yaml.safe_load_all(f))
        except (OSError, yaml.YAMLError) as e:
            print(f"k8s_validate: {path}: {e}", file=sys.stderr)
            return 2
        for i, d in enumerate(loaded):
            if d is None:
                continue
            where = f"{path}:{i}"
            if not isinstance(d, dict):
                probs.add(where, "not a mapping")
                continue
            av, kind = d.get("apiVersion"), d.get("kind")
            if av == "kustomize.config.k8s.io/v1beta1" and kind == "Kustomization":
                base = os.path.dirname(path)
                for key in d:
                    if key not in ("apiVersion", "kind", "resources", "namespace", "images",
                                   "commonLabels", "labels", "configMapGenerator"):
                        probs.add(f"{where}.{key}", "unknown or unchecked Kustomization field")
                for r in d.get("resources", []):
                    if not os.path.exists(os.path.join(base, r)):
                        probs.add(f"{where}.resources", f"{r} does not exist")
                listed = {os.path.normpath(os.path.join(base, r)) for r in d.get("resources", [])}
                for other in args.files:
                    if (os.path.dirname(other) == base and other != path
                            and os.path.normpath(other) not in listed):
                        probs.add(f"{where}.resources", f"{os.path.basename(other)} is not listed")
                print(f"  ok   {where} Kustomization ({len(d.get('resources', []))} resources)")
                continue
            name = KINDS.get((av, kind))
            if not name:
                probs.add(where, f"apiVersion {av!r} kind {kind!r}: not a kind this check knows")
                continue
            before = len(probs.items)
            obj = deserialize(d, name, f"{where}", probs)
            walk_quantities(d, where, probs)
            if obj is not None and len(probs.items) == before:
                print(f"  ok   {where} {av} {kind} {d.get('metadata', {}).get('name')} ({name})")
            docs.append((where, d))
    if not args.no_rules and not probs.items:
        check_rules(docs, probs, args.ctr_server)
    for p in probs.items:
        print(f"k8s_validate: {p}", file=sys.stderr)
    print(f"k8s_validate: {len(docs)} documents, {len(probs.items)} problems")
    return 1 if probs.items else 0


if __name__ == "__main__":
    sys.exit(main())
