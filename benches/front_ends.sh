#!/usr/bin/env bash
# The front-end benchmark: Apache httpd (event MPM) in front of two deltacast nodes in
# the three ways the seed shows (mod_proxy_http, mod_proxy_ajp, mod_jk), and deltacast's
# own balancer in front of the same two nodes, measured with wrk in one run.
#
# What it measures, for each front end: requests/s, p50/p99 latency and the front end's
# CPU time per request, for `GET /` (the test page: it counts a hit in the session, so
# every request is one session write, replicated to the other node in sync mode) with a
# session cookie the front end made sticky, over keep-alive connections; then each figure
# as a ratio to mod_proxy_http's. Every request must succeed: a socket error or a non-2xx
# answer fails the run.
#
# Targets (one Apache process serves the first three, one virtual host each, so they share
# one MPM, one configuration and one set of processes):
#   proxy_http   BalancerMember http://NODE route=nX, stickysession=JSESSIONID|jsessionid
#   proxy_ajp    BalancerMember ajp://NODE:AJP route=nX secret=..., same stickysession
#   jk           mod_jk: worker.nX.type=ajp13, route, secret; an lb worker, sticky_session
#   deltacast    `deltacast balancer`, two static members, sticky = "route"
# The configurations are the ones of docs/front-ends-ajp.md and tests/ajp.rs.
#
# Run (from anywhere; as root it installs the missing Debian packages wrk, apache2,
# libapache2-mod-jk):
#   benches/front_ends.sh
#   ROUNDS=3 DURATION=10s benches/front_ends.sh
#   DELTACAST=target/debug/deltacast DURATION=2s WARMUP=1s benches/front_ends.sh  # a quick check
# Environment: ROUNDS (1), DURATION (10s), WARMUP (2s), CONNECTIONS (32), THREADS (1),
# OUT (a file the report is also written to), DELTACAST (a binary to use instead of
# building the release one), CARGO_TARGET_DIR.
#
# Every process this script starts is stopped by its PID on exit, on failure or on
# Ctrl-C; the system's apache2 service is never started or used; every port is a free one
# on 127.0.0.1, the only address traffic goes to; the nodes form a cluster of their own
# (own name, own multicast port).

set -euo pipefail

