#!/usr/bin/env bash
# spgate benchmark: added latency and maximum throughput of the gateway, next to the sandbox
# upstream called directly and nginx as a plain reverse proxy, all in one run.
#
#   bench/run.sh                       # defaults: 10 s per point, 1000 and 5000 req/s
#   BENCH_SECONDS=5 bench/run.sh       # shorter points
#   bench/run.sh --compare bench/results/FILE.json   # then every figure against a committed result
#
# See bench/README.md for what it measures, every knob, and how to read the output.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

# ---- knobs -----------------------------------------------------------------------------------
BENCH_SECONDS="${BENCH_SECONDS:-10}"                  # duration of each measured point
BENCH_WARMUP_SECONDS="${BENCH_WARMUP_SECONDS:-2}"     # warm-up per path (discarded)
BENCH_RATES="${BENCH_RATES:-1000 5000}"               # fixed request rates (req/s)
BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-50}"          # connections for the fixed-rate points
BENCH_MAX_CONNECTIONS="${BENCH_MAX_CONNECTIONS:-64}"  # connections for the max-throughput point
BENCH_NGINX_WORKERS="${BENCH_NGINX_WORKERS:-auto}"    # nginx worker_processes
BENCH_PAUSE_SECONDS="${BENCH_PAUSE_SECONDS:-1}"       # idle gap between points
BENCH_OUT="${BENCH_OUT:-$BENCH_DIR/results/latest.json}"
BENCH_KEEP_WORKDIR="${BENCH_KEEP_WORKDIR:-0}"         # 1: keep the temp dir (logs, configs)
BENCH_ENFORCE_TARGETS="${BENCH_ENFORCE_TARGETS:-0}"   # 1: exit non-zero when a target is missed
BENCH_AUDIT="${BENCH_AUDIT:-1}"                       # 0: spgate keeps no audit log (its cost)
BENCH_STORE="${BENCH_STORE:-embedded}"                # postgres: spgate serve on the postgres store
BENCH_PII="${BENCH_PII:-1}"                           # 1: also the PII scenario (bench/pii-scenario.sh)
BENCH_POSTGRES_URL="${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
SPGATE_BIN="${SPGATE_BIN:-}"                          # prebuilt spgate; default: cargo build --release
BENCH_REF="${BENCH_REF:-}"                            # build this git ref instead of the work tree
BENCH_TARGET_DIR="${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}}"
BENCH_COMMIT="${BENCH_COMMIT:-}"                      # with SPGATE_BIN: the commit it was built from
BENCH_IDLE_CONNECTIONS="${BENCH_IDLE_CONNECTIONS:-2000}" # idle keep-alive connections (0 skips)
BENCH_IDLE_SOAK_SECONDS="${BENCH_IDLE_SOAK_SECONDS:-60}" # how long they stay idle

