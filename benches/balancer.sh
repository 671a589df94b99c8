#!/usr/bin/env bash
# The balancer benchmark: deltacast's built-in HTTP balancer against nginx and HAProxy,
# on the same machine, in front of the same two backends, measured with wrk.
#
# What it measures, for each target and each mode, requests/s and p50/p99 latency:
#   direct     one backend, no proxy (the baseline: what the load generator and one
#              backend can do on this machine)
#   deltacast  `deltacast balancer` (release build), two static [[balancer.member]],
#              discover = false, sticky = "none", lbmethod = "byrequests"
#   nginx      nginx as a reverse proxy: upstream with both backends, keepalive 64,
#              proxy_http_version 1.1, Connection ""
#   haproxy    HAProxy, mode http, balance roundrobin, option http-keep-alive,
#              http-reuse always
# Modes:
#   keep-alive wrk's default: each of the CONNECTIONS connections carries many requests
#   close      `-H 'Connection: close'`: a new client connection per request (the proxies
#              still keep their connections to the backends open)
#
# Backends: two identical nginx instances (one worker process each, keep-alive on, access
# log off) answering `location / { return 200 "ok\n"; }`. A static nginx answer costs a few
# microseconds of CPU, far less than a proxy hop, so the proxy under test is the
# bottleneck and the figures compare proxies rather than backends. deltacast nodes as
# backends would spend more CPU per request than the proxies and hide their differences.
#
# Fairness: deltacast's balancer runs one worker thread per core (src/balancer/worker.rs),
# so nginx runs as many worker_processes and HAProxy as many threads (nbthread). Every
# proxy adds X-Forwarded-For and keeps the Host header, none logs requests. Everything
# (wrk, backends, proxy) shares the same cores; the machine is shared, so the rounds are
# interleaved (direct, deltacast, nginx, haproxy, direct, ...) for drift to hit every
# target alike, and medians are reported.
# The CPU column is the CPU time the proxy (or, for direct, the backend) used per request,
# from /proc, which is less noisy than requests/s on shared cores.
#
# Run (from anywhere; needs root to install missing Debian packages wrk, nginx, haproxy):
#   benches/balancer.sh
#   ROUNDS=5 DURATION=10s benches/balancer.sh
#   OUT=/tmp/balancer.md benches/balancer.sh       # also writes the report there
# Environment: ROUNDS (3), DURATION (5s), WARMUP (2s), CONNECTIONS (32), THREADS (1),
# OUT (unset), CARGO_TARGET_DIR (where cargo builds; default <repo>/target).
#
# Every process this script starts is stopped by its PID on exit, on failure or on
# Ctrl-C; the system nginx/haproxy services are never started, stopped or used, and no
# fixed port is used: every port is a free one on 127.0.0.1, the only address traffic goes to.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
OUT=${OUT:-}

TARGETS=(direct deltacast nginx haproxy)
MODES=(keep-alive close)
# Worker threads/processes of each proxy: deltacast's balancer has one per core
# (src/balancer/worker.rs).
PROXY_WORKERS=$(nproc)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH=$PATH:/usr/sbin:/sbin
TMP=""
PIDS=()          # every long-running process started here, stopped by PID on exit
WRK_PID=""       # the wrk run in progress, if any
POLICY_RC=""     # a policy-rc.d this script put in place (removed on exit)

