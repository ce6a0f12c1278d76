#!/usr/bin/env python3
"""The Helm chart on a real single-node Kubernetes (run by e2e/node/chart-test.sh inside
e2e/node/run.sh, which provides the node and its environment).

Each step depends on the ones before (one release, installed once), so the first failure stops
the run: it prints what it expected and saw, then the cluster's state and the Portcullis pods'
logs. Helm is driven through helm-python-sdk (Helm v4's Go SDK); everything else through
kubectl, and requests go through the proxy Service's ClusterIP (kube-proxy's iptables rules)
from this host, which is the node.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import helm_python as helm
import yaml

NS = "portcullis-system"
RELEASE = "portcullis"
APP_NS = "shop"
KEY = "node-test-key-0123456789"
CHART = Path(os.environ["PORTCULLIS_CHART"])
IMAGE_VALUES = {
    "image": {
        "repository": os.environ["PORTCULLIS_IMAGE_REPOSITORY"],
        "tag": os.environ["PORTCULLIS_IMAGE_TAG"],
        # Imported into the node's containerd: nothing is ever pulled.
        "pullPolicy": "Never",
    }
}
BUSYBOX = os.environ["PORTCULLIS_BUSYBOX_IMAGE"]
CTR = os.environ["PORTCULLIS_NODE_CTR"].split()
T0 = time.monotonic()


class Failed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def expect(cond, message: str) -> None:
    if not cond:
        raise Failed(message)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise Failed(f"kubectl {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
    return out


def kget(*args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def apply(manifest: str) -> subprocess.CompletedProcess:
    return kubectl("apply", "-f", "-", input=manifest, check=False)


def wait_for(what: str, timeout: float, fn, interval: float = 0.25):
    """Polls fn until it returns something truthy; fails with the last value or error."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except (Failed, OSError, http.client.HTTPException, KeyError, IndexError, TypeError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(interval)


def condition(obj: dict, kind: str) -> dict:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return c
    return {}


def programmed(kind: str, ns: str, name: str, status: str = "True", proxies: str | None = None):
    def check():
        obj = kget(kind, "-n", ns, name)
        c = condition(obj, "Programmed")
        ok = c.get("status") == status and c.get("observedGeneration") == obj["metadata"]["generation"]
        if proxies is not None:
            ok = ok and obj.get("status", {}).get("proxies", {}).get("summary") == proxies
        return obj if ok else None
    return check


def proxies_column(name: str) -> str:
    out = kubectl("get", "apiroutes", "-n", APP_NS, name, "--no-headers",
                  "-o", "custom-columns=PROXIES:.status.proxies.summary").stdout.strip()
    return out


def get_columns(kind: str, ns: str) -> list[dict]:
    """`kubectl get KIND` as the user sees it: header names to cell values."""
    lines = kubectl("get", kind, "-n", ns).stdout.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, starts[1:] + [len(line)])]
        rows.append(dict(zip(names, cells)))
    return rows


def service_ip(ns: str, name: str) -> str:
    return kget("service", "-n", ns, name)["spec"]["clusterIP"]