PATHS=(direct nginx spgate)
# An operation Amazon publishes no usage plan for, so the gateway's limiter admits every request
# (with a plan, the gateway would rightly answer 429 long before the load levels measured here).
REQUEST_PATH="/supplySources/2020-07-01/supplySources"
LWA_CLIENT_ID="amzn1.application-oa2-client.spgate-demo"
LWA_CLIENT_SECRET="spgate-demo-client-secret"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- arguments: --compare FILE (issue 16) ----------------------------------------------------
# After the run, report.py prints the change of every figure against FILE (a result this script
# wrote, e.g. one committed under bench/results/). `bench/report.py compare OLD NEW` does the
# same for two results without running anything.
COMPARE_FILE=""
while (($# > 0)); do
    case $1 in
        --compare)
            (($# >= 2)) || die "--compare needs a FILE"
            COMPARE_FILE=$2
            shift 2
            ;;
        --compare=*)
            COMPARE_FILE=${1#--compare=}
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$1' (knobs are environment variables; see bench/README.md)" ;;
    esac
done
if [[ -n "$COMPARE_FILE" ]]; then
    [[ -r "$COMPARE_FILE" ]] || die "--compare: cannot read $COMPARE_FILE"
    COMPARE_FILE="$(cd "$(dirname "$COMPARE_FILE")" && pwd)/$(basename "$COMPARE_FILE")"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert "points" in d' "$COMPARE_FILE" 2>/dev/null \
        || die "--compare: $COMPARE_FILE is not a bench/run.sh result"
fi
# ---- end of arguments --------------------------------------------------------------------------

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for v in BENCH_SECONDS BENCH_WARMUP_SECONDS BENCH_CONNECTIONS BENCH_MAX_CONNECTIONS BENCH_PAUSE_SECONDS \
    BENCH_IDLE_CONNECTIONS BENCH_IDLE_SOAK_SECONDS; do
    is_uint "${!v}" || die "$v must be a whole number (got '${!v}')"
done
# Bounded: every load stops by itself.
((BENCH_SECONDS >= 1 && BENCH_SECONDS <= 300)) || die "BENCH_SECONDS must be 1..300"
((BENCH_WARMUP_SECONDS <= 60)) || die "BENCH_WARMUP_SECONDS must be 0..60"
((BENCH_IDLE_CONNECTIONS <= 20000)) || die "BENCH_IDLE_CONNECTIONS must be 0..20000"
((BENCH_IDLE_SOAK_SECONDS <= 600)) || die "BENCH_IDLE_SOAK_SECONDS must be 0..600"
for r in $BENCH_RATES; do
    is_uint "$r" && ((r > 0 && r <= 200000)) || die "BENCH_RATES: bad rate '$r'"
done
[[ "$BENCH_NGINX_WORKERS" == auto ]] || is_uint "$BENCH_NGINX_WORKERS" || die "BENCH_NGINX_WORKERS: 'auto' or a number"
[[ "$BENCH_STORE" == embedded || "$BENCH_STORE" == postgres ]] || die "BENCH_STORE: 'embedded' or 'postgres'"
[[ "$BENCH_PII" == 0 || "$BENCH_PII" == 1 ]] || die "BENCH_PII: 0 or 1"

# ---- cleanup ---------------------------------------------------------------------------------
WORK="$(mktemp -d /tmp/spgate-bench.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$BENCH_KEEP_WORKDIR" == 1 ]]; then
        log "kept work dir $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools -----------------------------------------------------------------------------------
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/sbin:/sbin"

ensure_oha() {
    if command -v oha >/dev/null 2>&1; then
        log "oha: $(command -v oha) ($(oha --version 2>/dev/null | head -1))"
        return
    fi
    log "oha not found: installing it from crates.io (cargo install oha --locked; takes a few minutes)"
    cargo install oha --locked
    command -v oha >/dev/null 2>&1 || die "oha still not on PATH after cargo install"
}

ensure_nginx() {
    if command -v nginx >/dev/null 2>&1; then
        log "nginx: $(command -v nginx) ($(nginx -v 2>&1 | head -1))"
        return
    fi
    local sudo=""
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "nginx is missing and we are not root: install the Debian package nginx"
        sudo="sudo"
    fi
    log "nginx not found: installing Debian's package (apt-get update && apt-get install -y nginx)"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nginx
    command -v nginx >/dev/null 2>&1 || die "nginx still not on PATH after apt-get install"
}

ensure_spgate() {
    if [[ -n "$SPGATE_BIN" ]]; then
        [[ -x "$SPGATE_BIN" ]] || die "SPGATE_BIN=$SPGATE_BIN is not executable"
        log "spgate: using prebuilt $SPGATE_BIN"
        return
    fi
    local src="$REPO"
    if [[ -n "$BENCH_REF" ]]; then
        # Build the committed tree at BENCH_REF, ignoring uncommitted changes in the work tree.
        src="$WORK/src"
        mkdir -p "$src"
        git -C "$REPO" archive --format=tar "$BENCH_REF" | tar -x -C "$src" || die "cannot export $BENCH_REF"
        log "exported $BENCH_REF ($(git -C "$REPO" rev-parse --short "$BENCH_REF")) to $src"
    fi
    log "building spgate (release) in $src with CARGO_TARGET_DIR=$BENCH_TARGET_DIR"
    (cd "$src" && CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build --release --bin spgate)
    SPGATE_BIN="$BENCH_TARGET_DIR/release/spgate"
    [[ -x "$SPGATE_BIN" ]] || die "build produced no $SPGATE_BIN"
}

SPGATE_BIN_GIVEN="$SPGATE_BIN"
for t in curl python3; do
    command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
ensure_oha
ensure_nginx
ensure_spgate

# Which spelling of oha's flags this version has.
OHA_HELP="$(oha --help 2>&1)"
if grep -q -- '--output-format' <<<"$OHA_HELP"; then
    OHA_JSON=(--output-format json)
else
    OHA_JSON=(-j)
fi
OHA_WAIT=()
if grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$OHA_HELP"; then
    # Requests in flight at the deadline finish and count, instead of being reported as aborted.
    OHA_WAIT=(--wait-ongoing-requests-after-deadline)
fi
grep -q -- '--latency-correction' <<<"$OHA_HELP" || die "this oha has no --latency-correction; upgrade it (cargo install oha --locked)"

# ---- helpers ---------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for_line FILE REGEX PID: waits (10 s at most) for a line matching REGEX in FILE.
wait_for_line() {
    local file=$1 re=$2 pid=$3
    for _ in $(seq 1 100); do
        if grep -Eq "$re" "$file" 2>/dev/null; then
            grep -Eo "$re" "$file" | head -1
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; die "process $pid exited early (log above)"; }
        sleep 0.1
    done
    cat "$file" >&2
    die "timed out waiting for /$re/ in $file"
}

