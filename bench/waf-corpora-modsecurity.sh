#!/usr/bin/env bash
# Portcullis' own WAF corpora (waf/tests/corpora/portcullis/) through Portcullis (WAF PL1) and
# nginx + ModSecurity v3 + OWASP CRS 3.3.4 (PL1, anomaly threshold 5): share of requests each
# blocks per corpus, one request at a time (bench/waf-corpora-client.py). A detection
# comparison, not a speed one: it needs no quiet machine.
#
#   bench/waf-corpora-modsecurity.sh
#   PORTCULLIS_BIN=... KEEP_TMP=1 bench/waf-corpora-modsecurity.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
MODSEC_MODULE=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
CRS_SETUP=/etc/modsecurity/crs/crs-setup.conf
CRS_RULES=/usr/share/modsecurity-crs/rules
if [[ ! -f $MODSEC_MODULE || ! -d $CRS_RULES ]]; then
    [[ $(id -u) == 0 ]] || { echo "apt-get install nginx libnginx-mod-http-modsecurity modsecurity-crs" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx curl python3 \
        libnginx-mod-http-modsecurity modsecurity-crs >&2
fi
[[ -x $PORTCULLIS_BIN ]] || (cd "$ROOT" && cargo build --release -p portcullis-proxy >&2)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-waf-corpora.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local rc=$?
    stop_pids
    if [[ ${KEEP_TMP:-0} == 1 || $rc -ne 0 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT

UP_PORT=$(free_port)
MS_PORT=$(free_port)
MS=$TMP/modsec
mkdir -p "$TMP/up" "$MS/tmp" "$MS/data"
chmod 777 "$MS/tmp" "$MS/data"
{
    grep -v -E '^\s*(SecRuleEngine|SecAuditEngine|SecAuditLog|SecResponseBodyAccess|SecStatusEngine|SecTmpDir|SecDataDir|SecUnicodeMapFile)\b' /etc/nginx/modsecurity.conf
    echo "SecRuleEngine On"
    echo "SecAuditEngine Off"
    echo "SecResponseBodyAccess Off"
    echo "SecStatusEngine Off"
    echo "SecTmpDir $MS/tmp"
    echo "SecDataDir $MS/data"
    echo "SecUnicodeMapFile /etc/nginx/unicode.mapping 20127"
    echo "Include $CRS_SETUP"
    echo "Include $CRS_RULES/*.conf"
} >"$MS/main.conf"
chmod -R a+rX "$MS"
for d in "$TMP/up" "$MS"; do
    port=$UP_PORT location='location / { return 200 "ok\n"; }' modsec=
    if [[ $d == "$MS" ]]; then
        port=$MS_PORT
        location="location / { proxy_pass http://127.0.0.1:$UP_PORT; }"
        modsec="modsecurity on; modsecurity_rules_file $MS/main.conf;"
    fi
    {
        [[ -n $modsec ]] && echo "load_module $MODSEC_MODULE;"
        echo "daemon off; worker_processes 1; pid $d/nginx.pid; error_log $d/error.log;"
        echo "events { worker_connections 256; }"
        echo "http { access_log off; client_body_temp_path $d/body; proxy_temp_path $d/proxy;"
        echo "  fastcgi_temp_path $d/fcgi; uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;"
        echo "  server { listen 127.0.0.1:$port; $modsec $location } }"
    } >"$d/nginx.conf"
    "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/stdout.log" 2>&1 &
    PIDS+=($!)
done

PC_PORT=$(free_port)
PC_ADMIN=$(free_port)
mkdir -p "$TMP/portcullis"
cat >"$TMP/portcullis/waf.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: corpora, namespace: default}
spec:
  paths: [{type: Prefix, value: /}]
  upstream:
    targets: [{url: "http://127.0.0.1:$UP_PORT"}]
  wafPolicy: pl1
---
apiVersion: portcullis.dev/v1alpha1
kind: WafPolicy
metadata: {name: pl1, namespace: default}
spec:
  mode: Block
  paranoiaLevel: 1
EOF
"$PORTCULLIS_BIN" --manifests "$TMP/portcullis" --listen "127.0.0.1:$PC_PORT" \
    --admin-listen "127.0.0.1:$PC_ADMIN" --no-audit >/dev/null 2>"$TMP/portcullis/stderr.log" &
PIDS+=($!)
for url in "http://127.0.0.1:$UP_PORT/" "http://127.0.0.1:$MS_PORT/" "http://127.0.0.1:$PC_ADMIN/readyz"; do
    for _ in $(seq 1 200); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]] && break
        sleep 0.05
    done
done
echo "ModSecurity $(dpkg-query -W -f='${Version}' libmodsecurity3), CRS $(dpkg-query -W -f='${Version}' modsecurity-crs)"
python3 "$ROOT/bench/waf-corpora-client.py" \
    "Portcullis=http://127.0.0.1:$PC_PORT" "ModSecurity+CRS=http://127.0.0.1:$MS_PORT"
