# Sourced by bench/run.sh when BENCH_STORE=postgres: the gateway under test is `spgate serve` on
# the PostgreSQL store (a schema of its own at $BENCH_POSTGRES_URL, dropped by run.sh's cleanup),
# configured as `spgate demo` configures itself (same sandbox, LWA client, role and audit log),
# so its full-pipeline throughput can be reported next to the embedded store's.
# Sets SPGATE_PID, SPGATE_URL, SPGATE_KEY and SPGATE_SELLER, as run.sh's demo start does.

command -v psql >/dev/null 2>&1 || die "BENCH_STORE=postgres needs psql (postgresql-client)"
BENCH_PG_SCHEMA="bench_$(date +%s)_$$"
psql "$BENCH_POSTGRES_URL" -qAtc 'SELECT 1' >/dev/null || die "PostgreSQL at $BENCH_POSTGRES_URL does not answer"
SPGATE_SELLER="A1SPGATEBENCH1"
SPGATE_PORT="$(free_port)"
export SPGATE_BENCH_LWA_SECRET="$LWA_CLIENT_SECRET"
export SPGATE_BENCH_MASTER_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
export SPGATE_BENCH_AUDIT_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
export SPGATE_BENCH_POSTGRES_URL="$BENCH_POSTGRES_URL"
BENCH_AUDIT_TOML="[audit]
dir = \"$WORK/spgate-data/audit\"
instance = \"bench\"
key = { env = \"SPGATE_BENCH_AUDIT_KEY\" }"
[[ "$BENCH_AUDIT" == 0 ]] && BENCH_AUDIT_TOML=""
cat >"$WORK/spgate-postgres.toml" <<TOML
[server]
listen = "127.0.0.1:$SPGATE_PORT"
drain_timeout_seconds = 5
[upstream.endpoints]
na = "$SANDBOX_URL"
eu = "$SANDBOX_URL"
fe = "$SANDBOX_URL"
[lwa]
token_url = "$SANDBOX_URL/auth/o2/token"
client_id = "$LWA_CLIENT_ID"
client_secret = { env = "SPGATE_BENCH_LWA_SECRET" }
[store]
type = "postgres"
url = { env = "SPGATE_BENCH_POSTGRES_URL" }
schema = "$BENCH_PG_SCHEMA"
[keys]
master_key = { env = "SPGATE_BENCH_MASTER_KEY" }
$BENCH_AUDIT_TOML
[log]
level = "warn"
[roles.demo.pii]
name = "pass"
email = "pass"
phone = "pass"
address = "pass"
postal_code = "pass"
coarse_location = "pass"
company = "pass"
gift_message = "pass"
customization_url = "pass"
delivery_instructions = "pass"
TOML
drop_bench_schema() {
    psql "$BENCH_POSTGRES_URL" -qAtc "DROP SCHEMA IF EXISTS $BENCH_PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
}
trap 'drop_bench_schema; cleanup' EXIT
printf 'Atzr|bench' >"$WORK/bench-refresh-token"
"$SPGATE_BIN" sellers --config "$WORK/spgate-postgres.toml" add --id "$SPGATE_SELLER" --region na \
    --refresh-token-file "$WORK/bench-refresh-token" >"$WORK/spgate-cli.out" 2>&1 \
    || { cat "$WORK/spgate-cli.out" >&2; die "spgate sellers add failed"; }
SPGATE_KEY="$("$SPGATE_BIN" clients --config "$WORK/spgate-postgres.toml" add --tool bench --role demo \
    --seller "$SPGATE_SELLER" 2>>"$WORK/spgate-cli.out" | sed -n 's/^api key: *//p')"
[[ -n "$SPGATE_KEY" ]] || { cat "$WORK/spgate-cli.out" >&2; die "spgate clients add printed no key"; }
log "starting spgate: spgate serve on PostgreSQL ($BENCH_POSTGRES_URL, schema $BENCH_PG_SCHEMA)"
"$SPGATE_BIN" serve --config "$WORK/spgate-postgres.toml" >"$WORK/spgate.out" 2>"$WORK/spgate.err" &
SPGATE_PID=$!
PIDS+=("$SPGATE_PID")
SPGATE_URL="http://127.0.0.1:$SPGATE_PORT"
for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$SPGATE_URL/" && break
    kill -0 "$SPGATE_PID" 2>/dev/null || { cat "$WORK/spgate.err" >&2; die "spgate serve exited"; }
    sleep 0.1
done
log "spgate at $SPGATE_URL (pid $SPGATE_PID, postgres store), seller $SPGATE_SELLER"