# check_200 NAME URL HEADER...: one request by curl; dies unless it answers 200.
check_200() {
    local name=$1 url=$2
    shift 2
    local args=() h code
    for h in "$@"; do args+=(-H "$h"); done
    code="$(curl -sS -o "$WORK/check-$name.body" -w '%{http_code}' --max-time 10 "${args[@]}" "$url")" || die "$name: curl failed"
    if [[ "$code" != 200 ]]; then
        cat "$WORK/check-$name.body" >&2 || true
        die "$name: $url answered $code, not 200"
    fi
    log "$name: $url -> 200 ($(wc -c <"$WORK/check-$name.body") bytes)"
}

# ---- start the three targets -----------------------------------------------------------------
log "work dir: $WORK"
mkdir -p "$WORK/raw" "$WORK/nginx/tmp" "$WORK/spgate-data"

log "starting the sandbox upstream: spgate sandbox --listen 127.0.0.1:0 --quotas off"
"$SPGATE_BIN" sandbox --listen 127.0.0.1:0 --quotas off --token-ttl-seconds 86400 \
    >"$WORK/sandbox.out" 2>"$WORK/sandbox.err" &
SANDBOX_PID=$!
PIDS+=("$SANDBOX_PID")
SANDBOX_URL="$(wait_for_line "$WORK/sandbox.out" 'http://127\.0\.0\.1:[0-9]+' "$SANDBOX_PID")"
SANDBOX_PORT="${SANDBOX_URL##*:}"
log "sandbox at $SANDBOX_URL (pid $SANDBOX_PID)"

log "getting an access token from the sandbox's LWA"
TOKEN_JSON="$(curl -sS --max-time 10 -X POST "$SANDBOX_URL/auth/o2/token" \
    --data-urlencode grant_type=refresh_token \
    --data-urlencode 'refresh_token=Atzr|bench' \
    --data-urlencode "client_id=$LWA_CLIENT_ID" \
    --data-urlencode "client_secret=$LWA_CLIENT_SECRET")"
