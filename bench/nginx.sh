# shellcheck shell=bash
# Shared by the bench scripts that start nginx (they set NGINX, PIDS and die):
# nginx configs (an upstream answering `return 200 "ok\n"`, nginx `proxy_pass` with
# upstream keep-alive) and starting nginx.

nginx_common() { # $1 = instance dir
    cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $1/nginx.pid;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
    cat <<EOF
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy_temp;
    fastcgi_temp_path $1/fastcgi_temp;
    uwsgi_temp_path $1/uwsgi_temp;
    scgi_temp_path $1/scgi_temp;
    default_type text/plain;
    # Keep client connections open for the whole run (nginx's default closes one every
    # 1000 requests; Portcullis does not), so both proxies see the same connection pattern.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

write_upstream_conf() { # dir port
    local d=$1 port=$2
    mkdir -p "$d"
    {
        nginx_common "$d"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    access_log off;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
    } >"$d/nginx.conf"
}

write_proxy_conf() { # dir port upstream_port audit(on|off)
    local d=$1 port=$2 up=$3 audit=$4
    mkdir -p "$d"
    {
        nginx_common "$d"
        echo "http {"
        nginx_http_common "$d"
        if [[ $audit == on ]]; then
            # Roughly the fields of Portcullis' audit line, one JSON object per request,
            # written unbuffered to /dev/null like Portcullis' stdout.
            cat <<'EOF'
    log_format audit escape=json '{"timestamp":"$time_iso8601","request_id":"$request_id",'
        '"client_ip":"$remote_addr","route":"bench","method":"$request_method","path":"$uri",'
        '"status":$status,"latency":$request_time,"upstream_latency":"$upstream_response_time",'
        '"decision":"allow"}';
    access_log /dev/null audit;
EOF
        else
            echo "    access_log off;"
        fi
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$up;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$d/nginx.conf"
}

start_nginx() { # name dir cpu  -> sets LAST_PID
    local name=$1 d=$2 cpu=$3
    "$NGINX" -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" 2>"$d/configtest.log" ||
        { cat "$d/configtest.log" >&2; die "$name: nginx config test failed"; }
    taskset -c "$cpu" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/stdout.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