log() { printf '%s\n' "balancer.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $WRK_PID ]] && kill -0 "$WRK_PID" 2>/dev/null; then
        kill -TERM "$WRK_PID" 2>/dev/null || true
    fi
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them a few seconds to exit, then force the ones still there.
    local i
    for i in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "process $pid did not stop on SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    [[ -n $POLICY_RC ]] && rm -f "$POLICY_RC"
    [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools

# Installs the Debian packages that are missing, without letting their services start.
install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        die "missing ${missing[*]}; run as root to install them (apt-get install ${missing[*]}), or install them first"
    fi
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    # Debian starts a package's service on install (nginx on port 80) unless
    # policy-rc.d says no: put one in place for the install if there is none.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# put here by deltacast benches/balancer.sh for its install\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
    if [[ -n $POLICY_RC ]]; then
        rm -f "$POLICY_RC"
        POLICY_RC=""
    fi
    local t
    for t in wrk nginx haproxy; do
        command -v "$t" >/dev/null || die "$t is still missing after the install"
    done
}

build_deltacast() {
    command -v cargo >/dev/null || die "cargo not found: install Rust to build deltacast"
    log "building deltacast (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet --bin deltacast) >&2
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target = /* ]] || target=$ROOT/$target
    DELTACAST=$target/release/deltacast
    [[ -x $DELTACAST ]] || die "no binary at $DELTACAST after the build"
}

# ---------------------------------------------------------------- ports and readiness

# Prints N distinct free TCP ports on 127.0.0.1, below the ephemeral range (so that no
# outgoing connection of the benchmark can take one between the check and the bind).
free_ports() {
    local n=$1
    if command -v python3 >/dev/null; then
        python3 - "$n" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except OSError:
    low = 32768
held, ports = [], []
candidates = random.sample(range(10000, low), k=min(2000, low - 10000))
for port in candidates:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(port)
    if len(ports) == n:
        break
if len(ports) < n:
    sys.exit("not enough free ports")
print(" ".join(map(str, ports)))
EOF
    else
        # Without python3: a port nobody answers on is taken as free.
        local ports=() p
        while ((${#ports[@]} < n)); do
            p=$((10000 + RANDOM % 20000))
            [[ " ${ports[*]} " == *" $p "* ]] && continue
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                ports+=("$p")
            fi
        done
        echo "${ports[*]}"
    fi
}

# Prints the response head of `GET /` on 127.0.0.1:PORT (one request, new connection).
http_get() {
    local port=$1
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET / HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n" "$1" >&3
        cat <&3' _ "$port" 2>/dev/null | tr -d '\r'
}

# Waits until PID answers 200 on PORT; shows LOGFILE and fails if it dies or takes > 10 s.
wait_ready() {
    local name=$1 pid=$2 port=$3 logfile=$4 i
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited at start; its log:"
            cat "$logfile" >&2 || true
            die "$name did not start"
        fi
        local answer
        answer=$(http_get "$port") || true
        [[ $answer == "HTTP/1.1 200 "* ]] && return 0
        sleep 0.1
    done
    cat "$logfile" >&2 || true
    die "$name did not answer 200 on 127.0.0.1:$port within 10 s"
}

# ---------------------------------------------------------------- the servers

# Writes an nginx prefix directory with its own pid file, logs and temp paths, so that
# nothing of the system's nginx (/etc/nginx, /var/log/nginx, /run/nginx.pid) is used.
nginx_prefix() {
    local dir=$1 workers=$2 http_body=$3
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 65s;
    keepalive_requests 10000000;
$http_body
}
EOF
}

start_nginx() {
    local name=$1 dir=$2 port=$3
    nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_$name" '%s' "$pid"
    wait_ready "$name" "$pid" "$port" "$dir/error.log"
}

start_backend() {
    local name=$1 port=$2
    # One worker: a backend is one small server; two of them give the proxies a pair.
    nginx_prefix "$TMP/$name" 1 "    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            add_header X-Backend $name always;
            return 200 \"ok\\n\";
        }
    }"
    start_nginx "$name" "$TMP/$name" "$port"
}

start_deltacast() {
    local port=$1 b1=$2 b2=$3 dir=$TMP/deltacast
    mkdir -p "$dir"
    cat >"$dir/cluster.toml" <<EOF
[balancer]
listen = "127.0.0.1:$port"
lbmethod = "byrequests"
sticky = "none"
discover = false

[[balancer.member]]
url = "http://127.0.0.1:$b1"
route = "b1"

[[balancer.member]]
url = "http://127.0.0.1:$b2"
route = "b2"
EOF
    RUST_LOG=warn "$DELTACAST" balancer --config "$dir/cluster.toml" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    PIDS+=($!)
    PID_deltacast=$!
    wait_ready deltacast "$!" "$port" "$dir/stderr.log"
}

start_nginx_proxy() {
    local port=$1 b1=$2 b2=$3
    # worker_processes = deltacast's worker threads (PROXY_WORKERS): the same CPU
    # parallelism for both. keepalive_requests raised so neither side recycles
    # connections every 1000 requests (deltacast and HAProxy do not).
    nginx_prefix "$TMP/nginx" "$PROXY_WORKERS" "    upstream backends {
        server 127.0.0.1:$b1;
        server 127.0.0.1:$b2;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
        }
    }"
    start_nginx nginx "$TMP/nginx" "$port"
}

start_haproxy() {
    local port=$1 b1=$2 b2=$3 dir=$TMP/haproxy
    mkdir -p "$dir"
    # nbthread = deltacast's worker threads (PROXY_WORKERS), as for nginx.
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $PROXY_WORKERS
    maxconn 4096
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    option forwardfor
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s

frontend fe
    bind 127.0.0.1:$port
    default_backend backends

backend backends
    balance roundrobin
    server b1 127.0.0.1:$b1
    server b2 127.0.0.1:$b2
EOF
    haproxy -f "$dir/haproxy.cfg" -db >"$dir/stdout.log" 2>&1 &
    PIDS+=($!)
    PID_haproxy=$!
    wait_ready haproxy "$!" "$port" "$dir/stdout.log"
}

# Checks that a proxy spreads requests over both backends (X-Backend of 8 requests).
check_both_backends() {
    local name=$1 port=$2 seen i
    seen=$(for i in $(seq 8); do http_get "$port" | sed -n 's/^X-Backend: //Ip'; done | sort -u | tr '\n' ' ')
    if [[ $seen != "b1 b2 " ]]; then
        die "$name did not spread requests over both backends (saw: ${seen:-none})"
    fi
}

# ---------------------------------------------------------------- measuring

# CPU ticks used so far by PID and its child processes (nginx's workers): "user system".
cpu_ticks() {
    local pid=$1 user=0 system=0 p line fields
    # The children from /proc, as pgrep -P would list them.
    for p in "$pid" $(cat /proc/"$pid"/task/*/children 2>/dev/null || true); do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        # Fields after "(comm) ": state is the 1st, utime the 12th, stime the 13th.
        read -r -a fields <<<"${line##*) }"
        user=$((user + fields[11]))
        system=$((system + fields[12]))
    done
    echo "$user $system"
}