ACCESS_TOKEN="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' <<<"$TOKEN_JSON")" \
    || die "LWA answered without an access_token: $TOKEN_JSON"

AUDIT_ARGS=()
[[ "$BENCH_AUDIT" == 0 ]] && AUDIT_ARGS=(--no-audit)
if [[ "$BENCH_STORE" == postgres ]]; then
    source "$BENCH_DIR/postgres-store.sh"
else
log "starting spgate: spgate demo --upstream $SANDBOX_URL ${AUDIT_ARGS[*]}"
"$SPGATE_BIN" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream "$SANDBOX_URL" --data-dir "$WORK/spgate-data" "${AUDIT_ARGS[@]}" \
    >"$WORK/spgate.out" 2>"$WORK/spgate.err" &
SPGATE_PID=$!
PIDS+=("$SPGATE_PID")
EXPORT_LINE="$(wait_for_line "$WORK/spgate.out" 'export SPGATE_URL=[^ ]+ SPGATE_KEY=[^ ]+ SPGATE_SELLER=[^ ]+' "$SPGATE_PID")"
SPGATE_URL="$(grep -Eo 'SPGATE_URL=[^ ]+' <<<"$EXPORT_LINE" | cut -d= -f2-)"
SPGATE_KEY="$(grep -Eo 'SPGATE_KEY=[^ ]+' <<<"$EXPORT_LINE" | cut -d= -f2-)"
SPGATE_SELLER="$(grep -Eo 'SPGATE_SELLER=[^ ]+' <<<"$EXPORT_LINE" | cut -d= -f2-)"
log "spgate at $SPGATE_URL (pid $SPGATE_PID), seller $SPGATE_SELLER"
fi

NGINX_PORT="$(free_port)"
NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root;"
cat >"$WORK/nginx/nginx.conf" <<EOF
# Generated by bench/run.sh: a plain reverse proxy with upstream keepalive.
$NGINX_USER
daemon off;
master_process on;
worker_processes $BENCH_NGINX_WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    # Like hyper (spgate), keep client connections open for the whole run.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream sandbox {
        server 127.0.0.1:$SANDBOX_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
NGINX=(nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log")
"${NGINX[@]}" -t -q || die "nginx rejected the generated config ($WORK/nginx/nginx.conf)"
log "starting nginx on 127.0.0.1:$NGINX_PORT (worker_processes $BENCH_NGINX_WORKERS, upstream keepalive 64)"
"${NGINX[@]}" >"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
NGINX_URL="http://127.0.0.1:$NGINX_PORT"
for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$NGINX_URL/" && break
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$WORK/nginx/error.log" >&2; die "nginx exited"; }
    sleep 0.1
done

declare -A URL HDRS
URL[direct]="$SANDBOX_URL$REQUEST_PATH"
URL[nginx]="$NGINX_URL$REQUEST_PATH"
URL[spgate]="$SPGATE_URL$REQUEST_PATH"
HDRS[direct]="x-amz-access-token: $ACCESS_TOKEN"
HDRS[nginx]="x-amz-access-token: $ACCESS_TOKEN"
HDRS[spgate]="Authorization: Bearer $SPGATE_KEY"$'\n'"x-spgate-seller: $SPGATE_SELLER"

headers_of() { # prints one header per line
    printf '%s\n' "${HDRS[$1]}"
}

for p in "${PATHS[@]}"; do
    mapfile -t hs < <(headers_of "$p")
    check_200 "$p" "${URL[$p]}" "${hs[@]}"
done

# CPU time (user+system, all threads) of the process(es) serving a path, to compare the cost per
# request of nginx and spgate; the sandbox's own CPU is reported separately ("upstream").
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { # cpu_ticks "PID PID...": summed utime+stime in clock ticks
    local pid total=0 stat rest
    for pid in $1; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        rest="${stat##*) }" # fields from 3 on; the command name may hold spaces
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
machine_busy_ticks() { # all CPUs, user+nice+system, from /proc/stat (softirq, where loopback
    # traffic is partly processed, is left out: it belongs to no process)
    awk '/^cpu /{print $2+$3+$4; exit}' /proc/stat
}
children_cpu_s() { # children_cpu_s FILE: CPU seconds of waited-for children, from `times >FILE`
    awk 'NR==2{ for(i=1;i<=2;i++){ split($i,a,"m"); sub("s","",a[2]); t+=a[1]*60+a[2] } print t }' "$1"
}
proxy_pids() {
    case $1 in
        direct) echo "" ;;
        spgate) echo "$SPGATE_PID" ;;
        pii) echo "$PII_GW_PID" ;;
        nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
    esac
}
upstream_pid() {
    if [[ "$1" == pii ]]; then echo "$PII_SANDBOX_PID"; else echo "$SANDBOX_PID"; fi
}

