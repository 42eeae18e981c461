#!/usr/bin/env bash
# spgate audit profile: instructions per audit record, under callgrind, split into the writer
# thread's and the caller's (`Auditor::record`) share.
#
#   bench/audit_profile.sh                     # 1,000 records/s for 2 s
#   AUDIT_PROFILE_RATE=5000 bench/audit_profile.sh
#
# Runs the paced part of `cargo bench --bench audit` (AUDIT_BENCH_PACED_ONLY=1) under
# `valgrind --tool=callgrind --separate-threads=yes`, collecting only inside the writer
# thread's loop (`Writer::run`, its shutdown `Writer::stop` excluded) and inside the bench's
# `record_one` (the request path's `Auditor::record` call). Prints the instructions per record
# of each and the writer's heaviest functions (self), and keeps the callgrind files.
# Under valgrind the pacing is slow, so fewer records reach each write window than natively;
# the per-record figures are what to compare between commits. See bench/README.md.
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
    valgrind --tool=callgrind --separate-threads=yes --collect-atstart=no \
    --toggle-collect='*audit::writer::Writer::run*' --toggle-collect='*audit::writer::Writer::stop*' --toggle-collect='*record_one*' \
    --callgrind-out-file="$WORK/callgrind.out" "$AUDIT_BENCH_BIN" --bench >"$WORK/bench.out" 2>&1 ||
    { cat "$WORK/bench.out" >&2; die "the bench failed under valgrind"; }
grep 'audit paced' "$WORK/bench.out" >&2 || true

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
writer="" caller=""
for f in "$WORK"/callgrind.out-*; do
    grep -q 'Writer.*run' "$f" && writer="$f"
    grep -q 'record_one' "$f" && caller="$f"
done
[[ -n "$writer" && -n "$caller" ]] || die "no writer or caller thread in the callgrind files"
cp "$writer" "$AUDIT_PROFILE_OUT/audit-writer-$STAMP.out"
cp "$caller" "$AUDIT_PROFILE_OUT/audit-caller-$STAMP.out"
callgrind_annotate --auto=no --inclusive=no --threshold=100 "$writer" >"$WORK/writer.txt" 2>/dev/null
callgrind_annotate --auto=no --inclusive=no --threshold=100 "$caller" >"$WORK/caller.txt" 2>/dev/null

python3 - "$WORK/writer.txt" "$WORK/caller.txt" "$RECORDS" "$AUDIT_PROFILE_TOP" <<'EOF'
import re, sys
writer_path, caller_path, n, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
line = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$")

def rows(path):
    total, out = 0, {}
    for l in open(path, errors="replace"):
        m = line.match(l)
        if not m:
            continue
        ir, what = int(m.group(1).replace(",", "")), m.group(2)
        if what.startswith("PROGRAM TOTALS"):
            total = ir
            continue
        what = re.sub(r"\s*\[[^\]]*\]$", "", what)
        fn = what.split(":", 1)[1] if ":" in what else what
        out[fn] = out.get(fn, 0) + ir
    return total, out

wt, wf = rows(writer_path)
ct, cf = rows(caller_path)
print(f"\n== callgrind: {n} records ==")
print(f"writer thread: {wt / n:,.0f} instructions per record")
print(f"caller (Auditor::record): {ct / n:,.0f} instructions per record")
for title, total, fns in (("writer thread", wt, wf), ("caller", ct, cf)):
    print(f"\n-- {title}, self (instructions per record) --")
    for fn, ir in sorted(fns.items(), key=lambda x: -x[1])[:top]:
        print(f"{ir / n:>9,.0f}  {100.0 * ir / max(total, 1):5.1f}%  {fn[:140]}")
EOF
log "kept $AUDIT_PROFILE_OUT/audit-{writer,caller}-$STAMP.out"