# Runs wrk against PORT in MODE for DURATION; its output goes to FILE. wrk runs in the
# background and is waited for, so that Ctrl-C and SIGTERM reach the trap at once.
run_wrk() {
    local port=$1 mode=$2 duration=$3 file=$4
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency)
    [[ $mode == close ]] && args+=(-H 'Connection: close')
    wrk "${args[@]}" "http://127.0.0.1:$port/" >"$file" 2>&1 &
    WRK_PID=$!
    if ! wait "$WRK_PID"; then
        WRK_PID=""
        cat "$file" >&2
        die "wrk failed against 127.0.0.1:$port ($mode)"
    fi
    WRK_PID=""
}

# wrk's latency ("250.00us", "1.20ms", "2.01s", "1.00m") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 1 : (u == "ms") ? 1e3 : (u == "s") ? 1e6 : (u == "m") ? 6e7 : (u == "h") ? 3.6e9 : -1
        if (f < 0) { print "NaN"; exit 1 }
        printf "%.1f", n * f
    }'
}

# Prints "rps p50_us p99_us requests socket_errors non2xx" from a wrk --latency output.
parse_wrk() {
    local file=$1 rps p50 p99 requests sockerr non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
    p50=$(awk '$1 == "50%" {print $2}' "$file")
    p99=$(awk '$1 == "99%" {print $2}' "$file")
    requests=$(awk '/requests in/ {print $1}' "$file")
    # "Socket errors: connect 0, read 0, write 0, timeout 0" (absent when all are 0).
    sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$file")
    # "Non-2xx or 3xx responses: N" (absent when 0).
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$file")
    [[ -n $rps && -n $p50 && -n $p99 && -n $requests ]] || {
        cat "$file" >&2
        die "could not read wrk's output ($file)"
    }
    echo "$rps $(to_us "$p50") $(to_us "$p99") $requests ${sockerr:-0} ${non2xx:-0}"
}