# ---- load --------------------------------------------------------------------------------------
# run_oha PATH NAME SECONDS CONNECTIONS [RATE]: writes $WORK/raw/PATH-NAME.json
run_oha() {
    local p=$1 name=$2 secs=$3 conns=$4 rate=${5:-}
    local args=(--no-tui "${OHA_JSON[@]}" "${OHA_WAIT[@]}" -z "${secs}s" -c "$conns")
    if [[ -n "$rate" ]]; then
        args+=(-q "$rate" --latency-correction)
    fi
    local h
    mapfile -t hs < <(headers_of "$p")
    for h in "${hs[@]}"; do args+=(-H "$h"); done
    local proxy_before upstream_before proxy_after upstream_after busy_before busy_after oha_before oha_after
    proxy_before="$(cpu_ticks "$(proxy_pids "$p")")"
    upstream_before="$(cpu_ticks "$(upstream_pid "$p")")"
    busy_before="$(machine_busy_ticks)"
    times >"$WORK/times.before" # in this shell: `times` in $(...) would see only the subshell
    oha_before="$(children_cpu_s "$WORK/times.before")"
    # A hard stop well past the duration, in case oha hangs.
    timeout --kill-after=5 $((secs + 30)) oha "${args[@]}" "${URL[$p]}" >"$WORK/raw/$p-$name.json" 2>"$WORK/raw/$p-$name.err" \
        || die "oha failed for $p/$name: $(cat "$WORK/raw/$p-$name.err")"
    proxy_after="$(cpu_ticks "$(proxy_pids "$p")")"
    upstream_after="$(cpu_ticks "$(upstream_pid "$p")")"
    busy_after="$(machine_busy_ticks)"
    times >"$WORK/times.after"
    oha_after="$(children_cpu_s "$WORK/times.after")"
    local proxy_cpu=null
    [[ -n "$(proxy_pids "$p")" ]] \
        && proxy_cpu="$(awk -v a="$proxy_before" -v b="$proxy_after" -v t="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/t}')"
    # "other" = CPU used on the machine during the point by anything but oha, the proxy and the
    # sandbox: another build or test run. It makes the point noisy; the report flags it.
    printf '{"proxy_cpu_s": %s, "upstream_cpu_s": %s, "oha_cpu_s": %s, "machine_busy_cpu_s": %s, "seconds": %s, "cpus": %s}\n' \
        "$proxy_cpu" \
        "$(awk -v a="$upstream_before" -v b="$upstream_after" -v t="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/t}')" \
        "$(awk -v a="$oha_before" -v b="$oha_after" 'BEGIN{printf "%.2f", b-a}')" \
        "$(awk -v a="$busy_before" -v b="$busy_after" -v t="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/t}')" \
        "$secs" "$(nproc)" \
        >"$WORK/raw/$p-$name.cpu.json"
    python3 "$BENCH_DIR/report.py" brief "$WORK/raw/$p-$name.json" >&2
}

