#!/usr/bin/env bash
# spgate profile: instructions per request on the bench's request path, under callgrind.
#
#   bench/profile.sh                          # 2000 requests, 8 connections, audit on
#   PROFILE_REQUESTS=5000 bench/profile.sh
#
# Callgrind counts instructions, not time: the count is the same from run to run on a noisy
# machine (to about 1%), so it shows what a change saves even where bench/run.sh's wall-clock
# figures cannot. The sandbox upstream runs natively; only the gateway runs under valgrind.
# The counters are zeroed after a warm-up (connections, token cache, store caches) and dumped
# after the measured requests, so start-up and shutdown are not in the figures. The idle work
# of the gateway during the run (timers, the audit writer's 50 ms wake-ups) is included; it is
# small at the ~100 requests/s the gateway manages under valgrind.
#
# Prints the instructions per request, the heaviest functions per request (inclusive and
# self), and keeps the callgrind file (callgrind_annotate / kcachegrind can read it).
# See bench/README.md.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

PROFILE_REQUESTS="${PROFILE_REQUESTS:-2000}"       # measured requests
PROFILE_WARMUP="${PROFILE_WARMUP:-200}"             # requests before the counters are zeroed
PROFILE_CONNECTIONS="${PROFILE_CONNECTIONS:-8}"     # keep-alive connections of the load
PROFILE_AUDIT="${PROFILE_AUDIT:-1}"                 # 0: the gateway keeps no audit log
PROFILE_TOP="${PROFILE_TOP:-30}"                    # functions listed per table
PROFILE_OUT="${PROFILE_OUT:-$BENCH_DIR/results/profile}"
PROFILE_PATH="${PROFILE_PATH:-/supplySources/2020-07-01/supplySources}" # bench/run.sh's request
SPGATE_BIN="${SPGATE_BIN:-$REPO/target/release/spgate}"