def request(ip: str, path: str, key: str | None = None, port: int = 80, timeout: float = 5) -> tuple[int, bytes]:
    """One request on a fresh connection (through kube-proxy's DNAT, like a new client)."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        headers = {"Host": "api.example.com"}
        if key:
            headers["X-API-Key"] = key
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def pods(component: str) -> list[dict]:
    return kget("pods", "-n", NS, "-l", f"app.kubernetes.io/component={component}")["items"]


def ready(pod: dict) -> bool:
    return (pod["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])))


def helm_config() -> helm.Config:
    return helm.Config(kubeconfig_path=os.environ["KUBECONFIG"], namespace=NS)


STEPS: list = []


def step(name: str):
    def wrap(fn):
        STEPS.append((name, fn))
        return fn
    return wrap


# ----------------------------------------------------------------------------------------------
STATE: dict = {}

# Objects that are records, not things a release owns: they expire by themselves.
IGNORED_RESOURCES = {"events", "events.events.k8s.io"}


def inventory() -> set[tuple[str, str, str]]:
    """Every object of every listable kind: (resource, namespace, name)."""
    names = kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    out = set()
    for res in names:
        if res in IGNORED_RESOURCES:
            continue
        got = kubectl("get", res, "-A", "--ignore-not-found", "-o",
                      "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}", check=False)
        if got.returncode != 0:
            raise Failed(f"listing {res}: {got.stderr.strip()}")
        for line in got.stdout.splitlines():
            ns, _, name = line.partition("/")
            out.add((res, ns, name))
    return out


@step("inventory of the cluster before the install")
def _():
    kubectl("create", "namespace", NS)
    # the namespace's own default ServiceAccount (and its token) before the snapshot
    wait_for("the default ServiceAccount's token", 30,
             lambda: kget("serviceaccount", "-n", NS, "default").get("secrets"))
    STATE["before"] = inventory()
    return f"{len(STATE['before'])} objects"


@step("helm install (default values): operator 2/2 and proxies 2/2 Ready; CRDs, RBAC, webhook, Services accepted")
def _():
    with helm_config() as cfg:
        rel = cfg.install(CHART, RELEASE, IMAGE_VALUES, namespace=NS, wait="watcher", timeout=240)
    expect(rel["status"] == "deployed", f"release status {rel['status']}")
    STATE["manifest"] = [o for o in yaml.safe_load_all(rel["manifest"]) if o]
    for comp in ("operator", "proxy"):
        wait_for(f"2 Ready {comp} pods", 120, lambda: len([p for p in pods(comp) if ready(p)]) == 2)
    crds = {c["metadata"]["name"] for c in kget("crd")["items"]}
    expect({"apiroutes.portcullis.dev", "consumercredentials.portcullis.dev",
            "ratelimitpolicies.portcullis.dev", "wafpolicies.portcullis.dev"} <= crds, f"CRDs {crds}")
    for o in STATE["manifest"]:
        args = [o["kind"].lower(), o["metadata"]["name"]]
        if o["metadata"].get("namespace"):
            args += ["-n", o["metadata"]["namespace"]]
        kget(*args)  # every rendered object exists
    vwc = kget("validatingwebhookconfiguration", "portcullis-validation")
    expect(vwc["webhooks"][0].get("clientConfig", {}).get("caBundle"), "the operator did not patch the webhook's caBundle")
    kinds = sorted({o["kind"] for o in STATE["manifest"]})
    return f"{len(STATE['manifest'])} objects: {', '.join(kinds)}"


@step("pods run under the chart's ServiceAccounts with mounted tokens, non-root, read-only root filesystem")
def _():
    sa = {"operator": f"{RELEASE}-operator", "proxy": f"{RELEASE}-proxy"}
    for comp, name in sa.items():
        for p in pods(comp):
            spec = p["spec"]
            expect(spec["serviceAccountName"] == name, f"{p['metadata']['name']} runs as {spec['serviceAccountName']}")
            mounts = [m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])]
            expect("/var/run/secrets/kubernetes.io/serviceaccount" in mounts, f"no token mounted in {p['metadata']['name']}")
            # what the runtime really runs: the runc spec of each container
            for cs in p["status"]["containerStatuses"]:
                cid = cs["containerID"].split("://", 1)[1]
                info = json.loads(subprocess.run([*CTR, "containers", "info", cid], capture_output=True,
                                                 text=True, check=True).stdout)
                rt = info["Spec"]
                user = rt["process"]["user"]
                expect(user["uid"] == 65532 and user["gid"] == 65532, f"{p['metadata']['name']} runs as {user}")
                expect(rt["root"].get("readonly") is True, f"{p['metadata']['name']}: writable root filesystem")
                caps = rt["process"].get("capabilities", {})
                expect(not any(caps.get(k) for k in ("bounding", "effective", "permitted")), f"capabilities {caps}")
                expect(rt["linux"].get("seccomp"), f"{p['metadata']['name']}: no seccomp profile")
    # the API server saw those tokens: every pod's SA identity appears as the Lease holders/reporters
    holder = kget("lease", "-n", NS, "portcullis-operator")["spec"]["holderIdentity"]
    expect(holder in {p["metadata"]["name"] for p in pods("operator")}, f"leader {holder}")
    reports = [l["metadata"]["name"] for l in kget("lease", "-n", NS, "-l", "portcullis.dev/proxy-report=true")["items"]]
    expect(len(reports) == 2, f"proxy report Leases {reports}")
    return f"leader {holder}; reports {', '.join(sorted(reports))}"


UPSTREAM = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {APP_NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: orders, namespace: {APP_NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: orders}}}}
  template:
    metadata: {{labels: {{app: orders}}}}
    spec:
      containers:
      - name: httpd
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [/bin/sh, -c, "mkdir -p /tmp/www/orders && echo orders-v1 > /tmp/www/orders/index.html && exec httpd -f -p 8080 -h /tmp/www"]
        readinessProbe: {{httpGet: {{path: /orders/index.html, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: orders, namespace: {APP_NS}}}
spec:
  selector: {{app: orders}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def route(name: str, path: str, upstream_ip: str, extra: str = "") -> str:
    return f"""
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: {APP_NS}}}
spec:
  hosts: [api.example.com]
  paths: [{{type: Prefix, value: {path}}}]
  authentication:
    methods: [ApiKey]
    apiKey: {{header: X-API-Key}}
  upstream:
    targets: [{{url: "http://{upstream_ip}:80"}}]
{extra}"""


CONSUMER = f"""
apiVersion: v1
kind: Secret
metadata: {{name: mobile-app-keys, namespace: {APP_NS}}}
stringData: {{api-key: {KEY}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ConsumerCredential
metadata: {{name: mobile-app, namespace: {APP_NS}}}
spec:
  apiKeys:
    - secretRef: {{name: mobile-app-keys, key: api-key}}
"""


@step("ApiRoute + ConsumerCredential + Secret with kubectl -> Programmed, PROXIES 2/2; 401 without the key, 200 with it through the proxy Service's ClusterIP")
def _():
    out = apply(UPSTREAM)
    expect(out.returncode == 0, out.stderr)
    kubectl("rollout", "status", "-n", APP_NS, "deployment/orders", "--timeout=60s")
    STATE["upstream"] = service_ip(APP_NS, "orders")
    for manifest in (CONSUMER, route("orders", "/orders", STATE["upstream"])):
        out = apply(manifest)
        expect(out.returncode == 0, out.stderr)
    t = time.monotonic()
    wait_for("ApiRoute orders Programmed with 2/2 proxies", 60, programmed("apiroutes", APP_NS, "orders", proxies="2/2"))
    took = time.monotonic() - t
    row = [r for r in get_columns("apiroutes", APP_NS) if r["NAME"] == "orders"][0]
    expect(row["PROGRAMMED"] == "True" and row["PROXIES"] == "2/2" and row["ACCEPTED"] == "True",
           f"kubectl get apiroutes: {row}")
    wait_for("ConsumerCredential Programmed", 30, programmed("consumercredentials", APP_NS, "mobile-app"))
    ip = STATE["proxy_ip"] = service_ip(NS, f"{RELEASE}-proxy")
    status, body = wait_for("401 without the key", 20, lambda: (r := request(ip, "/orders/index.html")) and r[0] == 401 and r)
    expect(b"request_id" in body or b"requestId" in body, f"401 body without a request id: {body[:200]!r}")
    # every new connection may land on either replica: both enforce
    for _ in range(20):
        s, b = request(ip, "/orders/index.html")
        expect(s == 401, f"without the key: {s} {b[:100]!r}")
        s, b = request(ip, "/orders/index.html", KEY)
        expect(s == 200 and b == b"orders-v1\n", f"with the key: {s} {b[:100]!r}")
        s, _ = request(ip, "/orders/index.html", "wrong-key-0000000000")
        expect(s == 401, f"with a wrong key: {s}")
    return f"Programmed 2/2 after {took:.1f}s; {row}; ClusterIP {ip}: 20 x (401, 200, 401)"


@step("an invalid ApiRoute is refused by the webhook (called by the API server through its Service), naming the field")
def _():
    bad = route("broken", "/(", STATE["upstream"]).replace("type: Prefix", "type: Regex")
    out = apply(bad)
    expect(out.returncode != 0, f"kubectl apply of an invalid route succeeded: {out.stdout}")
    expect("admission webhook" in out.stderr and "validate.portcullis.dev" in out.stderr and "spec.paths[0].value" in out.stderr,
           f"refusal does not come from the webhook or name the field: {out.stderr}")
    expect(kubectl("get", "apiroute", "-n", APP_NS, "broken", check=False).returncode != 0, "the refused route was stored")
    return out.stderr.strip().splitlines()[-1][:200]


@step("webhook down (no operator replica; failurePolicy Ignore): the route is admitted, proxies keep serving; operator back: Accepted=False, the others keep working")
def _():
    kubectl("scale", "-n", NS, f"deployment/{RELEASE}-operator", "--replicas=0")
    wait_for("no operator pods", 60, lambda: not pods("operator"))
    ip = STATE["proxy_ip"]
    bad = route("broken", "/(", STATE["upstream"]).replace("type: Prefix", "type: Regex")
    out = apply(bad)
    expect(out.returncode == 0, f"with the webhook down (Ignore) the apply should pass: {out.stderr}")
    s, b = request(ip, "/orders/index.html", KEY)
    expect(s == 200, f"proxies stopped serving without the operator: {s} {b[:100]!r}")
    kubectl("scale", "-n", NS, f"deployment/{RELEASE}-operator", "--replicas=2")
    obj = wait_for("broken Accepted=False", 90,
                   lambda: (o := kget("apiroutes", "-n", APP_NS, "broken")) and condition(o, "Accepted").get("status") == "False" and o)
    c = condition(obj, "Accepted")
    expect(c.get("reason") == "Invalid" and "spec.paths[0].value" in c.get("message", ""), f"Accepted condition {c}")
    wait_for("orders still Programmed 2/2", 60, programmed("apiroutes", APP_NS, "orders", proxies="2/2"))
    for _ in range(10):
        s, _ = request(ip, "/orders/index.html", KEY)
        expect(s == 200, f"orders after the invalid route: {s}")
    kubectl("delete", "apiroute", "-n", APP_NS, "broken")
    wait_for("2 Ready operator pods", 90, lambda: len([p for p in pods("operator") if ready(p)]) == 2)
    return f"Accepted=False: {c['message'][:120]}"


class Load:
    """Steady requests on new connections until stopped. `send()` returns (good, what): the
    answer's text when good, why not otherwise. Good answers are kept with the time they were
    sent, failures with the time and the reason."""

    def __init__(self, send, workers: int = 2, pause: float = 0.02):
        self.send, self.pause = send, pause
        self.answers: list[tuple[float, str]] = []
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(workers)]

    @property
    def ok(self) -> int:
        return len(self.answers)

    def run(self):
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                good, what = self.send()
            except Exception as e:  # noqa: BLE001 - every failure counts
                good, what = False, f"{type(e).__name__}: {e}"
            with self.lock:
                if good:
                    self.answers.append((sent, what))
                else:
                    self.failed.append(f"{sent - T0:.1f}s {what}")
            time.sleep(self.pause)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def orders_v1(ip: str):
    """The keyed route of the chart's steps: good is 200 with the v1 page."""
    s, b = request(ip, "/orders/index.html", KEY, timeout=10)
    return s == 200 and b == b"orders-v1\n", f"{s} {b[:80]!r}"


@step("helm upgrade changing a proxy setting under a steady request stream through the Service: 0 failed requests across the rolling update")
def _():
    before = {p["metadata"]["name"] for p in pods("proxy")}
    values = {**IMAGE_VALUES, "proxy": {"maxInFlight": 5000}}
    with Load(lambda: orders_v1(STATE["proxy_ip"])) as load:
        time.sleep(3)
        with helm_config() as cfg:
            rel = cfg.upgrade(CHART, RELEASE, values, namespace=NS, wait="watcher", timeout=300)
        expect(rel["status"] == "deployed", f"upgrade status {rel['status']}")
        kubectl("rollout", "status", "-n", NS, f"deployment/{RELEASE}-proxy", "--timeout=180s")
        # the old pods drain after they left the endpoints: keep the stream until they are gone
        wait_for("the old proxy pods gone", 120, lambda: not (before & {p["metadata"]["name"] for p in pods("proxy")}))
        time.sleep(3)
    after = pods("proxy")
    expect(all("--max-in-flight=5000" in p["spec"]["containers"][0]["args"] for p in after), "new pods without the setting")
    expect(len(after) == 2 and all(ready(p) for p in after), f"{len(after)} proxy pods after the upgrade")
    expect(not load.failed, f"{len(load.failed)} failed of {load.ok + len(load.failed)}: {load.failed[:10]}")
    expect(load.ok > 200, f"only {load.ok} requests went through")
    wait_for("orders Programmed 2/2 on the new replicas", 60, programmed("apiroutes", APP_NS, "orders", proxies="2/2"))
    return f"{load.ok} requests, 0 failed; proxy pods {sorted(before)} -> {sorted(p['metadata']['name'] for p in after)}"


@step("delete the operator leader pod: another replica takes over, and a change applied meanwhile reaches Programmed")
def _():
    leader = kget("lease", "-n", NS, "portcullis-operator")["spec"]["holderIdentity"]
    others = {p["metadata"]["name"] for p in pods("operator")} - {leader}
    expect(len(others) == 1, f"operator pods besides the leader {leader}: {others}")
    t = time.monotonic()
    kubectl("delete", "pod", "-n", NS, leader, "--wait=false")
    changed = route("orders", "/orders", STATE["upstream"]).replace("[ApiKey]", "[ApiKey]\n    optional: false")
    changed = changed.replace("  upstream:", "  methods: [GET, HEAD]\n  upstream:")
    out = apply(changed)
    expect(out.returncode == 0, out.stderr)
    new_leader = wait_for("a new leader", 60, lambda: (h := kget("lease", "-n", NS, "portcullis-operator")["spec"].get("holderIdentity")) != leader and h)
    took_over = time.monotonic() - t
    # The released lease goes to whichever replica asks first: the standby (it retries every
    # 2 s) or the replacement the Deployment starts at once (it asks as soon as it has synced).
    role = "the standby" if new_leader in others else "the Deployment's replacement"
    # the old leader is gone for good (not merely stepping down), and the standby now acts
    wait_for("the old leader pod gone", 90, lambda: leader not in {p["metadata"]["name"] for p in pods("operator")})
    logs = kubectl("logs", "-n", NS, new_leader).stdout
    expect('"became leader"' in logs, f"{new_leader} never logged becoming leader")
    obj = wait_for("the change Programmed", 60, programmed("apiroutes", APP_NS, "orders", proxies="2/2"))
    expect(obj["spec"].get("methods") == ["GET", "HEAD"], "the change is not in the object")
    conn = http.client.HTTPConnection(STATE["proxy_ip"], 80, timeout=5)
    conn.request("POST", "/orders/index.html", headers={"Host": "api.example.com", "X-API-Key": KEY})
    s = conn.getresponse().status
    conn.close()
    expect(s in (404, 405), f"POST after the methods change: {s}")
    # a change made while only the new leader runs also programs
    again = changed.replace("methods: [GET, HEAD]", "methods: [GET, HEAD, OPTIONS]")
    out = apply(again)
    expect(out.returncode == 0, out.stderr)
    obj = wait_for("a change under the new leader Programmed", 30, programmed("apiroutes", APP_NS, "orders", proxies="2/2"))
    expect("OPTIONS" in obj["spec"]["methods"], "second change missing")
    published = [l for l in kubectl("logs", "-n", NS, new_leader).stdout.splitlines() if '"published config"' in l]
    expect(published, f"{new_leader} published nothing")
    return (f"{leader} -> {new_leader}, {role} (lease taken over {took_over:.1f}s after the delete); the change applied "
            f"meanwhile and one after are Programmed; {len(published)} configs published by the new leader")


@step("delete a proxy pod: PROXIES drops below 2/2 and comes back to 2/2 with the replacement")
def _():
    victim = sorted(p["metadata"]["name"] for p in pods("proxy"))[0]
    seen: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            v = proxies_column("orders")
            if not seen or seen[-1] != v:
                seen.append(v)
            time.sleep(0.2)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        time.sleep(0.5)
        kubectl("delete", "pod", "-n", NS, victim, "--wait=true", "--timeout=90s")
        wait_for("2 Ready proxies without the victim", 90,
                 lambda: (ps := [p for p in pods("proxy") if ready(p)]) and len(ps) == 2 and victim not in {p["metadata"]["name"] for p in ps})
        wait_for("PROXIES 2/2 again", 60, lambda: seen and seen[-1] == "2/2" and len(seen) > 2)
    finally:
        stop.set()
        w.join()
    expect(any(v != "2/2" for v in seen), f"PROXIES never left 2/2: {seen}")
    reports = {l["metadata"]["name"] for l in kget("lease", "-n", NS, "-l", "portcullis.dev/proxy-report=true")["items"]}
    expect(not any(victim in r for r in reports), f"the deleted pod's report is still there: {reports}")
    return f"PROXIES: {' -> '.join(seen)}"


# ---- an ingress controller on the node: Ingress, per-pod endpoints, rolling updates ----------
WEB_HOST = "web.example.com"


def web_deployment(version: str, on_term: str) -> str:
    """3 busybox httpd pods answering with their pod name and version. on_term: `ignore` keeps
    serving through the grace period (a pod that drains); `exit` stops listening at once on
    SIGTERM and exits once the responses already being written are done (a graceful server
    without a drain period: new connections meet a closed port while its endpoint is still
    listed, the gap a gateway must cover with endpoints and retries)."""
    trap = "trap '' TERM" if on_term == "ignore" else 'trap "kill $pid; sleep 2; exit 0" TERM'
    script = (f"mkdir -p /tmp/www/web && echo \"$(hostname) {version}\" > /tmp/www/web/index.html"
              f" && httpd -f -p 8080 -h /tmp/www & pid=$!; {trap}; while true; do wait; done")
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {APP_NS}}}
spec:
  replicas: 3
  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 8
      containers:
      - name: httpd
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [/bin/sh, -c, {json.dumps(script)}]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /web/index.html, port: 8080}}, periodSeconds: 1}}
"""


WEB = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {APP_NS}}}
spec:
  selector: {{app: web}}
  ports: [{{name: web, port: 80, targetPort: http}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: {APP_NS}}}
spec:
  ingressClassName: portcullis
  rules:
  - host: {WEB_HOST}
    http:
      paths:
      - {{path: /web, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: elsewhere, namespace: {APP_NS}}}
spec:
  ingressClassName: another-controller
  rules:
  - host: other.example.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: WafPolicy
metadata: {{name: strict, namespace: {APP_NS}}}
spec:
  mode: Block
"""