# Is anything else using the CPU? (A build or test run in parallel makes every number noisy.)
b0="$(machine_busy_ticks)"; sleep 2; b1="$(machine_busy_ticks)"
IDLE_BUSY_PCT="$(awk -v a="$b0" -v b="$b1" -v t="$CLK_TCK" -v n="$(nproc)" 'BEGIN{printf "%.0f", 100*(b-a)/t/2/n}')"
if ((IDLE_BUSY_PCT > 10)); then
    log "WARNING: the machine is ${IDLE_BUSY_PCT}% busy before the bench starts (another build or test?): results will be noisy"
else
    log "machine ${IDLE_BUSY_PCT}% busy before the bench starts"
fi

if ((BENCH_WARMUP_SECONDS > 0)); then
    for p in "${PATHS[@]}"; do
        log "warm-up $p: ${BENCH_WARMUP_SECONDS}s at 1000 req/s (discarded)"
        run_oha "$p" warmup "$BENCH_WARMUP_SECONDS" "$BENCH_CONNECTIONS" 1000
    done
fi

SCENARIOS=()
for r in $BENCH_RATES; do SCENARIOS+=("rate$r"); done
SCENARIOS+=(max)
# The paths run one after another inside each scenario, so slow drift of the machine hits all
# three alike; the order rotates between scenarios so that no path always goes first.
i=0
for s in "${SCENARIOS[@]}"; do
    order=("${PATHS[@]:i%3}" "${PATHS[@]:0:i%3}")
    i=$((i + 1))
    for p in "${order[@]}"; do
        sleep "$BENCH_PAUSE_SECONDS"
        if [[ "$s" == max ]]; then
            log "$p: max throughput, ${BENCH_MAX_CONNECTIONS} connections, ${BENCH_SECONDS}s"
            run_oha "$p" max "$BENCH_SECONDS" "$BENCH_MAX_CONNECTIONS"
        else
            rate="${s#rate}"
            log "$p: ${rate} req/s, ${BENCH_CONNECTIONS} connections, ${BENCH_SECONDS}s, latency-corrected"
            run_oha "$p" "$s" "$BENCH_SECONDS" "$BENCH_CONNECTIONS" "$rate"
        fi
    done
done

# ---- the PII scenario (issue 16): getOrder through a masking role, on a gateway of its own -------
if [[ "$BENCH_PII" == 1 ]]; then
    source "$BENCH_DIR/pii-scenario.sh"
fi

# ---- memory with idle keep-alive connections (issue 16) -----------------------------------------
# RSS of the proxy with BENCH_IDLE_CONNECTIONS connections that each made one request and then
# stay idle for BENCH_IDLE_SOAK_SECONDS (bench/idle.py). spgate closes a connection idle for
# server.header_read_timeout_ms (10 s by default); nginx here keeps them 75 s.
if ((BENCH_IDLE_CONNECTIONS > 0)); then
    for p in spgate nginx; do
        sleep "$BENCH_PAUSE_SECONDS"
        log "$p: ${BENCH_IDLE_CONNECTIONS} idle keep-alive connections, ${BENCH_IDLE_SOAK_SECONDS}s soak"
        mapfile -t hs < <(headers_of "$p")
        timeout --kill-after=5 $((BENCH_IDLE_SOAK_SECONDS + 120)) python3 "$BENCH_DIR/idle.py" "${URL[$p]}" \
            "$BENCH_IDLE_CONNECTIONS" "$BENCH_IDLE_SOAK_SECONDS" "$(proxy_pids "$p")" "${hs[@]}" \
            >"$WORK/raw/idle-$p.json" 2>"$WORK/raw/idle-$p.err" \
            || die "idle connections on $p failed: $(cat "$WORK/raw/idle-$p.err")"
    done
fi
# ---- end of idle connections ---------------------------------------------------------------------

curl -sS --max-time 5 "$SANDBOX_URL/_sandbox/stats" >"$WORK/sandbox-stats.json" 2>/dev/null || echo '{}' >"$WORK/sandbox-stats.json"

