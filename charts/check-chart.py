#!/usr/bin/env python3
"""Checks of charts/portcullis without a cluster (run by charts/test-chart.sh).

Helm's own lint and render come from helm-python-sdk (Helm v4's Go SDK through its C ABI, no helm
binary); promtool checks and unit-tests the alert rules. Each check prints PASS/FAIL with what it
found; the last line is "chart: N passed, M failed" and the exit code is 1 when M > 0.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "portcullis"
NS = "portcullis-system"
RELEASE = "portcullis"
OUT = Path(os.environ.get("CHART_OUT", ROOT / "target" / "chart"))

PASSED: list[str] = []
FAILED: list[str] = []


def check(name):
    def wrap(fn):
        try:
            detail = fn()
            PASSED.append(name)
            print(f"PASS {name}" + (f": {detail}" if detail else ""))
        except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
            FAILED.append(name)
            print(f"FAIL {name}: {e}")
            if os.environ.get("CHART_DEBUG"):
                traceback.print_exc()
        return fn

    return wrap


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


ALL_ON = yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())

# Value sets rendered and checked: the defaults, every option on, and variants that take the
# other branch of each switch.
CASES: dict[str, dict | None] = {
    "default": None,
    "all-on": ALL_ON,
    "webhook-off": {"webhook": {"enabled": False}},
    "cert-manager-clusterissuer": {
        "webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}
    },
    "fail-closed-generated-cert": {"webhook": {"failurePolicy": "Fail"}},
    "external-redis": {"redis": {"externalUrl": "redis://redis.shared.svc:6379/2"}},
    "fixed-replicas-nodeport": {
        "proxy": {"replicas": 3, "autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False},
                  "service": {"type": "NodePort", "nodePort": 30080}},
        "ingressClass": {"enabled": False},
    },
    "single-operator": {"operator": {"replicas": 1, "leaderElection": False}},
    "netpol-default-peers": {"networkPolicy": {"enabled": True}},
    "existing-serviceaccounts": {
        "operator": {"serviceAccount": {"create": False, "name": "ops-sa"}},
        "proxy": {"serviceAccount": {"create": False, "name": "proxy-sa"}},
        "fullnameOverride": "gw",
    },
}


def reason(e: Exception) -> str:
    """The chart's own message of a failed render (after Helm's location prefix)."""
    return str(e).strip().splitlines()[-1].rsplit("): ", 1)[-1]


def render(values: dict | None, name: str = RELEASE) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=name, namespace=NS, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict]:
    objs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            expect(isinstance(doc, dict), f"{path}: a document is not a mapping")
            doc["__source"] = path
            objs.append(doc)
    return objs


def values_for(case: dict | None) -> dict:
    return deep_merge(DEFAULTS, case or {})


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    expect(len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def deployment(objs, component):
    found = [d for d in by_kind(objs, "Deployment")
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    expect(len(found) == 1, f"expected one {component} Deployment, found {len(found)}")
    return found[0]


def args_of(container) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in container.get("args", []):
        k, _, v = a.partition("=")
        out.setdefault(k, []).append(v)
    return out


# ---------------------------------------------------------------------------------------------
print(f"== helm-python-sdk {helm.__version__} (Helm SDK {helm.helm_sdk_version()}), chart {CHART_META['version']}")
OUT.mkdir(parents=True, exist_ok=True)


@check("crds/ equals crds/manifests/ byte for byte (drift)")
def _():
    src = sorted(p.name for p in (ROOT / "crds" / "manifests").glob("*.yaml"))
    dst = sorted(p.name for p in (CHART / "crds").iterdir())
    expect(src == dst, f"file sets differ: crds/manifests {src} vs chart crds/ {dst}")
    for name in src:
        a = (ROOT / "crds" / "manifests" / name).read_bytes()
        b = (CHART / "crds" / name).read_bytes()
        expect(a == b, f"{name} differs: cp crds/manifests/*.yaml charts/portcullis/crds/")
    with helm.Chart.load(CHART) as chart:
        loaded = sorted(c["filename"].rsplit("/", 1)[-1] for c in chart.crds)
    expect(loaded == src, f"Helm loads CRDs {loaded}")
    return f"{len(src)} CRDs, also what Helm loads from crds/"


for label, vals, kube in [("default values", None, None), ("ci/all-on-values.yaml", ALL_ON, None),
                          ("default values, Kubernetes 1.20", None, "v1.20.2"),
                          ("default values, Kubernetes 1.27", None, "v1.27.0"),
                          ("ci/all-on-values.yaml, Kubernetes 1.33", ALL_ON, "v1.33.0")]:
    @check(f"helm lint --strict ({label})")
    def _(vals=vals, kube=kube):
        report = helm.lint(CHART, vals, strict=True, namespace=NS, kube_version=kube)
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        expect(not bad and not report["errors"], f"{bad} {report['errors']}")
        infos = [m["error"] for m in report["messages"]]
        return f"0 warnings, 0 errors" + (f" (info: {'; '.join(infos)})" if infos else "")

RENDERED: dict[str, list[dict]] = {}
for case, vals in CASES.items():
    @check(f"render [{case}]: parses as YAML")
    def _(case=case, vals=vals):
        rendered = render(vals, name="gw" if case == "existing-serviceaccounts" else RELEASE)
        objs = objects(rendered)
        RENDERED[case] = objs
        with open(OUT / f"{case}.yaml", "w") as f:
            for path, text in sorted(rendered.items()):
                f.write(f"# Source: {path}\n{text}\n---\n")
        kinds = sorted({o["kind"] for o in objs})
        return f"{len(objs)} objects ({', '.join(kinds)}) -> {OUT / (case + '.yaml')}"

REQUIRED_LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "app.kubernetes.io/part-of"]
KNOWN = {
    ("v1", "ConfigMap"), ("v1", "ServiceAccount"), ("v1", "Service"), ("apps/v1", "Deployment"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"), ("policy/v1", "PodDisruptionBudget"),
    # what a cluster older than 1.23 / 1.21 gets (e2e/node/ installs the chart on 1.20)
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler"), ("policy/v1beta1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "IngressClass"), ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate"),
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration", "IngressClass",
                  "GatewayClass"}
KNOWN.add(("gateway.networking.k8s.io/v1", "GatewayClass"))


def upstream_crd(o):
    """The Gateway API CRDs, rendered verbatim from gateway-api/ (checked on their own)."""
    return o.get("kind") == "CustomResourceDefinition" and o["metadata"]["name"].endswith(".gateway.networking.k8s.io")


@check("every object (and pod template) has the app.kubernetes.io labels, a known kind and its namespace")
def _():
    n = 0
    for case, objs in RENDERED.items():
        for o in objs:
            if upstream_crd(o):
                continue
            where = f"[{case}] {o['kind']}/{o['metadata'].get('name')}"
            expect((o.get("apiVersion"), o.get("kind")) in KNOWN, f"{where}: unexpected {o.get('apiVersion')}")
            labels = o["metadata"].get("labels") or {}
            missing = [l for l in REQUIRED_LABELS if not labels.get(l)]
            expect(not missing, f"{where} lacks {missing}")
            expect(labels["app.kubernetes.io/version"] == str(CHART_META["appVersion"]), f"{where}: version label")
            if o["kind"] in CLUSTER_SCOPED:
                expect("namespace" not in o["metadata"], f"{where}: cluster-scoped with a namespace")
            elif o["kind"] == "RoleBinding" and o["roleRef"]["name"] == "portcullis-tenant":
                # Tenant bindings live in the tenants' namespaces (tenancy.tenantRole.bindings).
                expect(o["metadata"].get("namespace") not in (None, NS), f"{where}: tenant binding in {o['metadata'].get('namespace')}")
            else:
                expect(o["metadata"].get("namespace") == NS, f"{where}: namespace {o['metadata'].get('namespace')}")
            if o["kind"] == "Deployment":
                tl = o["spec"]["template"]["metadata"]["labels"]
                missing = [l for l in REQUIRED_LABELS if not tl.get(l)]
                expect(not missing, f"{where} pod template lacks {missing}")
                sel = o["spec"]["selector"]["matchLabels"]
                expect(all(tl.get(k) == v for k, v in sel.items()), f"{where}: selector does not match template")
            n += 1
    return f"{n} objects over {len(RENDERED)} renders"


@check("image defaults to repository:appVersion; image.tag overrides it")
def _():
    for o in by_kind(RENDERED["default"], "Deployment"):
        for c in pod_spec(o)["containers"]:
            expect(c["image"] == f"portcullis:{CHART_META['appVersion']}", f"{c['image']}")
    objs = objects(render({"image": {"repository": "registry.example/portcullis", "tag": "1.2.3"}}))
    images = {c["image"] for o in by_kind(objs, "Deployment") for c in pod_spec(o)["containers"]}
    expect(images == {"registry.example/portcullis:1.2.3"}, f"{images}")


@check("pod and container securityContext: non-root, read-only root fs, no capabilities, RuntimeDefault seccomp; resources set")
def _():
    n = 0
    for case, objs in RENDERED.items():
        for d in by_kind(objs, "Deployment"):
            spec = pod_spec(d)
            where = f"[{case}] {d['metadata']['name']}"
            psc = spec.get("securityContext", {})
            expect(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
            expect(psc.get("runAsUser", 0) != 0, f"{where}: runAsUser 0")
            expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp")
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c.get("securityContext", {})
                expect(sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}: readOnlyRootFilesystem")
                expect(sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: allowPrivilegeEscalation")
                expect(sc.get("privileged") is not True, f"{where}/{c['name']}: privileged")
                expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}: drop ALL")
                expect(not sc.get("capabilities", {}).get("add"), f"{where}/{c['name']}: adds capabilities")
                expect(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}/{c['name']}: seccomp")
                res = c.get("resources", {})
                expect(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"), f"{where}: requests")
                expect(res.get("limits", {}).get("memory"), f"{where}: memory limit")
                n += 1
    return f"{n} containers"


@check("probes on the admin port: proxy readiness is /readyz (a loaded config), liveness /healthz; operator likewise")
def _():
    for case, objs in RENDERED.items():
        v = values_for(CASES[case])
        for component, port in [("proxy", v["proxy"]["adminPort"]), ("operator", v["operator"]["adminPort"])]:
            c = pod_spec(deployment(objs, component))["containers"][0]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            expect(ports.get("admin") == port, f"[{case}] {component} admin port {ports}")
            expect(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, f"[{case}] {component} readiness")
            expect(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, f"[{case}] {component} liveness")
            a = args_of(c)
            expect(a.get("--admin-listen") == [f"0.0.0.0:{port}"], f"[{case}] {component} --admin-listen {a.get('--admin-listen')}")
            expect(a.get("--namespace") == [NS], f"[{case}] {component} --namespace")
        proxy = pod_spec(deployment(objs, "proxy"))["containers"][0]
        expect("--kube" in proxy["args"], f"[{case}] proxy without --kube")


@check("graceful drain: preStop pause, then SIGTERM drain; terminationGracePeriodSeconds > pause + drain")
def _():
    for case, objs in RENDERED.items():
        spec = pod_spec(deployment(objs, "proxy"))
        c = spec["containers"][0]
        pre = c["lifecycle"]["preStop"]
        pause = int(pre["sleep"]["seconds"]) if "sleep" in pre else int(pre["exec"]["command"][-1])
        drain = int(args_of(c)["--drain-timeout-secs"][0])
        grace = spec["terminationGracePeriodSeconds"]
        expect(pause > 0 and grace > pause + drain, f"[{case}] grace {grace} <= pause {pause} + drain {drain}")
    try:
        render({"proxy": {"terminationGracePeriodSeconds": 30}})
    except helm.HelmError as e:
        expect("must exceed" in str(e), str(e))
        return f"default: pause {pause}s + drain {drain}s < grace {grace}s; grace 30s is refused: {reason(e)}"
    raise AssertionError("a grace period shorter than the drain rendered")


@check("proxy: Service type configurable, HPA on the proxy Deployment (no fixed replicas then), PDB selects the proxies")
def _():
    for case, objs in RENDERED.items():
        v = values_for(CASES[case])
        d = deployment(objs, "proxy")
        name = d["metadata"]["name"]
        svc = one(objs, "Service", name)
        expect(svc["spec"]["type"] == v["proxy"]["service"]["type"], f"[{case}] service type")
        hpas = by_kind(objs, "HorizontalPodAutoscaler")
        if v["proxy"]["autoscaling"]["enabled"]:
            expect(len(hpas) == 1 and hpas[0]["spec"]["scaleTargetRef"]["name"] == name, f"[{case}] HPA target")
            expect("replicas" not in d["spec"], f"[{case}] replicas set beside an HPA")
        else:
            expect(not hpas and d["spec"]["replicas"] == v["proxy"]["replicas"], f"[{case}] replicas")
        pdbs = by_kind(objs, "PodDisruptionBudget")
        if v["proxy"]["podDisruptionBudget"]["enabled"]:
            expect(len(pdbs) == 1, f"[{case}] PDB")
            sel = pdbs[0]["spec"]["selector"]["matchLabels"]
            tl = d["spec"]["template"]["metadata"]["labels"]
            expect(all(tl.get(k) == x for k, x in sel.items()), f"[{case}] PDB selector")
        else:
            expect(not pdbs, f"[{case}] PDB rendered while disabled")
    types = {c: one(RENDERED[c], "Service", deployment(RENDERED[c], "proxy")["metadata"]["name"])["spec"]["type"]
             for c in ("default", "all-on", "fixed-replicas-nodeport")}
    return f"{types}"


@check("every Service selects a Deployment's pods and targets named ports they declare")
def _():
    n = 0
    for case, objs in RENDERED.items():
        for s in by_kind(objs, "Service"):
            sel = s["spec"]["selector"]
            pods = [d for d in by_kind(objs, "Deployment")
                    if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            expect(len(pods) == 1, f"[{case}] Service {s['metadata']['name']} selects {len(pods)} Deployments")
            declared = {p["name"] for c in pod_spec(pods[0])["containers"] for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                expect(p["targetPort"] in declared, f"[{case}] {s['metadata']['name']}: port {p['targetPort']} not in {declared}")
            n += 1
    return f"{n} Services"


@check("operator: 2 replicas with leader election by default; no election only with 1 replica")
def _():
    c = pod_spec(deployment(RENDERED["default"], "operator"))
    expect(deployment(RENDERED["default"], "operator")["spec"]["replicas"] == 2, "replicas")
    expect("--no-leader-election" not in c["containers"][0]["args"], "leader election off by default")
    env = {e["name"]: e for e in c["containers"][0]["env"]}
    expect(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "identity from POD_NAME")
    args = c["containers"][0]["args"]
    for flag in ("--lease-duration-seconds=10", "--lease-retry-seconds=2", "--forget-replicas-after-seconds=300"):
        expect(flag in args, f"{flag} not in {args}")
    short = pod_spec(deployment(objects(render({"operator": {"leaseDurationSeconds": 4, "leaseRetrySeconds": 1}})), "operator"))
    expect("--lease-duration-seconds=4" in short["containers"][0]["args"], "leaseDurationSeconds passed")
    single = pod_spec(deployment(RENDERED["single-operator"], "operator"))["containers"][0]
    expect("--no-leader-election" in single["args"], "single replica without election")
    expect(not any(a.startswith("--lease-") for a in single["args"]), "no lease flags without election")
    try:
        render({"operator": {"leaseDurationSeconds": 4, "leaseRetrySeconds": 4}})
        raise AssertionError("a lease renewed no more often than it lasts rendered")
    except helm.HelmError as e:
        retry = reason(e)
    try:
        render({"operator": {"replicas": 2, "leaderElection": False}})
    except helm.HelmError as e:
        return f"2 replicas without election refused: {reason(e)}; retry >= duration refused: {retry}"
    raise AssertionError("two replicas without leader election rendered")


# ---- webhook ---------------------------------------------------------------------------------
CRD_KINDS = {}
for p in sorted((ROOT / "crds" / "manifests").glob("*.yaml")):
    crd = yaml.safe_load(p.read_text())
    CRD_KINDS[crd["spec"]["names"]["plural"]] = (crd["spec"]["group"], [v["name"] for v in crd["spec"]["versions"]])


@check("ValidatingWebhookConfiguration: the four kinds, the operator's Service on 443, failurePolicy from values, operator flags agree")
def _():
    seen = {}
    for case, objs in RENDERED.items():
        v = values_for(CASES[case])
        vwcs = by_kind(objs, "ValidatingWebhookConfiguration")
        op = pod_spec(deployment(objs, "operator"))["containers"][0]
        a = args_of(op)
        if not v["webhook"]["enabled"]:
            expect(not vwcs and "--webhook-listen" not in a, f"[{case}] webhook rendered while disabled")
            continue
        vwc = vwcs[0]
        expect(vwc["metadata"]["name"] == "portcullis-validation", "name fixed by operator/src/webhook.rs")
        (hook,) = vwc["webhooks"]
        expect(hook["failurePolicy"] == v["webhook"]["failurePolicy"], f"[{case}] failurePolicy")
        expect(hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"], f"[{case}] hook fields")
        (rule,) = hook["rules"]
        expect(sorted(rule["resources"]) == sorted(CRD_KINDS), f"[{case}] resources {rule['resources']} vs CRDs")
        groups = {g for g, _ in CRD_KINDS.values()}
        versions = {x for _, vs in CRD_KINDS.values() for x in vs}
        expect(set(rule["apiGroups"]) == groups and set(rule["apiVersions"]) == versions, f"[{case}] group/version")
        svc_ref = hook["clientConfig"]["service"]
        svc = one(objs, "Service", svc_ref["name"])
        expect(svc_ref["namespace"] == NS and svc_ref["path"] == "/validate", f"[{case}] service ref")
        port = [p for p in svc["spec"]["ports"] if p["port"] == svc_ref["port"]]
        expect(port and port[0]["targetPort"] == "webhook", f"[{case}] Service port 443 -> webhook")
        expect(a["--webhook-listen"] == [f"0.0.0.0:{v['webhook']['port']}"], f"[{case}] --webhook-listen")
        expect(f"{svc_ref['name']}.{NS}.svc" in a["--webhook-host"], f"[{case}] certificate host names {a['--webhook-host']}")
        if v["webhook"]["certManager"]["enabled"]:
            cert = one(objs, "Certificate")
            expect(cert["spec"]["secretName"] == "portcullis-webhook-cert", "operator reads this Secret")
            expect(f"{svc_ref['name']}.{NS}.svc" in cert["spec"]["dnsNames"], "dnsNames")
            ann = vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            expect(ann == f"{NS}/{cert['metadata']['name']}", f"inject-ca-from {ann}")
            expect("--webhook-service" not in a, f"[{case}] operator registers over cert-manager's caBundle")
            mounts = [vol for vol in pod_spec(deployment(objs, "operator"))["volumes"]
                      if vol.get("secret", {}).get("secretName") == "portcullis-webhook-cert"]
            expect(mounts, f"[{case}] operator does not wait for cert-manager's Secret")
            issuer = cert["spec"]["issuerRef"]
            if v["webhook"]["certManager"]["issuerRef"]:
                expect(not by_kind(objs, "Issuer") and issuer["kind"] == "ClusterIssuer", f"[{case}] issuer")
            else:
                expect(one(objs, "Issuer")["metadata"]["name"] == issuer["name"], f"[{case}] self-signed issuer")
            mode = "cert-manager"
        else:
            expect(a["--webhook-service"] == [f"{NS}/{svc_ref['name']}:{svc_ref['port']}"], f"[{case}] --webhook-service")
            closed = "--webhook-fail-closed" in op["args"]
            expect(closed == (v["webhook"]["failurePolicy"] == "Fail"), f"[{case}] --webhook-fail-closed vs failurePolicy")
            expect(not by_kind(objs, "Certificate"), f"[{case}] Certificate without cert-manager")
            mode = "operator-generated"
        seen[case] = f"{mode}/{hook['failurePolicy']}"
    return ", ".join(f"{k}: {x}" for k, x in seen.items())


# ---- RBAC ------------------------------------------------------------------------------------
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}
DANGEROUS = {"escalate", "bind", "impersonate", "*"}


def bound_rules(objs, sa_name):
    """(kind of role, namespace or None, rules) for every role bound to the ServiceAccount."""
    out = []
    for b in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name and s["namespace"] == NS
                   for s in b.get("subjects", [])):
            continue
        ref = b["roleRef"]
        role = one(objs, ref["kind"], ref["name"])
        ns = b["metadata"].get("namespace")
        expect(ns is None or role["metadata"].get("namespace") == ns, "binding and Role namespaces differ")
        out.append((b["kind"], ns, role["rules"]))
    return out


def sa_name(objs, component):
    return pod_spec(deployment(objs, component))["serviceAccountName"]


def rule_set(rules):
    return {(g, r, v) for x in rules for g in x["apiGroups"] for r in x["resources"] for v in x["verbs"]}


# What the proxy may read cluster-wide: Services and their endpoints, so that `service:`
# targets balance over pods (proxy/src/cluster/endpoints.rs); nothing else, never Secrets.
PROXY_ENDPOINT_RULES = {("", "services", "list"), ("", "services", "watch"), ("", "endpoints", "list"),
                        ("", "endpoints", "watch"), ("discovery.k8s.io", "endpointslices", "list"),
                        ("discovery.k8s.io", "endpointslices", "watch")}


@check("RBAC, proxy: a namespaced Role (no Secrets outside its namespace), no Portcullis kinds, no write verbs but its Lease; cluster-wide only list/watch of Services and endpoints")
def _():
    for case, objs in RENDERED.items():
        bound = bound_rules(objs, sa_name(objs, "proxy"))
        expect(bound, f"[{case}] proxy has no RBAC")
        endpoints_off = values_for(CASES[case])["proxy"]["endpointsSource"] == "off"
        for kind, ns, rules in bound:
            if kind == "ClusterRoleBinding":
                expect(not endpoints_off, f"[{case}] proxy ClusterRole with endpointsSource off")
                expect(rule_set(rules) == PROXY_ENDPOINT_RULES, f"[{case}] proxy cluster-wide {rule_set(rules)}")
                continue
            expect(kind == "RoleBinding" and ns == NS, f"[{case}] proxy bound by {kind} in {ns}")
            for r in rules:
                expect("portcullis.dev" not in r["apiGroups"], f"[{case}] proxy rule on the CRDs: {r}")
                expect("*" not in r["verbs"] + r["resources"] + r["apiGroups"], f"[{case}] wildcard {r}")
                if set(r["verbs"]) & WRITE_VERBS:
                    expect(r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"],
                           f"[{case}] proxy writes {r['resources']}")
                if "secrets" in r["resources"]:
                    expect(set(r["verbs"]) <= {"get", "list", "watch"}, f"[{case}] proxy secret verbs {r['verbs']}")
    (_, _, rules), = [b for b in bound_rules(RENDERED["default"], sa_name(RENDERED["default"], "proxy"))
                      if b[0] == "RoleBinding"]
    return "; ".join(f"{','.join(r['resources'])}: {','.join(r['verbs'])}" for r in rules)


@check("RBAC, operator: read-only on the four kinds, get/patch on their status, Secrets read cluster-wide and written only in its namespace, its own webhook configuration by name")
def _():
    for case, objs in RENDERED.items():
        v = values_for(CASES[case])
        bound = bound_rules(objs, sa_name(objs, "operator"))
        cluster = [r for kind, _, rules in bound if kind == "ClusterRoleBinding" for r in rules]
        local = [r for kind, ns, rules in bound if kind == "RoleBinding" for r in rules]
        expect(all(ns == NS for kind, ns, _ in bound if kind == "RoleBinding"), f"[{case}] Role outside {NS}")
        for r in cluster + local:
            expect(not set(r["verbs"]) & DANGEROUS, f"[{case}] {r}")
            expect("*" not in r["resources"] + r["apiGroups"], f"[{case}] wildcard {r}")
            expect(not {"pods/exec", "roles", "clusterroles", "rolebindings", "clusterrolebindings", "nodes"} & set(r["resources"]),
                   f"[{case}] {r}")
        for r in cluster:
            res = set(r["resources"])
            if r["apiGroups"] == ["portcullis.dev"]:
                if all(x.endswith("/status") for x in res):
                    expect(res == {f"{k}/status" for k in CRD_KINDS} and set(r["verbs"]) == {"get", "patch"}, f"[{case}] {r}")
                else:
                    expect(res == set(CRD_KINDS) and set(r["verbs"]) == {"get", "list", "watch"}, f"[{case}] {r}")
            elif res == {"secrets"}:
                expect(set(r["verbs"]) == {"get", "list", "watch"}, f"[{case}] cluster-wide secret verbs {r['verbs']}")
            elif res == {"events"}:
                expect(set(r["verbs"]) == {"create", "patch"}, f"[{case}] {r}")
            elif r["apiGroups"] == ["networking.k8s.io"]:
                expect((res, set(r["verbs"])) in [({"ingresses", "ingressclasses"}, {"get", "list", "watch"}),
                                                  ({"ingresses/status"}, {"get", "patch"})], f"[{case}] {r}")
            elif r["apiGroups"] == ["gateway.networking.k8s.io"]:
                read = {"gatewayclasses", "gateways", "httproutes", "referencegrants"}
                status = {"gatewayclasses/status", "gateways/status", "httproutes/status"}
                expect((res, set(r["verbs"])) in [(read, {"get", "list", "watch"}), (status, {"get", "patch"})],
                       f"[{case}] {r}")
            elif res == {"validatingwebhookconfigurations"}:
                expect(r.get("resourceNames") == ["portcullis-validation"] and set(r["verbs"]) == {"get", "patch"},
                       f"[{case}] webhook configuration rule {r}")
            else:
                raise AssertionError(f"[{case}] unexpected cluster-wide rule {r}")
        has_vwc = any("validatingwebhookconfigurations" in r["resources"] for r in cluster)
        expect(has_vwc == (v["webhook"]["enabled"] and not v["webhook"]["certManager"]["enabled"]),
               f"[{case}] webhook configuration access only when the operator patches its caBundle")
        for r in local:
            if r["resources"] == ["services"]:
                # Only the proxy Service's address, for Ingress and Gateway status.
                expect(set(r["verbs"]) == {"get"} and len(r.get("resourceNames", [])) == 1, f"[{case}] {r}")
                continue
            expect(set(r["resources"]) <= {"configmaps", "secrets", "leases"}, f"[{case}] namespaced {r}")
        writes = {x for r in local if set(r["verbs"]) & WRITE_VERBS for x in r["resources"]}
        expect(writes == {"configmaps", "secrets", "leases"}, f"[{case}] namespaced writes {writes}")
    bound = bound_rules(RENDERED["default"], sa_name(RENDERED["default"], "operator"))
    return f"{sum(len(r) for _, _, r in bound)} rules in 1 ClusterRole + 1 Role"


def named_rule_set(rules):
    """rule_set with the resourceNames of each grant ("*" for any name)."""
    return {(g, r, v, n) for x in rules for g in x["apiGroups"] for r in x["resources"] for v in x["verbs"]
            for n in x.get("resourceNames", ["*"])}


def key_secret_name():
    """The config signing key Secret, from compiler/src/delivery.rs (KEY_SECRET_NAME)."""
    src = (ROOT / "compiler" / "src" / "delivery.rs").read_text()
    return src.split('pub const KEY_SECRET_NAME: &str = "', 1)[1].split('"', 1)[0]


def shard_names():
    """Names of the config objects, from compiler/src/delivery.rs (OBJECT_NAME, MAX_SHARDS)."""
    src = (ROOT / "compiler" / "src" / "delivery.rs").read_text()
    base = src.split('pub const OBJECT_NAME: &str = "', 1)[1].split('"', 1)[0]
    count = int(src.split("pub const MAX_SHARDS: usize = ", 1)[1].split(";", 1)[0])
    return [base] + [f"{base}-{i}" for i in range(1, count)]


@check("RBAC, proxy: the Role equals the one proxy/src/cluster/mod.rs documents (and proxy/tests/kube_mode.rs runs with)")
def _():
    src = (ROOT / "proxy" / "src" / "cluster" / "mod.rs").read_text()
    block = src.split("//! ```yaml", 1)[1].split("//! ```", 1)[0]
    documented = yaml.safe_load("\n".join(l[4:] if l.startswith("//! ") else l[3:] for l in block.splitlines()))
    objs = RENDERED["default"]
    ((_, _, rules),) = [b for b in bound_rules(objs, sa_name(objs, "proxy")) if b[0] == "RoleBinding"]
    expect(named_rule_set(rules) == named_rule_set(documented["rules"]),
           f"chart {sorted(named_rule_set(rules) ^ named_rule_set(documented['rules']))} differ from the documented Role")
    for r in rules:
        if {"configmaps", "secrets"} & set(r["resources"]):
            expect(r.get("resourceNames") in (shard_names(), [key_secret_name()]),
                   f"proxy reads {r['resources']} beyond the config shards: {r.get('resourceNames', 'any name')}")
    return f"{len(rule_set(rules))} (group, resource, verb) grants; Secrets and ConfigMaps only by name ({len(shard_names())} shard names and the signing key)"


@check("RBAC, operator: no grant beyond e2e/manifests/rbac.yaml (the RBAC the e2e tests run the operator with)")
def _():
    e2e = [d for d in yaml.safe_load_all((ROOT / "e2e" / "manifests" / "rbac.yaml").read_text()) if d]
    e2e_cluster = rule_set(one(e2e, "ClusterRole", "portcullis-operator")["rules"])
    e2e_local = rule_set(one(e2e, "Role", "portcullis-operator")["rules"])
    objs = RENDERED["default"]
    bound = bound_rules(objs, sa_name(objs, "operator"))
    cluster = rule_set([r for kind, _, rules in bound if kind == "ClusterRoleBinding" for r in rules])
    local = rule_set([r for kind, _, rules in bound if kind == "RoleBinding" for r in rules])
    expect(cluster <= e2e_cluster, f"beyond e2e: {sorted(cluster - e2e_cluster)}")
    expect(local <= e2e_local, f"beyond e2e: {sorted(local - e2e_local)}")
    dropped = sorted(f"{r}:{v}" for g, r, v in (e2e_cluster - cluster) | (e2e_local - local))
    return "narrower than e2e by " + ", ".join(dropped) + " (unused by the code; the webhook rule is also limited by name)"


@check("Gateway API CRDs: the files of gateway-api/ unchanged (v1.6.1, with their LICENSE), rendered only with gatewayApi.installCRDs")
def _():
    folder = ROOT / "charts" / "portcullis" / "gateway-api"
    shipped = {yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
               for p in sorted(folder.glob("*.yaml"))}
    expect((folder / "LICENSE").read_text().startswith("\n                                 Apache License")
           or "Apache License" in (folder / "LICENSE").read_text(), "gateway-api/LICENSE")
    expect(set(shipped) == {f"{k}.gateway.networking.k8s.io" for k in
                            ["gatewayclasses", "gateways", "httproutes", "referencegrants"]}, f"{sorted(shipped)}")
    for crd in shipped.values():
        expect(crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == "v1.6.1", "version")
    for case, objs in RENDERED.items():
        rendered = {o["metadata"]["name"]: o for o in objs if upstream_crd(o)}
        wanted = values_for(CASES[case])["gatewayApi"]["installCRDs"]
        expect(bool(rendered) == wanted, f"[{case}] CRDs rendered: {sorted(rendered)}")
        if wanted:
            plain = {n: {k: v for k, v in o.items() if k != "__source"} for n, o in rendered.items()}
            differ = sorted(n for n in shipped if plain.get(n) != shipped[n])
            expect(not differ, f"[{case}] rendered CRDs differ from gateway-api/: {differ}")
    return f"{len(shipped)} CRDs"


@check("RBAC, tenants: the chart's portcullis-tenant ClusterRole equals the one the e2e tenancy tests bind tenants to")
def _():
    e2e = [d for d in yaml.safe_load_all((ROOT / "e2e" / "manifests" / "rbac.yaml").read_text()) if d]
    e2e_rules = rule_set(one(e2e, "ClusterRole", "portcullis-tenant")["rules"])
    role = one(RENDERED["default"], "ClusterRole", "portcullis-tenant")
    chart_rules = rule_set(role["rules"])
    expect(chart_rules == e2e_rules, f"chart {sorted(chart_rules ^ e2e_rules)} differ from e2e")
    for _, resource, verb in chart_rules:
        expect(not resource.endswith("/status") or verb in {"get", "list", "watch"}, f"tenants write status: {resource}")
        expect(resource not in {"configmaps", "leases", "roles", "rolebindings"}, f"tenant grant {resource}")
    bindings = [b for b in by_kind(RENDERED["all-on"], "RoleBinding") if b["roleRef"]["name"] == "portcullis-tenant"]
    expect(len(bindings) == 1 and bindings[0]["metadata"]["namespace"] == "team-a", f"tenant bindings {bindings}")
    return f"{len(chart_rules)} (group, resource, verb) grants, bound per namespace"


# ---- optional parts ----------------------------------------------------------------------------
@check("IngressClass portcullis (controller portcullis.dev/ingress-controller), on by default, optional")
def _():
    ic = one(RENDERED["default"], "IngressClass")
    expect(ic["metadata"]["name"] == "portcullis" and ic["spec"]["controller"] == "portcullis.dev/ingress-controller", f"{ic}")
    expect(not by_kind(RENDERED["fixed-replicas-nodeport"], "IngressClass"), "ingressClass.enabled: false still renders it")
    ann = one(RENDERED["all-on"], "IngressClass")["metadata"].get("annotations", {})
    expect(ann.get("ingressclass.kubernetes.io/is-default-class") == "true", "default class annotation")


@check("optional parts off by default and rendered when on: NetworkPolicy, ServiceMonitor, PrometheusRule, Redis")
def _():
    d, a = RENDERED["default"], RENDERED["all-on"]
    for kind in ["NetworkPolicy", "ServiceMonitor", "PrometheusRule", "Certificate", "Issuer"]:
        expect(not by_kind(d, kind), f"{kind} rendered by default")
        expect(by_kind(a, kind), f"{kind} missing with all options on")
    expect(len(by_kind(d, "Deployment")) == 2 and len(by_kind(a, "Deployment")) == 3, "Redis Deployment")
    sm = one(a, "ServiceMonitor")
    sel = sm["spec"]["selector"]["matchLabels"]
    scraped = [s for s in by_kind(a, "Service") if all(s["metadata"]["labels"].get(k) == x for k, x in sel.items())]
    expect(sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped) == ["operator", "proxy"], f"{scraped}")
    expect(all(any(p["name"] == sm["spec"]["endpoints"][0]["port"] for p in s["spec"]["ports"]) for s in scraped), "scrape port")
    # The traffic Service never exposes the admin port.
    proxy_svc = one(a, "Service", deployment(a, "proxy")["metadata"]["name"])
    expect(all(p["name"] != "admin" for p in proxy_svc["spec"]["ports"]), "admin port on the traffic Service")
    pols = {p["metadata"]["name"]: p for p in by_kind(a, "NetworkPolicy")}
    expect(len(pols) == 3, f"{list(pols)}")
    return f"NetworkPolicies {sorted(pols)}"


@check("Redis: bundled (URL in NOTES) or external URL; both at once refused")
def _():
    notes = render(ALL_ON)["portcullis/templates/NOTES.txt"]
    expect(f"redis://portcullis-redis.{NS}.svc:6379" in notes, "bundled URL not in NOTES")
    notes = render(CASES["external-redis"])["portcullis/templates/NOTES.txt"]
    expect("redis://redis.shared.svc:6379/2" in notes, "external URL not in NOTES")
    expect(not [d for d in by_kind(RENDERED["external-redis"], "Deployment")
                if d["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"], "Redis deployed with an external URL")
    try:
        render({"redis": {"enabled": True, "externalUrl": "redis://x:6379"}})
    except helm.HelmError as e:
        return f"both refused: {reason(e)}"
    raise AssertionError("bundled and external Redis together rendered")


@check("NOTES.txt tells how to see enforcement (kubectl get apiroutes)")
def _():
    notes = render(None)["portcullis/templates/NOTES.txt"]
    expect("kubectl get apiroutes" in notes, notes)


@check("Dockerfile (not built here: no container engine): multi-stage, both binaries where the chart runs them, the chart's non-root user")
def _():
    text = (ROOT / "Dockerfile").read_text()
    stages = [l for l in text.splitlines() if l.startswith("FROM ")]
    expect(len(stages) == 2 and " AS build" in stages[0], f"stages {stages}")
    expect("cargo build --release --locked" in text, "cargo build --release")
    commands = {c["command"][0] for o in by_kind(RENDERED["default"], "Deployment") for c in pod_spec(o)["containers"]}
    expect(commands == {"/usr/local/bin/portcullis-operator", "/usr/local/bin/portcullis-proxy"}, f"{commands}")
    expect("COPY --from=build /out/ /usr/local/bin/" in text, "binaries not copied to /usr/local/bin")
    user = [l.split()[1] for l in text.splitlines() if l.startswith("USER ")][-1]
    uid = pod_spec(deployment(RENDERED["default"], "proxy"))["securityContext"]["runAsUser"]
    expect(user.split(":")[0] == str(uid) != "0", f"USER {user} vs runAsUser {uid}")


@check("docs/install.md explains every value of values.yaml in its table")
def _():
    doc = (ROOT / "docs" / "install.md").read_text()
    whole = {"podSecurityContext", "containerSecurityContext"}

    def leaves(d, prefix=""):
        for k, x in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(x, dict) and x and key not in whole and not key.endswith("resources"):
                yield from leaves(x, key)
            else:
                yield key
    keys = list(leaves(DEFAULTS))
    missing = [k for k in keys if f"| `{k}` |" not in doc]
    expect(not missing, f"not in the values table: {missing}")
    # the status line points at the real-node suite and says what it does not prove
    expect("## Proven on a real node" in doc and "e2e/node/chart-test.sh" in doc and "## Not yet proven" in doc,
           "status: docs/install.md must say what the node suite proves and what it does not")
    return f"{len(keys)} values"


# ---- values.schema.json ----------------------------------------------------------------------
BAD_VALUES = [
    ({"proxy": {"replicas": -1}}, "/proxy/replicas"),
    ({"operator": {"replicas": 0}}, "/operator/replicas"),
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
    ({"proxy": {"service": {"type": "Ingress"}}}, "/proxy/service/type"),
    ({"proxy": {"replicaCount": 3}}, "replicaCount"),
    ({"proxy": {"adminPort": 70000}}, "/proxy/adminPort"),
    ({"redis": {"externalUrl": "http://redis:6379"}}, "/redis/externalUrl"),
]


@check("values.schema.json refuses bad values: the render fails and names the key")
def _():
    shown = None
    for vals, key in BAD_VALUES:
        try:
            render(vals)
        except helm.HelmValuesError as e:
            expect(key in str(e), f"{vals}: error does not name {key}: {e}")
            if shown is None:
                shown = " ".join(str(e).split())
            continue
        raise AssertionError(f"{vals} rendered")
    for vals, _ in BAD_VALUES[:1]:
        report = helm.lint(CHART, vals, strict=True, namespace=NS)
        expect(report["errors"], "lint accepted a negative replica count")
    return f"{len(BAD_VALUES)} bad values refused; e.g. proxy.replicas=-1 -> {shown}"


# ---- alert rules ---------------------------------------------------------------------------------
ALERTS = {"HighErrorRate", "HighLatency", "RateLimitExceeded", "AuthenticationFailures"}
METRICS = {"api_requests_total", "api_request_duration_seconds_bucket", "api_rate_limit_exceeded_total", "api_auth_failures_total"}


def extract_rules(objs, directory: Path) -> Path:
    rule = one(objs, "PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


@check("PrometheusRule: the four alerts, on the proxy's metric names and labels (proxy/src/metrics.rs)")
def _():
    rule = one(RENDERED["all-on"], "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    expect(set(alerts) == ALERTS, f"{sorted(alerts)}")
    used = {m for e in alerts.values() for m in METRICS if m in e}
    expect(used == METRICS, f"metric names used: {used}")
    src = (ROOT / "proxy" / "src" / "metrics.rs").read_text()
    for name in ["api_requests", "api_request_duration_seconds", "api_rate_limit_exceeded", "api_auth_failures"]:
        expect(f'"{name}"' in src, f"{name} not registered in proxy/src/metrics.rs")
    for label in ["route", "method", "status_class", "policy", "reason"]:
        expect(f"pub {label}: String" in src, f"label {label} not in proxy/src/metrics.rs")
    expect('"5xx"' in src, "status_class value 5xx")


WORK = Path(tempfile.mkdtemp(prefix="portcullis-rules-"))


@check("promtool check rules (rules extracted from the rendered PrometheusRule)")
def _():
    path = extract_rules(RENDERED["all-on"], WORK)
    r = promtool("check", "rules", str(path))
    expect(r.returncode == 0, r.stdout + r.stderr)
    return " ".join((r.stdout + r.stderr).split())


@check("promtool test rules charts/portcullis/tests/alerts-test.yaml: each alert fires on its series, silent otherwise")
def _():
    shutil.copy(CHART / "tests" / "alerts-test.yaml", WORK / "alerts-test.yaml")
    r = promtool("test", "rules", "alerts-test.yaml", cwd=WORK)
    expect(r.returncode == 0, r.stdout + r.stderr)
    return " ".join((r.stdout + r.stderr).split())


@check("the rules test can fail: with every threshold raised 10x, promtool test rules fails")
def _():
    mutated = deep_merge(ALL_ON, {"metrics": {"prometheusRule": {
        "errorRateThreshold": 0.5, "latencyP99Seconds": 10, "rateLimitedPerSecond": 200, "authFailuresPerSecond": 100}}})
    d = Path(tempfile.mkdtemp(prefix="portcullis-rules-mutant-"))
    extract_rules(objects(render(mutated)), d)
    shutil.copy(CHART / "tests" / "alerts-test.yaml", d / "alerts-test.yaml")
    r = promtool("test", "rules", "alerts-test.yaml", cwd=d)
    shutil.rmtree(d, ignore_errors=True)
    expect(r.returncode != 0, "the test passed against rules that cannot fire")
    unmet = sorted({line.split("alertname:")[1].split(",")[0].strip()
                    for line in (r.stdout + r.stderr).splitlines() if "alertname:" in line})
    expect(set(unmet) == ALERTS, f"only {unmet} noticed the raised thresholds")
    return f"fails as it should, for {', '.join(unmet)}"


@check("files/alerts.rules.yaml as shipped: promtool check rules and the same unit test (its thresholds are the chart defaults)")
def _():
    d = Path(tempfile.mkdtemp(prefix="portcullis-rules-file-"))
    shutil.copy(CHART / "files" / "alerts.rules.yaml", d / "rules.yaml")
    shutil.copy(CHART / "tests" / "alerts-test.yaml", d / "alerts-test.yaml")
    checked = promtool("check", "rules", "rules.yaml", cwd=d)
    tested = promtool("test", "rules", "alerts-test.yaml", cwd=d)
    shutil.rmtree(d, ignore_errors=True)
    expect(checked.returncode == 0, checked.stdout + checked.stderr)
    expect(tested.returncode == 0, tested.stdout + tested.stderr)
    rendered = {r["alert"]: r["expr"] for g in one(RENDERED["all-on"], "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    shipped = {r["alert"]: r["expr"] for g in yaml.safe_load((CHART / "files" / "alerts.rules.yaml").read_text())["groups"] for r in g["rules"]}
    expect(rendered == shipped, "the PrometheusRule with default thresholds differs from files/alerts.rules.yaml")
    return "the rendered PrometheusRule equals the file at default thresholds"


@check("Grafana dashboard ConfigMap: files/grafana-dashboard.json verbatim, with the sidecar label")
def _():
    cms = [o for o in RENDERED["all-on"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    expect(len(cms) == 1, f"{len(cms)} dashboard ConfigMaps")
    cm = cms[0]
    expect(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"labels {cm['metadata']['labels']}")
    shipped = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    expect(json.loads(cm["data"]["portcullis.json"]) == shipped, "ConfigMap content differs from the file")
    default = [o for o in RENDERED["default"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    expect(not default, "dashboard ConfigMap rendered with default values")
    return f"{len(shipped['panels'])} panels"


shutil.rmtree(WORK, ignore_errors=True)
print(f"chart: {len(PASSED)} passed, {len(FAILED)} failed")
sys.exit(1 if FAILED else 0)