ROUNDS=${ROUNDS:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
OUT=${OUT:-}
DELTACAST=${DELTACAST:-}

TARGETS=(proxy_http proxy_ajp jk deltacast)
SECRET="bench-$RANDOM-$RANDOM-secret"
MODULES=/usr/lib/apache2/modules

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH=$PATH:/usr/sbin:/sbin
TMP=""
PIDS=()
WRK_PID=""
POLICY_RC=""

log() { printf '%s\n' "front_ends.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $WRK_PID ]] && kill -0 "$WRK_PID" 2>/dev/null; then
        kill -TERM "$WRK_PID" 2>/dev/null || true
    fi
    local pid i alive
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for i in $(seq 100); do
        alive=0
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

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    [[ -x /usr/sbin/apache2 ]] || missing+=(apache2)
    [[ -e $MODULES/mod_jk.so ]] || missing+=(libapache2-mod-jk)
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "missing ${missing[*]}; run as root to install them, or install them first"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    # Debian starts a package's service on install unless policy-rc.d says no.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# put here by deltacast benches/front_ends.sh for its install\nexit 101\n' >"$POLICY_RC"
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
    command -v wrk >/dev/null || die "wrk is still missing after the install"
    [[ -e $MODULES/mod_jk.so ]] || die "mod_jk is still missing after the install"
}

build_deltacast() {
    if [[ -n $DELTACAST ]]; then
        [[ $DELTACAST = /* ]] || DELTACAST=$PWD/$DELTACAST
        [[ -x $DELTACAST ]] || die "DELTACAST=$DELTACAST is not an executable"
        return 0
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust to build deltacast"
    log "building deltacast (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet --bin deltacast) >&2
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target = /* ]] || target=$ROOT/$target
    DELTACAST=$target/release/deltacast
    [[ -x $DELTACAST ]] || die "no binary at $DELTACAST after the build"
}

# ---------------------------------------------------------------- ports and HTTP

# N distinct free TCP ports on 127.0.0.1 below the ephemeral range.
free_ports() {
    python3 - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except OSError:
    low = 32768
held, ports = [], []
for port in random.sample(range(10000, low), k=min(2000, low - 10000)):
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
}

# A free UDP port for the nodes' multicast group.
free_udp_port() {
    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])'
}

# The whole answer (head and body) of `GET PATH` on 127.0.0.1:PORT, with COOKIE if given.
http_get() {
    local port=$1 path=${2:-/} cookie=${3:-}
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        extra=""
        [[ -n $3 ]] && extra="Cookie: $3\r\n"
        printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n${extra}Connection: close\r\n\r\n" "$2" "$1" >&3
        cat <&3' _ "$port" "$path" "$cookie" 2>/dev/null | tr -d '\r'
}

# Waits until PID answers 200 on PORT; shows LOGFILE and fails if it dies or takes > 30 s.
wait_ready() {
    local name=$1 pid=$2 port=$3 logfile=$4 i answer
    for i in $(seq 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$logfile" >&2 || true
            die "$name exited at start"
        fi
        answer=$(http_get "$port" / | head -n1) || true
        [[ $answer == "HTTP/1.1 200 "* ]] && return 0
        sleep 0.1
    done
    cat "$logfile" >&2 || true
    die "$name did not answer 200 on 127.0.0.1:$port within 30 s"
}

# ---------------------------------------------------------------- the servers

start_node() {
    local name=$1 http=$2 replication=$3 ajp=$4 dir=$TMP/$1
    mkdir -p "$dir"
    RUST_LOG=warn "$DELTACAST" node --name "$name" --cluster "$CLUSTER" --multicast "$MULTICAST" \
        --http "127.0.0.1:$http" --replication "127.0.0.1:$replication" --ajp "127.0.0.1:$ajp" \
        --set "ajp.secret=$SECRET" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    wait_ready "node $name" "$!" "$http" "$dir/stderr.log"
}

# Waits until node n1 lists n2 as alive (sync replication then goes to it).
wait_converged() {
    local i
    for i in $(seq 300); do
        http_get "$H1" /status | grep -q '"name":"n2"[^}]*"state":"alive"' && return 0
        sleep 0.1
    done
    die "the two nodes did not see each other within 30 s"
}

start_apache() {
    local dir=$TMP/apache
    mkdir -p "$dir"
    local user=""
    ((EUID == 0)) && user=$'User nobody\nGroup nogroup'
    cat >"$dir/workers.properties" <<EOF
worker.list=lb
worker.n1.type=ajp13
worker.n1.host=127.0.0.1
worker.n1.port=$A1
worker.n1.route=n1
worker.n1.secret=$SECRET
worker.n2.type=ajp13
worker.n2.host=127.0.0.1
worker.n2.port=$A2
worker.n2.route=n2
worker.n2.secret=$SECRET
worker.lb.type=lb
worker.lb.balance_workers=n1,n2
worker.lb.sticky_session=true
EOF
    cat >"$dir/httpd.conf" <<EOF
ServerRoot "$dir"
ServerName 127.0.0.1
Listen 127.0.0.1:$P_proxy_http
Listen 127.0.0.1:$P_proxy_ajp
Listen 127.0.0.1:$P_jk
PidFile "$dir/httpd.pid"
DefaultRuntimeDir "$dir"
Mutex file:$dir default
ErrorLog "$dir/error.log"
LogLevel warn
LoadModule mpm_event_module $MODULES/mod_mpm_event.so
LoadModule authz_core_module $MODULES/mod_authz_core.so
LoadModule proxy_module $MODULES/mod_proxy.so
LoadModule proxy_http_module $MODULES/mod_proxy_http.so
LoadModule proxy_ajp_module $MODULES/mod_proxy_ajp.so
LoadModule proxy_balancer_module $MODULES/mod_proxy_balancer.so
LoadModule slotmem_shm_module $MODULES/mod_slotmem_shm.so
LoadModule lbmethod_byrequests_module $MODULES/mod_lbmethod_byrequests.so
LoadModule jk_module $MODULES/mod_jk.so
$user
StartServers 2
ServerLimit 4
ThreadsPerChild 64
MinSpareThreads 64
MaxSpareThreads 256
MaxRequestWorkers 256
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
JkWorkersFile "$dir/workers.properties"
JkShmFile "$dir/jk.shm"
JkLogFile "$dir/mod_jk.log"
JkLogLevel error

<VirtualHost 127.0.0.1:$P_proxy_http>
    <Proxy "balancer://http">
        BalancerMember "http://127.0.0.1:$H1" route=n1
        BalancerMember "http://127.0.0.1:$H2" route=n2
        ProxySet stickysession=JSESSIONID|jsessionid
    </Proxy>
    ProxyPass "/" "balancer://http/"
</VirtualHost>

<VirtualHost 127.0.0.1:$P_proxy_ajp>
    <Proxy "balancer://ajp">
        BalancerMember "ajp://127.0.0.1:$A1" route=n1 secret=$SECRET
        BalancerMember "ajp://127.0.0.1:$A2" route=n2 secret=$SECRET
        ProxySet stickysession=JSESSIONID|jsessionid
    </Proxy>
    ProxyPass "/" "balancer://ajp/"
</VirtualHost>

<VirtualHost 127.0.0.1:$P_jk>
    JkMount /* lb
</VirtualHost>
EOF
    /usr/sbin/apache2 -d "$dir" -f "$dir/httpd.conf" -DFOREGROUND >"$dir/stdout.log" 2>&1 &
    PIDS+=($!)
    PID_apache=$!
    local port
    for port in "$P_proxy_http" "$P_proxy_ajp" "$P_jk"; do
        wait_ready apache "$PID_apache" "$port" "$dir/error.log"
    done
}

start_balancer() {
    local dir=$TMP/balancer
    mkdir -p "$dir"
    RUST_LOG=warn "$DELTACAST" balancer --cluster "$CLUSTER" --multicast "$MULTICAST" \
        --listen "127.0.0.1:$P_deltacast" \
        --member "n1=http://127.0.0.1:$H1" --member "n2=http://127.0.0.1:$H2" \
        --set balancer.discover=false --set balancer.sticky=route \
        >"$dir/stdout.log" 2>"$dir/stderr.log" &
    PIDS+=($!)
    PID_deltacast=$!
    wait_ready "deltacast balancer" "$!" "$P_deltacast" "$dir/stderr.log"
}

# The session cookie (JSESSIONID=ID.ROUTE) a first GET / through PORT sets.
session_cookie() {
    local cookie
    cookie=$(http_get "$1" / | sed -n 's/^[Ss]et-[Cc]ookie: \(JSESSIONID=[^;]*\).*/\1/p' | head -n1)
    [[ $cookie == JSESSIONID=*.n[12] ]] || die "no session cookie through 127.0.0.1:$1 (got '${cookie}')"
    echo "$cookie"
}

# ---------------------------------------------------------------- measuring

# CPU ticks used so far by PID and its children (Apache's processes): "user system".
cpu_ticks() {
    local pid=$1 user=0 system=0 p line fields
    for p in "$pid" $(cat /proc/"$pid"/task/*/children 2>/dev/null || true); do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        read -r -a fields <<<"${line##*) }"
        user=$((user + fields[11]))
        system=$((system + fields[12]))
    done
    echo "$user $system"
}

run_wrk() {
    local port=$1 cookie=$2 duration=$3 file=$4
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency -H "Cookie: $cookie" \
        "http://127.0.0.1:$port/" >"$file" 2>&1 &
    WRK_PID=$!
    if ! wait "$WRK_PID"; then
        WRK_PID=""
        cat "$file" >&2
        die "wrk failed against 127.0.0.1:$port"
    fi
    WRK_PID=""
}

to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 1 : (u == "ms") ? 1e3 : (u == "s") ? 1e6 : (u == "m") ? 6e7 : -1
        if (f < 0) { print "NaN"; exit 1 }
        printf "%.1f", n * f
    }'
}

# "rps p50_us p99_us requests socket_errors non2xx" from wrk --latency output.
parse_wrk() {
    local file=$1 rps p50 p99 requests sockerr non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
    p50=$(awk '$1 == "50%" {print $2}' "$file")
    p99=$(awk '$1 == "99%" {print $2}' "$file")
    requests=$(awk '/requests in/ {print $1}' "$file")
    sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$file")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$file")
    [[ -n $rps && -n $p50 && -n $p99 && -n $requests ]] || { cat "$file" >&2; die "could not read wrk's output ($file)"; }
    echo "$rps $(to_us "$p50") $(to_us "$p99") $requests ${sockerr:-0} ${non2xx:-0}"
}

measure() {
    local round=$1 target=$2 port=${PORT[$2]} pid=${CPU_PID[$2]} cookie=${COOKIE[$2]}
    local file=$TMP/wrk-$target-$round.txt rps p50 p99 requests sockerr non2xx
    local user0 sys0 user1 sys1 cpu
    read -r user0 sys0 <<<"$(cpu_ticks "$pid")"
    run_wrk "$port" "$cookie" "$DURATION" "$file"
    read -r user1 sys1 <<<"$(cpu_ticks "$pid")"
    read -r rps p50 p99 requests sockerr non2xx <<<"$(parse_wrk "$file")"
    cpu=$(awk -v t=$((user1 - user0 + sys1 - sys0)) -v hz="$HZ" -v n="$requests" \
        'BEGIN { printf "%.1f", (n > 0) ? t * 1e6 / hz / n : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$rps" "$p50" "$p99" \
        "$requests" "$sockerr" "$non2xx" "$cpu" >>"$RESULTS"
    log "round $round $target: $rps req/s, p50 $p50 µs, p99 $p99 µs, errors $sockerr, non-2xx $non2xx, front-end CPU $cpu µs/req"
}

# Columns of $RESULTS: 1 round, 2 target, 3 req/s, 4 p50, 5 p99, 6 requests, 7 socket
# errors, 8 non-2xx, 9 front-end CPU µs/req.
median() {
    awk -F'\t' -v t="$1" -v c="$2" '$2 == t {print $c}' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "NaN"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
total() { awk -F'\t' -v t="$1" -v c="$2" '$2 == t {s += $c} END {print s + 0}' "$RESULTS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt0() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }

report() {
    local target base_rps base_p99 base_cpu
    base_rps=$(median proxy_http 3)
    base_p99=$(median proxy_http 5)
    base_cpu=$(median proxy_http 9)
    echo "## Front ends in front of two deltacast nodes"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), deltacast $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $("$DELTACAST" --version 2>/dev/null | head -n1)"
    echo "- $(nproc) cores, load average at start $LOAD_START; $(/usr/sbin/apache2 -v | sed -n 's/^Server version: //p') (event MPM), mod_jk $(strings "$MODULES/mod_jk.so" 2>/dev/null | sed -n 's/^mod_jk\/\([0-9.]*\).*/\1/p' | head -n1)"
    echo "- wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, keep-alive, \`GET /\` with a sticky session (one replicated write per request, sync mode); $ROUNDS round(s) after a $WARMUP warm-up each; medians"
    echo
    echo "| front end | req/s | p50 µs | p99 µs | front-end CPU µs/req | req/s ÷ proxy_http | p99 ÷ proxy_http | CPU ÷ proxy_http | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for target in "${TARGETS[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$target" \
            "$(fmt0 "$(median "$target" 3)")" "$(fmt0 "$(median "$target" 4)")" "$(fmt0 "$(median "$target" 5)")" \
            "$(median "$target" 9)" \
            "$(ratio "$(median "$target" 3)" "$base_rps")" "$(ratio "$(median "$target" 5)" "$base_p99")" \
            "$(ratio "$(median "$target" 9)" "$base_cpu")" \
            "$(($(total "$target" 7) + $(total "$target" 8)))"
    done
    echo
    echo "Front-end CPU: Apache's processes (the three Apache targets share them; each run measures its own window) or the deltacast balancer, per request. The nodes' CPU is not counted."
}

main() {
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a whole number ≥ 1, got '$ROUNDS'"
    [[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a whole number ≥ 1"
    [[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a whole number ≥ 1"
    [[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must be like 10s, got '$DURATION'"
    [[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must be like 2s, got '$WARMUP'"
    command -v python3 >/dev/null || die "python3 is needed to find free ports"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    HZ=$(getconf CLK_TCK)

    install_tools
    build_deltacast

    TMP=$(mktemp -d /tmp/deltacast-front-ends-bench.XXXXXX)
    # Apache's children run as nobody when started as root: let them in.
    chmod 755 "$TMP"
    RESULTS=$TMP/results.tsv
    : >"$RESULTS"
    CLUSTER="bench-front-ends-$$"
    MULTICAST="228.0.0.4:$(free_udp_port)"

    read -r H1 H2 R1 R2 A1 A2 P_proxy_http P_proxy_ajp P_jk P_deltacast <<<"$(free_ports 10)"
    start_node n1 "$H1" "$R1" "$A1"
    start_node n2 "$H2" "$R2" "$A2"
    wait_converged
    start_apache
    start_balancer
    declare -gA PORT=([proxy_http]=$P_proxy_http [proxy_ajp]=$P_proxy_ajp [jk]=$P_jk [deltacast]=$P_deltacast)
    declare -gA CPU_PID=([proxy_http]=$PID_apache [proxy_ajp]=$PID_apache [jk]=$PID_apache [deltacast]=$PID_deltacast)
    declare -gA COOKIE=()
    local target round
    for target in "${TARGETS[@]}"; do
        COOKIE[$target]=$(session_cookie "${PORT[$target]}")
        log "$target on 127.0.0.1:${PORT[$target]}, session ${COOKIE[$target]##*.}"
    done
    for target in "${TARGETS[@]}"; do
        log "warm-up $target ($WARMUP)"
        run_wrk "${PORT[$target]}" "${COOKIE[$target]}" "$WARMUP" "$TMP/warmup.txt"
    done
    for round in $(seq "$ROUNDS"); do
        for target in "${TARGETS[@]}"; do
            measure "$round" "$target"
        done
    done

    local text errors
    text=$(report)
    printf '%s\n' "$text"
    [[ -n $OUT ]] && printf '%s\n' "$text" >"$OUT" && log "report written to $OUT"
    errors=$(awk -F'\t' '{s += $7 + $8} END {print s + 0}' "$RESULTS")
    if ((errors > 0)); then
        log "FAILED: $errors requests failed (socket errors or non-2xx answers); see the table"
        exit 1
    fi
}

main "$@"