# ---- report ------------------------------------------------------------------------------------
mkdir -p "$(dirname "$BENCH_OUT")"
RAW_KEEP="$(dirname "$BENCH_OUT")/raw"
rm -rf "$RAW_KEEP" && mkdir -p "$RAW_KEEP" && cp "$WORK"/raw/*.json "$RAW_KEEP"/
set +e
git_dirty=false
[[ -z "$BENCH_REF" && -n "$(git -C "$REPO" status --porcelain -- . ':!bench' 2>/dev/null)" ]] && git_dirty=true
built_from="work tree $REPO"
[[ -n "$BENCH_REF" ]] && built_from="git ref $BENCH_REF"
[[ -n "$SPGATE_BIN_GIVEN" ]] && built_from="prebuilt binary (SPGATE_BIN)"
BENCH_META_SECONDS_PER_POINT="$BENCH_SECONDS" \
BENCH_META_WARMUP_SECONDS="$BENCH_WARMUP_SECONDS" \
BENCH_META_RATES="$BENCH_RATES" \
BENCH_META_AUDIT="$BENCH_AUDIT" \
BENCH_META_PII_SCENARIO="$BENCH_PII" \
BENCH_META_PII_REQUEST="GET /orders/v0/orders/{id}, role mixed, PII cache off" \
BENCH_META_IDLE_CONNECTIONS="$BENCH_IDLE_CONNECTIONS" \
BENCH_META_IDLE_SOAK_SECONDS="$BENCH_IDLE_SOAK_SECONDS" \
BENCH_META_CONNECTIONS_FIXED_RATE="$BENCH_CONNECTIONS" \
BENCH_META_CONNECTIONS_MAX="$BENCH_MAX_CONNECTIONS" \
BENCH_META_NGINX_WORKER_PROCESSES="$BENCH_NGINX_WORKERS" \
BENCH_META_REQUEST="GET $REQUEST_PATH" \
BENCH_META_OHA_VERSION="$(oha --version 2>/dev/null | head -1)" \
BENCH_META_NGINX_VERSION="$(nginx -v 2>&1 | head -1)" \
BENCH_META_SPGATE_BIN="$SPGATE_BIN" \
BENCH_META_GIT_COMMIT="${BENCH_COMMIT:-$(git -C "$REPO" rev-parse "${BENCH_REF:-HEAD}" 2>/dev/null || echo unknown)}" \
BENCH_META_GIT_DIRTY="$git_dirty" \
BENCH_META_BUILT_FROM="$built_from" \
BENCH_META_CPUS="$(nproc)" \
BENCH_META_KERNEL="$(uname -sr)" \
BENCH_META_CPU_MODEL="$(awk -F': *' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null)" \
BENCH_META_MEMORY_KB="$(awk '/^MemTotal/{print $2; exit}' /proc/meminfo 2>/dev/null)" \
BENCH_META_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
BENCH_META_RUSTC="$(rustc --version 2>/dev/null || echo unknown)" \
BENCH_META_BUSY_PCT_BEFORE_START="$IDLE_BUSY_PCT" \
python3 "$BENCH_DIR/report.py" full "$WORK/raw" "$BENCH_OUT" "$WORK/sandbox-stats.json" "$BENCH_RATES"
rc=$?
set -e
log "results: $BENCH_OUT (raw oha output in $RAW_KEEP)"
if ((rc == 2)); then
    die "some responses were not 200 or oha reported errors: the run is not a valid measurement"
elif ((rc == 3)) && [[ "$BENCH_ENFORCE_TARGETS" == 1 ]]; then
    die "targets missed (BENCH_ENFORCE_TARGETS=1)"
elif ((rc != 0 && rc != 3)); then
    die "report failed (rc $rc)"
fi
# ---- --compare FILE (issue 16) -----------------------------------------------------------------
if [[ -n "$COMPARE_FILE" ]]; then
    python3 "$BENCH_DIR/report.py" compare "$COMPARE_FILE" "$BENCH_OUT" || die "compare failed"
fi
