# Sourced by bench/run.sh (BENCH_PII=1, the default) after the supplySources points: the full PII
# pipeline on every request (issue 16's second scenario). A gateway of its own (`spgate serve`,
# embedded store, audit log as BENCH_AUDIT says, PII cache off, a role that masks, pseudonymizes,
# encrypts and drops) calls getOrder (Orders v0) on a sandbox of its own that acts as if Amazon
# had granted the application a high rate (`--granted-rate`, reported in x-amzn-RateLimit-Limit,
# which the gateway adopts, so its limiter admits the load as it would for such a seller; quotas
# off). Each request: caller auth, routing, the limiter, a Restricted Data Token from the RDT
# cache, the upstream call, the PII transform of the whole order and a durable audit record.
# Measured at max throughput; the figure is requests per second per core of gateway CPU.
# Sets PII_GW_PID, PII_SANDBOX_PID, URL[pii], HDRS[pii].

if ! "$SPGATE_BIN" sandbox --help 2>/dev/null | grep -q -- '--granted-rate'; then
    log "PII scenario skipped: this spgate has no 'sandbox --granted-rate' (older build)"
    BENCH_PII=0
    return 0
fi
log "PII scenario: starting its sandbox (--quotas off --granted-rate 1000000)"
"$SPGATE_BIN" sandbox --listen 127.0.0.1:0 --quotas off --granted-rate 1000000 --token-ttl-seconds 86400 \
    >"$WORK/pii-sandbox.out" 2>"$WORK/pii-sandbox.err" &
PII_SANDBOX_PID=$!
PIDS+=("$PII_SANDBOX_PID")
PII_SANDBOX_URL="$(wait_for_line "$WORK/pii-sandbox.out" 'http://127\.0\.0\.1:[0-9]+' "$PII_SANDBOX_PID")"

PII_PORT="$(free_port)"
mkdir -p "$WORK/pii-data"
export SPGATE_BENCH_LWA_SECRET="$LWA_CLIENT_SECRET"
export SPGATE_BENCH_PII_MASTER_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
export SPGATE_BENCH_PII_AUDIT_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
PII_AUDIT_TOML="[audit]
dir = \"$WORK/pii-data/audit\"
instance = \"bench-pii\"
key = { env = \"SPGATE_BENCH_PII_AUDIT_KEY\" }"
[[ "$BENCH_AUDIT" == 0 ]] && PII_AUDIT_TOML=""
cat >"$WORK/spgate-pii.toml" <<TOML
[server]
listen = "127.0.0.1:$PII_PORT"
drain_timeout_seconds = 5
[upstream.endpoints]
na = "$PII_SANDBOX_URL"
eu = "$PII_SANDBOX_URL"
fe = "$PII_SANDBOX_URL"
[lwa]
token_url = "$PII_SANDBOX_URL/auth/o2/token"
client_id = "$LWA_CLIENT_ID"
client_secret = { env = "SPGATE_BENCH_LWA_SECRET" }
[store]
type = "embedded"
data_dir = "$WORK/pii-data"
[keys]
master_key = { env = "SPGATE_BENCH_PII_MASTER_KEY" }
[retention]
cache = false
# The granted rate is adopted exactly: no extra spacing between tokens (the default adds 2 ms).
[ratelimit]
spacing_allowance = 0.0
$PII_AUDIT_TOML
[log]
level = "warn"
[roles.mixed.pii]
name = "mask"
email = "pseudonymize"
phone = "drop"
address = "encrypt"
postal_code = "mask"
coarse_location = "pass"
company = "pass"
tax_id = "drop"
TOML
printf 'Atzr|bench-pii' >"$WORK/pii-refresh-token"
PII_SELLER="A1SPGATEBENCHPII"
"$SPGATE_BIN" sellers --config "$WORK/spgate-pii.toml" add --id "$PII_SELLER" --region na \
    --refresh-token-file "$WORK/pii-refresh-token" >"$WORK/pii-cli.out" 2>&1 \
    || { cat "$WORK/pii-cli.out" >&2; die "PII scenario: spgate sellers add failed"; }
PII_KEY="$("$SPGATE_BIN" clients --config "$WORK/spgate-pii.toml" add --tool bench-pii --role mixed \
    --seller "$PII_SELLER" 2>>"$WORK/pii-cli.out" | sed -n 's/^api key: *//p')"
[[ -n "$PII_KEY" ]] || { cat "$WORK/pii-cli.out" >&2; die "PII scenario: spgate clients add printed no key"; }
"$SPGATE_BIN" serve --config "$WORK/spgate-pii.toml" >"$WORK/pii-spgate.out" 2>"$WORK/pii-spgate.err" &
PII_GW_PID=$!
PIDS+=("$PII_GW_PID")
PII_URL="http://127.0.0.1:$PII_PORT"
for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$PII_URL/" && break
    kill -0 "$PII_GW_PID" 2>/dev/null || { cat "$WORK/pii-spgate.err" >&2; die "PII scenario: spgate serve exited"; }
    sleep 0.1
done
HDRS[pii]="Authorization: Bearer $PII_KEY"$'\n'"x-spgate-seller: $PII_SELLER"
mapfile -t hs < <(headers_of pii)
check_200 pii-orders "$PII_URL/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01T00:00:00Z" "${hs[@]}"
PII_ORDER="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["payload"]["Orders"][0]["AmazonOrderId"])' \
    "$WORK/check-pii-orders.body")" || die "PII scenario: getOrders listed no order"
URL[pii]="$PII_URL/orders/v0/orders/$PII_ORDER"
check_200 pii "${URL[pii]}" "${hs[@]}"
# The answer must have gone through the policy: name masked, e-mail pseudonymized, phone dropped,
# street address encrypted.
python3 - "$WORK/check-pii.body" <<'PY' || die "PII scenario: the answer was not transformed by the role"
import json, sys
o = json.load(open(sys.argv[1]))["payload"]
buyer, addr = o["BuyerInfo"], o["ShippingAddress"]
assert "*" in buyer["BuyerName"] and "*" in addr["Name"], "name not masked"
assert buyer["BuyerEmail"].startswith("psn_"), "e-mail not pseudonymized"
assert "Phone" not in json.dumps(o), "phone not dropped"
assert addr["AddressLine1"].startswith("spgate:"), "address not encrypted"
PY
log "PII scenario: spgate serve at $PII_URL (pid $PII_GW_PID), getOrder $PII_ORDER through role 'mixed'"
if ((BENCH_WARMUP_SECONDS > 0)); then
    log "pii: warm-up ${BENCH_WARMUP_SECONDS}s at 1000 req/s (discarded)"
    run_oha pii warmup "$BENCH_WARMUP_SECONDS" "$BENCH_CONNECTIONS" 1000
fi
sleep "$BENCH_PAUSE_SECONDS"
log "pii: max throughput, ${BENCH_MAX_CONNECTIONS} connections, ${BENCH_SECONDS}s"
run_oha pii max "$BENCH_SECONDS" "$BENCH_MAX_CONNECTIONS"
