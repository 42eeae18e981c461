#!/usr/bin/env bash
# spgate audit profile: instructions per audit record, under callgrind, split into the writer
# thread's, the console statistics thread's and the caller's (`Auditor::record`) share.
#
#   bench/audit_profile.sh                     # 1,000 records/s for 2 s
#   AUDIT_PROFILE_RATE=5000 bench/audit_profile.sh
#   AUDIT_BENCH_TAP=0 bench/audit_profile.sh   # without the console's tap
#
# Runs the paced part of `cargo bench --bench audit` (AUDIT_BENCH_PACED_ONLY=1; the console
# tap attached unless AUDIT_BENCH_TAP=0) under `valgrind --tool=callgrind --separate-threads=yes`
# and reads one file per thread: the writer thread's (its whole life: the records, a few
# idle wake-ups and its shutdown), the console statistics thread's, and from the main thread
# the inclusive cost of the bench's `record_one` (the request path's `Auditor::record` call).
# Prints the instructions per record of each and their heaviest functions, and keeps the
# callgrind files. Callgrind counts user-space instructions only: write(2), fsync, futex and
# context switches are not in them (`cargo bench --bench audit` measures those as CPU time).
# Valgrind has no SHA extensions, so ring hashes with its AVX code here where the machine may
# use SHA-NI natively. See bench/README.md.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

AUDIT_PROFILE_RATE="${AUDIT_PROFILE_RATE:-1000}"       # records per second
AUDIT_PROFILE_SECONDS="${AUDIT_PROFILE_SECONDS:-2}"    # how long
AUDIT_PROFILE_TOP="${AUDIT_PROFILE_TOP:-25}"           # functions listed
AUDIT_PROFILE_OUT="${AUDIT_PROFILE_OUT:-$BENCH_DIR/results/profile}"

log() { printf '[audit-profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in AUDIT_PROFILE_RATE AUDIT_PROFILE_SECONDS AUDIT_PROFILE_TOP; do
    [[ "${!v}" =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "$v must be a positive whole number"
done
for t in valgrind callgrind_annotate python3; do
    command -v "$t" >/dev/null 2>&1 || die "$t is required (valgrind: apt-get install valgrind)"
done

if [[ -z "${AUDIT_BENCH_BIN:-}" ]]; then
    log "building the audit bench (cargo bench --bench audit --no-run)"
    AUDIT_BENCH_BIN="$(cd "$REPO" && cargo bench --locked --bench audit --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "audit":
        print(m["executable"])')"
fi
[[ -x "$AUDIT_BENCH_BIN" ]] || die "no audit bench binary (set AUDIT_BENCH_BIN)"

WORK="$(mktemp -d /tmp/spgate-audit-profile.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$AUDIT_PROFILE_OUT"
RECORDS=$((AUDIT_PROFILE_RATE * AUDIT_PROFILE_SECONDS))
log "$RECORDS records at $AUDIT_PROFILE_RATE/s under callgrind: $AUDIT_BENCH_BIN"
AUDIT_BENCH_PACED_ONLY=1 AUDIT_BENCH_RATES="$AUDIT_PROFILE_RATE" AUDIT_BENCH_SECONDS="$AUDIT_PROFILE_SECONDS" \
    valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$WORK/callgrind.out" "$AUDIT_BENCH_BIN" --bench >"$WORK/bench.out" 2>&1 ||
    { cat "$WORK/bench.out" >&2; die "the bench failed under valgrind"; }
grep 'audit paced' "$WORK/bench.out" >&2 || true

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
writer="" caller="" tap=""
for f in "$WORK"/callgrind.out-*; do
    # The main thread appends the writer's first records too (`Auditor::start`).
    if grep -q 'record_one' "$f"; then
        caller="$f"
    elif grep -q 'ChainWriter::append' "$f"; then
        writer="$f"
    elif grep -q 'console::stats::Stats::count' "$f"; then
        tap="$f"
    fi
done
[[ -n "$writer" && -n "$caller" ]] || die "no writer or caller thread in the callgrind files"
: >"$WORK/tap.txt"
for t in writer caller tap; do
    [[ -n "${!t}" ]] || continue
    cp "${!t}" "$AUDIT_PROFILE_OUT/audit-$t-$STAMP.out"
    callgrind_annotate --auto=no --inclusive=no --threshold=100 "${!t}" >"$WORK/$t.txt" 2>/dev/null
done
callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$caller" >"$WORK/caller-incl.txt" 2>/dev/null

python3 "$BENCH_DIR/audit_profile.py" "$WORK" "$RECORDS" "$AUDIT_PROFILE_TOP"
log "kept $AUDIT_PROFILE_OUT/audit-{writer,caller,tap}-$STAMP.out"