# One measured run of TARGET in MODE; appends a line to $RESULTS.
measure() {
    local round=$1 mode=$2 target=$3 port=${PORT[$3]} pid=${CPU_PID[$3]}
    local file=$TMP/wrk-$target-$mode-$round.txt figures
    local rps p50 p99 requests sockerr non2xx
    local user0 sys0 user1 sys1
    read -r user0 sys0 <<<"$(cpu_ticks "$pid")"
    run_wrk "$port" "$mode" "$DURATION" "$file"
    read -r user1 sys1 <<<"$(cpu_ticks "$pid")"
    figures=$(parse_wrk "$file")
    read -r rps p50 p99 requests sockerr non2xx <<<"$figures"
    # CPU µs per request: total, user, system.
    local cpu
    cpu=$(awk -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) -v hz="$HZ" -v n="$requests" 'BEGIN {
        f = (n > 0) ? 1e6 / hz / n : 0
        printf "%.1f\t%.1f\t%.1f", (u + s) * f, u * f, s * f }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$target" \
        "$rps" "$p50" "$p99" "$requests" "$sockerr" "$non2xx" "$cpu" >>"$RESULTS"
    log "round $round $mode $target: $rps req/s, p50 ${p50} µs, p99 ${p99} µs, socket errors $sockerr, non-2xx/3xx $non2xx, CPU µs/req (total, user, sys) ${cpu//$'\t'/ }"
}

# ---------------------------------------------------------------- the report