SQLI = "/web/index.html?id=1%27%20OR%20%271%27%3D%271"


def web(path: str = "/web/index.html", host: str = WEB_HOST, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(STATE["proxy_ip"], 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def web_pods() -> dict[str, str]:
    """Ready web pods: name -> pod IP."""
    items = kget("pods", "-n", APP_NS, "-l", "app=web")["items"]
    return {p["metadata"]["name"]: p["status"].get("podIP", "") for p in items if ready(p)}


def spread(n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        s, b = web()
        expect(s == 200, f"GET /web/index.html: {s} {b[:120]!r}")
        pod = b.decode().split()[0]
        counts[pod] = counts.get(pod, 0) + 1
    return counts


@step("Ingress: an unchanged Ingress of class portcullis serves through the proxy Service (status.loadBalancer set); one of another class is ignored")
def _():
    out = apply(web_deployment("v1", "ignore") + "---" + WEB)
    expect(out.returncode == 0, out.stderr)
    kubectl("rollout", "status", "-n", APP_NS, "deployment/web", "--timeout=90s")
    _, served = wait_for("the Ingress served", 60, lambda: (r := web()) and r[0] == 200 and r)
    expect(served.decode().split()[0] in web_pods(), f"answer from an unknown pod: {served!r}")
    ing = wait_for("Ingress status.loadBalancer", 30,
                   lambda: kget("ingress", "-n", APP_NS, "web").get("status", {}).get("loadBalancer", {}).get("ingress"))
    expect(ing == [{"ip": STATE["proxy_ip"]}], f"status.loadBalancer.ingress {ing}, proxy Service {STATE['proxy_ip']}")
    s, b = web("/", host="other.example.com")
    expect(s == 404, f"the other class's Ingress is served: {s} {b[:120]!r}")
    other = kget("ingress", "-n", APP_NS, "elsewhere")
    expect(not other.get("status", {}).get("loadBalancer", {}).get("ingress"), f"status written on another class's Ingress: {other.get('status')}")
    s, _ = web(SQLI)
    expect(s == 200, f"an SQL injection before the WAF annotation: {s}")
    return f"200 from {served.decode().strip()!r}; status.loadBalancer {ing}; other class: 404, no status"


@step("Ingress: adding the annotation portcullis.dev/waf-policy blocks an SQL injection; clean requests pass")
def _():
    kubectl("annotate", "ingress", "-n", APP_NS, "web", "portcullis.dev/waf-policy=strict")
    s, b = wait_for("the SQL injection blocked", 30, lambda: (r := web(SQLI)) and r[0] == 403 and r)
    body = json.loads(b)
    expect(body.get("request_id") or body.get("requestId"), f"403 without a request id: {body}")
    for _ in range(10):
        expect(web()[0] == 200, "a clean request after the annotation")
        expect(web(SQLI)[0] == 403, "an SQL injection after the annotation")
    return f"403 {b[:160].decode(errors='replace')}"


@step("endpoints, not the virtual IP: RoundRobin spreads new connections evenly over the 3 pods; ConsistentHash keeps one client on one pod")
def _():
    pods_now = web_pods()
    expect(len(pods_now) == 3, f"ready web pods {pods_now}")
    counts = spread(300)
    # RoundRobin per pod over 2 proxy replicas: each pod gets its third within 20 % (80..120 of
    # 300). kube-proxy's random pick would need luck to stay there and could never do the next part.
    expect(set(counts) == set(pods_now), f"answers from {counts}, pods {sorted(pods_now)}")
    expect(all(80 <= c <= 120 for c in counts.values()), f"uneven spread {counts}")
    kubectl("annotate", "ingress", "-n", APP_NS, "web", "portcullis.dev/load-balancing=ConsistentHash")
    # the client (this host, through kube-proxy) has one address: one pod answers it, on both replicas
    wait_for("one pod answering this client", 30, lambda: len(spread(20)) == 1)
    hashed = spread(100)
    expect(len(hashed) == 1, f"ConsistentHash spread one client over {hashed}")
    kubectl("annotate", "ingress", "-n", APP_NS, "web", "portcullis.dev/load-balancing-")
    wait_for("RoundRobin again", 30, lambda: len(spread(12)) == 3)
    return f"RoundRobin 300 requests: {sorted(counts.values())}; ConsistentHash 100 requests: {hashed}"


def web_answer():
    """The web Deployment through the proxy Service: good is 200; the answer names the pod
    (and its version)."""
    s, b = web(timeout=10)
    return (True, b.decode().strip()) if s == 200 else (False, f"{s} {b[:100]!r}")


@step("a deleted pod (still serving through its grace period) gets no request sent more than 1 s after its delete")
def _():
    victim = sorted(web_pods())[0]
    with Load(web_answer, pause=0.005) as load:
        time.sleep(1)
        t = time.monotonic()
        kubectl("delete", "pod", "-n", APP_NS, victim, "--wait=false")
        took = time.monotonic() - t
        time.sleep(4)
    to_victim = [sent for sent, who in load.answers if who.split()[0] == victim]
    expect(to_victim, "the victim answered nothing before its delete: the load did not reach it")
    last = max(to_victim) - t
    expect(last < 1.0, f"a request sent {last:.2f}s after the delete still reached the deleted pod")
    expect(not load.failed, f"{len(load.failed)} failed: {load.failed[:5]}")
    kubectl("rollout", "status", "-n", APP_NS, "deployment/web", "--timeout=90s")
    return (f"last request to {victim} sent {last * 1000:.0f} ms after the delete (kubectl took {took * 1000:.0f} ms); "
            f"{len(load.answers)} requests, 0 failed")


def old_web_pods_stopped() -> bool:
    """Every deleted web pod has stopped: its containers show terminated, or its
    deletionTimestamp (the delete plus the grace period, when the kubelet kills what is left)
    passed 2 s ago (kubelet 1.20 may report the end only when it removes the Pod)."""
    from datetime import datetime
    now = time.time()
    for p in kget("pods", "-n", APP_NS, "-l", "app=web")["items"]:
        deleted = p["metadata"].get("deletionTimestamp")
        if deleted is None:
            continue
        killed_by = datetime.fromisoformat(deleted.replace("Z", "+00:00")).timestamp() + 2
        running = any("terminated" not in c.get("state", {}) for c in p.get("status", {}).get("containerStatuses", []))
        if running and now < killed_by:
            return False
    return True


@step("rolling updates under a steady stream through the Ingress: 0 failed requests, also when the old pods stop listening at SIGTERM")
def _():
    results = []
    kubectl("annotate", "ingress", "-n", APP_NS, "web", "portcullis.dev/retries=2")
    time.sleep(2)
    for version, on_term in (("v2", "exit"), ("v3", "exit")):
        with Load(web_answer, pause=0.005) as load:
            time.sleep(1)
            out = apply(web_deployment(version, on_term))
            expect(out.returncode == 0, out.stderr)
            kubectl("rollout", "status", "-n", APP_NS, "deployment/web", "--timeout=120s")
            # the old pods' containers stopped (kubelet 1.20 deletes the Pod object itself up to a
            # minute later): every failure their exit could cause has happened by now
            wait_for("the old pods stopped", 60, old_web_pods_stopped)
            time.sleep(2)
        versions = [who.split()[1] for _, who in load.answers]
        expect(not load.failed, f"{version}: {len(load.failed)} failed of {len(load.answers) + len(load.failed)}: {load.failed[:5]}")
        expect(versions and versions[-1] == version, f"{version}: the last answers came from {versions[-3:]}")
        expect(len(load.answers) > 100, f"{version}: only {len(load.answers)} requests")
        old = "v1" if version == "v2" else "v2"
        results.append(f"{old}->{version} ({'old pods drain' if old == 'v1' else 'old pods stop listening at SIGTERM'}): "
                       f"{len(load.answers)} requests, 0 failed")
    return "; ".join(results)


def can_i(sa: str, *args: str) -> bool:
    out = kubectl("auth", "can-i", f"--as=system:serviceaccount:{NS}:{sa}", *args, check=False)
    return out.stdout.strip() == "yes"


@step("RBAC for real (kubectl auth can-i as the ServiceAccounts): the proxy reads only its config objects, writes only Leases in its namespace, no CRD writes")
def _():
    proxy = f"{RELEASE}-proxy"
    denied = [
        ("get", "secrets", "-n", APP_NS), ("list", "secrets", "-n", APP_NS), ("list", "secrets", "-A"),
        ("get", "secrets/mobile-app-keys", "-n", APP_NS), ("get", "secrets", "-n", "kube-system"),
        ("get", "secrets/portcullis-webhook-cert", "-n", NS),
        ("list", "pods", "-n", NS), ("get", "configmaps", "-n", APP_NS),
    ]
    for kind in ("apiroutes", "consumercredentials", "ratelimitpolicies", "wafpolicies"):
        for verb in ("create", "update", "patch", "delete"):
            denied.append((verb, f"{kind}.portcullis.dev", "-n", APP_NS))
            denied.append((verb, f"{kind}.portcullis.dev", "-n", NS))
        denied.append(("patch", f"{kind}.portcullis.dev", "--subresource=status", "-n", APP_NS))
    denied.append(("create", "customresourcedefinitions.apiextensions.k8s.io"))
    denied += [("get", "configmaps", "-n", NS), ("watch", "secrets", "-n", NS),
               ("get", f"configmaps/{RELEASE}-operator-owner", "-n", NS)]
    allowed = [("get", "secrets/portcullis-config", "-n", NS), ("watch", "secrets/portcullis-config-15", "-n", NS),
               ("watch", "configmaps/portcullis-config", "-n", NS), ("create", "leases.coordination.k8s.io", "-n", NS)]
    for args in denied:
        expect(not can_i(proxy, *args), f"the proxy can {' '.join(args)}")
    for args in allowed:
        expect(can_i(proxy, *args), f"the proxy cannot {' '.join(args)}")
    op = f"{RELEASE}-operator"
    for args in [("create", "apiroutes.portcullis.dev", "-n", APP_NS), ("delete", "secrets", "-n", APP_NS),
                 ("create", "secrets", "-n", APP_NS), ("list", "pods", "-A"),
                 ("patch", "validatingwebhookconfigurations/other-webhook"), ("create", "clusterroles")]:
        expect(not can_i(op, *args), f"the operator can {' '.join(args)}")
    expect(can_i(op, "patch", "apiroutes.portcullis.dev", "--subresource=status", "-n", APP_NS), "the operator cannot patch status")
    return f"proxy: {len(denied)} denials and {len(allowed)} grants checked; operator: 6 denials"


@step("helm uninstall leaves nothing of the release but the CRDs")
def _():
    for kind in ("apiroutes", "consumercredentials"):
        kubectl("delete", kind, "--all", "-n", APP_NS)
    kubectl("delete", "namespace", APP_NS, "--wait=true", "--timeout=120s")
    with helm_config() as cfg:
        cfg.uninstall(RELEASE, wait="watcher", timeout=180)
    wait_for("the release's pods gone", 120, lambda: not kget("pods", "-n", NS)["items"])

    def compare():
        now = inventory()
        extra = {o for o in now - STATE["before"] if not crd_part(o)}
        return (extra, now) if not extra else (None, extra)

    def settled():
        r = compare()
        STATE["left"] = r[1]
        return r[0] is not None or None

    try:
        wait_for("garbage collection of what the operator created", 60, settled, interval=2)
    except Failed:
        raise Failed(f"left after uninstall: {sorted(STATE['left'])}")
    crds = sorted(f"{o[0].split('.')[0]}/{o[2]}" for o in inventory() - STATE["before"])
    return f"only the CRDs remain: {', '.join(crds)}"


def crd_part(obj: tuple[str, str, str]) -> bool:
    """The CRDs, and the APIService the API server registers for their group by itself."""
    res, _, name = obj
    return ((res == "customresourcedefinitions.apiextensions.k8s.io" and name.endswith(".portcullis.dev"))
            or (res == "apiservices.apiregistration.k8s.io" and name == "v1alpha1.portcullis.dev"))


# ----------------------------------------------------------------------------------------------
def diagnostics() -> None:
    print("\n---- diagnostics", flush=True)
    for args in (["get", "pods", "-A", "-o", "wide"], ["get", "apiroutes,consumercredentials", "-A"],
                 ["get", "events", "-A", "--sort-by=.lastTimestamp"], ["get", "lease", "-n", NS],
                 ["get", "endpoints", "-A"]):
        out = kubectl(*args, check=False)
        print(f"$ kubectl {' '.join(args)}\n{out.stdout}{out.stderr}", flush=True)
    for comp in ("operator", "proxy"):
        for p in pods(comp) if kubectl("get", "ns", NS, check=False).returncode == 0 else []:
            out = kubectl("logs", "-n", NS, p["metadata"]["name"], "--tail=40", check=False)
            print(f"$ kubectl logs {p['metadata']['name']} (last 40)\n{out.stdout}{out.stderr}", flush=True)


def main() -> int:
    for name, fn in STEPS:
        t = time.monotonic()
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - reported with the cluster's state
            print(f"FAIL {name} ({time.monotonic() - t:.1f}s): {e}", flush=True)
            try:
                diagnostics()
            except Exception as d:  # noqa: BLE001
                print(f"(diagnostics failed: {d})")
            return 1
        print(f"PASS {name} ({time.monotonic() - t:.1f}s)" + (f": {detail}" if detail else ""), flush=True)
    print(f"chart on a real node: {len(STEPS)} passed in {time.monotonic() - T0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