log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in PROFILE_REQUESTS PROFILE_WARMUP PROFILE_CONNECTIONS PROFILE_TOP; do
    [[ "${!v}" =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "$v must be a positive whole number"
done
for t in valgrind callgrind_control callgrind_annotate curl python3; do
    command -v "$t" >/dev/null 2>&1 || die "$t is required (valgrind: apt-get install valgrind)"
done
[[ -x "$SPGATE_BIN" ]] || die "no spgate binary at $SPGATE_BIN (cargo build --release, or set SPGATE_BIN)"

WORK="$(mktemp -d /tmp/spgate-profile.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for_line FILE REGEX PID SECONDS: the first match of REGEX in FILE.
wait_for_line() {
    local file=$1 re=$2 pid=$3 secs=$4
    for _ in $(seq 1 $((secs * 10))); do
        if grep -Eq "$re" "$file" 2>/dev/null; then
            grep -Eo "$re" "$file" | head -1
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$file" "$file.err" >&2 2>/dev/null; die "process $pid exited early"; }
        sleep 0.1
    done
    die "timed out waiting for /$re/ in $file"
}

"$SPGATE_BIN" sandbox --listen 127.0.0.1:0 --quotas off --token-ttl-seconds 86400 \
    >"$WORK/sandbox.out" 2>"$WORK/sandbox.out.err" &
PIDS+=($!)
SANDBOX_URL="$(wait_for_line "$WORK/sandbox.out" 'http://127\.0\.0\.1:[0-9]+' "${PIDS[0]}" 10)"

AUDIT_ARGS=()
[[ "$PROFILE_AUDIT" == 0 ]] && AUDIT_ARGS=(--no-audit)
mkdir -p "$WORK/data" "$PROFILE_OUT"
log "gateway under callgrind (start-up takes a while): spgate demo --upstream $SANDBOX_URL ${AUDIT_ARGS[*]}"
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
    "$SPGATE_BIN" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream "$SANDBOX_URL" \
    --data-dir "$WORK/data" "${AUDIT_ARGS[@]}" >"$WORK/gateway.out" 2>"$WORK/gateway.out.err" &
GW_PID=$!
PIDS+=("$GW_PID")
EXPORT_LINE="$(wait_for_line "$WORK/gateway.out" 'export SPGATE_URL=[^ ]+ SPGATE_KEY=[^ ]+ SPGATE_SELLER=[^ ]+' "$GW_PID" 180)"
URL="$(grep -Eo 'SPGATE_URL=[^ ]+' <<<"$EXPORT_LINE" | cut -d= -f2-)$PROFILE_PATH"
KEY="$(grep -Eo 'SPGATE_KEY=[^ ]+' <<<"$EXPORT_LINE" | cut -d= -f2-)"
SELLER="$(grep -Eo 'SPGATE_SELLER=[^ ]+' <<<"$EXPORT_LINE" | cut -d= -f2-)"
wait_for_line "$WORK/gateway.out" 'Serving until Ctrl-C' "$GW_PID" 60 >/dev/null

# load N: N requests on PROFILE_CONNECTIONS keep-alive connections (curl --parallel); fails
# unless every answer is 200.
load() {
    local n=$1 i
    : >"$WORK/urls"
    for ((i = 0; i < n; i++)); do printf 'url = "%s"\noutput = /dev/null\n' "$URL" >>"$WORK/urls"; done
    curl -s -Z --parallel-max "$PROFILE_CONNECTIONS" -K "$WORK/urls" --max-time 60 \
        -H "Authorization: Bearer $KEY" -H "x-spgate-seller: $SELLER" -w '%{http_code}\n' \
        >"$WORK/codes" 2>/dev/null || true
    local ok
    ok="$(grep -c '^200$' "$WORK/codes" || true)"
    ((ok == n)) || die "$((n - ok)) of $n requests were not answered 200: $(sort "$WORK/codes" | uniq -c | tr '\n' ' ')"
}

log "warm-up: $PROFILE_WARMUP requests"
load "$PROFILE_WARMUP"
callgrind_control -z "$GW_PID" >/dev/null
log "measuring: $PROFILE_REQUESTS requests on $PROFILE_CONNECTIONS connections to $PROFILE_PATH"
t0=$(date +%s.%N)
load "$PROFILE_REQUESTS"
t1=$(date +%s.%N)
callgrind_control -d "$GW_PID" >/dev/null
for _ in $(seq 1 100); do
    f="$(ls "$WORK"/callgrind.out.*.1 2>/dev/null | head -1 || true)"
    [[ -n "$f" && -s "$f" ]] && break
    sleep 0.1
done
[[ -n "$f" && -s "$f" ]] || die "callgrind wrote no dump"
sleep 0.5 # the dump is written in one go, but give it a moment to be closed
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
KEEP="$PROFILE_OUT/callgrind-$STAMP.out"
cp "$f" "$KEEP"

callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$KEEP" >"$WORK/incl.txt" 2>/dev/null
callgrind_annotate --auto=no --inclusive=no --threshold=100 "$KEEP" >"$WORK/self.txt" 2>/dev/null
python3 - "$WORK/incl.txt" "$WORK/self.txt" "$PROFILE_REQUESTS" "$PROFILE_TOP" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')" "$KEEP" <<'EOF'
import re, sys
incl_path, self_path, n, top, secs, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
line = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$")

def rows(path):
    total, out = None, []
    for l in open(path, errors="replace"):
        m = line.match(l)
        if not m:
            continue
        ir, what = int(m.group(1).replace(",", "")), m.group(2)
        if what.startswith("PROGRAM TOTALS"):
            total = ir
            continue
        # "file:function [object]" -> "function"
        what = re.sub(r"\s*\[[^\]]*\]$", "", what)
        fn = what.split(":", 1)[1] if ":" in what else what
        out.append((ir, fn))
    return total, out

total, incl = rows(incl_path)
_, selfc = rows(self_path)
print(f"\n== callgrind: {n} requests in {secs} s under valgrind; dump {keep} ==")
print(f"instructions per request (whole process, all threads): {total / n:,.0f}")
def show(title, items, pred):
    print(f"\n-- {title} (instructions per request) --")
    k = 0
    # One line per function: the largest entry (callgrind lists inlined parts by source file).
    merged = {}
    for ir, fn in items:
        merged[fn] = max(merged.get(fn, 0), ir)
    for fn, ir in sorted(merged.items(), key=lambda x: -x[1]):
        if not pred(fn):
            continue
        print(f"{ir / n:>10,.0f}  {100.0 * ir / total:5.1f}%  {fn[:150]}")
        k += 1
        if k >= top:
            break
show("inclusive, spgate's own functions", incl, lambda f: "spgate::" in f)
# After callgrind_control -z, the frames that were already on each thread's stack (thread
# start, the tokio worker loop) are listed with everything below them as "self": skip those.
scaffold = {fn for ir, fn in selfc if ir > total / 2}
show("self", selfc, lambda f: f not in scaffold)
EOF
log "kept $KEEP (callgrind_annotate $KEEP | less)"