# Columns of $RESULTS: 1 round, 2 mode, 3 target, 4 req/s, 5 p50 µs, 6 p99 µs, 7 requests,
# 8 socket errors, 9 non-2xx/3xx, 10 CPU µs/req, 11 of which user, 12 of which system.
# The median of column COL for MODE and TARGET.
median() {
    awk -F'\t' -v m="$1" -v t="$2" -v c="$3" '$2 == m && $3 == t {print $c}' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "NaN"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

range() {
    awk -F'\t' -v m="$1" -v t="$2" -v c="$3" '$2 == m && $3 == t {print $c}' "$RESULTS" |
        sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f–%.0f", lo, hi}'
}

total() {
    awk -F'\t' -v m="$1" -v t="$2" -v c="$3" '$2 == m && $3 == t {s += $c} END {print s + 0}' "$RESULTS"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt0() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }

report() {
    local mode target rps p50 p99 cpu
    echo "## deltacast balancer benchmark"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), deltacast $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    echo "- $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), load average at start $LOAD_START"
    echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v 2>&1 | head -n1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print $1 " " $2}')"
    echo "- wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds interleaved across targets after a $WARMUP warm-up each; figures are medians of the rounds"
    echo "- backends: 2 nginx (1 worker each) answering 200 \"ok\\n\"; proxies: $PROXY_WORKERS worker threads/processes each; all on the same $(nproc) cores"
    echo
    echo "| mode | target | req/s | req/s min–max | p50 µs | p99 µs | CPU µs/req (user+sys) | socket errors | non-2xx/3xx |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for mode in "${MODES[@]}"; do
        for target in "${TARGETS[@]}"; do
            rps=$(median "$mode" "$target" 4)
            p50=$(median "$mode" "$target" 5)
            p99=$(median "$mode" "$target" 6)
            cpu="$(median "$mode" "$target" 10) ($(median "$mode" "$target" 11)+$(median "$mode" "$target" 12))"
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$mode" "$target" \
                "$(fmt0 "$rps")" "$(range "$mode" "$target" 4)" "$(fmt0 "$p50")" "$(fmt0 "$p99")" \
                "$cpu" "$(total "$mode" "$target" 8)" "$(total "$mode" "$target" 9)"
        done
    done
    echo
    echo "CPU µs/req: CPU time of the proxy's processes (for direct: the backend's) per request, user + system (medians each)."
    echo
    echo "| mode | req/s deltacast/nginx | req/s deltacast/haproxy | req/s deltacast/direct | p99 deltacast/nginx | p99 deltacast/haproxy | CPU/req deltacast/nginx | CPU/req deltacast/haproxy |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for mode in "${MODES[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$mode" \
            "$(ratio "$(median "$mode" deltacast 4)" "$(median "$mode" nginx 4)")" \
            "$(ratio "$(median "$mode" deltacast 4)" "$(median "$mode" haproxy 4)")" \
            "$(ratio "$(median "$mode" deltacast 4)" "$(median "$mode" direct 4)")" \
            "$(ratio "$(median "$mode" deltacast 6)" "$(median "$mode" nginx 6)")" \
            "$(ratio "$(median "$mode" deltacast 6)" "$(median "$mode" haproxy 6)")" \
            "$(ratio "$(median "$mode" deltacast 10)" "$(median "$mode" nginx 10)")" \
            "$(ratio "$(median "$mode" deltacast 10)" "$(median "$mode" haproxy 10)")"
    done
    echo
    echo "req/s ratio above 1: deltacast is faster; p99 and CPU/req ratio above 1: deltacast is slower or costlier."
    local errors
    errors=$(awk -F'\t' '{s += $8 + $9} END {print s + 0}' "$RESULTS")
    if ((errors > 0)); then
        echo
        echo "WARNING: $errors failed requests (socket errors or non-2xx/3xx answers) in the measured runs; see the table."
    fi
}

# ---------------------------------------------------------------- main

main() {
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a whole number ≥ 1, got '$ROUNDS'"
    [[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a whole number ≥ 1, got '$CONNECTIONS'"
    [[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a whole number ≥ 1, got '$THREADS'"
    ((THREADS <= CONNECTIONS)) || die "THREADS ($THREADS) must not exceed CONNECTIONS ($CONNECTIONS)"
    [[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must be like 5s, got '$DURATION'"
    [[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must be like 2s, got '$WARMUP'"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    HZ=$(getconf CLK_TCK)

    install_tools
    build_deltacast

    TMP=$(mktemp -d /tmp/deltacast-balancer-bench.XXXXXX)
    # nginx workers run as an unprivileged user when started as root: let them in.
    chmod 755 "$TMP"
    RESULTS=$TMP/results.tsv
    : >"$RESULTS"

    local b1 b2 pd pn ph
    read -r b1 b2 pd pn ph <<<"$(free_ports 5)"
    start_backend b1 "$b1"
    start_backend b2 "$b2"
    start_deltacast "$pd" "$b1" "$b2"
    start_nginx_proxy "$pn" "$b1" "$b2"
    start_haproxy "$ph" "$b1" "$b2"
    declare -gA PORT=([direct]=$b1 [deltacast]=$pd [nginx]=$pn [haproxy]=$ph)
    # Whose CPU is counted: the proxy's; for direct, the backend's.
    declare -gA CPU_PID=([direct]=$PID_b1 [deltacast]=$PID_deltacast [nginx]=$PID_nginx [haproxy]=$PID_haproxy)
    local target
    for target in deltacast nginx haproxy; do
        check_both_backends "$target" "${PORT[$target]}"
    done
    log "backends on 127.0.0.1:$b1 and :$b2; deltacast :$pd, nginx :$pn, haproxy :$ph"

    local mode round
    for mode in "${MODES[@]}"; do
        for target in "${TARGETS[@]}"; do
            log "warm-up $mode $target ($WARMUP)"
            run_wrk "${PORT[$target]}" "$mode" "$WARMUP" "$TMP/warmup.txt"
        done
    done
    for round in $(seq "$ROUNDS"); do
        for mode in "${MODES[@]}"; do
            for target in "${TARGETS[@]}"; do
                measure "$round" "$mode" "$target"
            done
        done
    done

    local text
    text=$(report)
    printf '%s\n' "$text"
    if [[ -n $OUT ]]; then
        printf '%s\n' "$text" >"$OUT"
        log "report written to $OUT"
    fi
}

main "$@"
