#!/usr/bin/env bash
# Full-pipeline throughput with the PII policy on an order response: a gateway (embedded store,
# audit log on, a role that masks, pseudonymizes, encrypts and drops) in front of `spgate
# sandbox`, answering getOrder from its PII cache (a hit spends no Amazon quota, so the usage
# plan does not cap the load). Prints oha's numbers and the gateway's CPU seconds, from which
# requests per second per core follow.
#
#   cargo build --release && bench/pii_pipeline.sh      # needs oha (cargo install oha)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SPGATE_BIN:-$REPO/target/release/spgate}"
OHA="${OHA:-$(command -v oha)}"
W=$(mktemp -d)
export SPGATE_LWA_CLIENT_SECRET=spgate-demo-client-secret
export SPGATE_MASTER_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=
export SPGATE_AUDIT_KEY=a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tr
SP=18611; GP=18612
cat > $W/c.toml <<T
[server]
listen = "127.0.0.1:$GP"
[upstream.endpoints]
na = "http://127.0.0.1:$SP"
eu = "http://127.0.0.1:$SP"
fe = "http://127.0.0.1:$SP"
[lwa]
token_url = "http://127.0.0.1:$SP/auth/o2/token"
client_id = "amzn1.application-oa2-client.spgate-demo"
client_secret = { env = "SPGATE_LWA_CLIENT_SECRET" }
[store]
type = "embedded"
data_dir = "$W/data"
[keys]
master_key = { env = "SPGATE_MASTER_KEY" }
[retention]
cache = true
cache_ttl_seconds = 3600
[audit]
dir = "$W/audit"
instance = "bench"
key = { env = "SPGATE_AUDIT_KEY" }
[roles.mixed.pii]
name = "mask"
email = "pseudonymize"
phone = "drop"
address = "encrypt"
postal_code = "mask"
coarse_location = "pass"
company = "pass"
tax_id = "drop"
[log]
format = "json"
level = "warn"
T
$BIN sandbox --listen 127.0.0.1:$SP > $W/sb.log 2>&1 & SBP=$!
echo "Atzr|bench-refresh" > $W/rt
sleep 1
$BIN sellers --config $W/c.toml add --id A1BENCH --region na --refresh-token-file $W/rt >/dev/null
KEY=$($BIN clients --config $W/c.toml add --tool bench --role mixed --seller A1BENCH | sed -n 's/^api key: *//p')
$BIN serve --config $W/c.toml > $W/gw.log 2>&1 & GWP=$!
sleep 1
URL0="http://127.0.0.1:$GP/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01T00:00:00Z"
ORDER=$(curl -s -H "authorization: Bearer $KEY" -H "x-spgate-seller: A1BENCH" "$URL0" | python3 -c "import json,sys;print(json.load(sys.stdin)['payload']['Orders'][0]['AmazonOrderId'])")
URL="http://127.0.0.1:$GP/orders/v0/orders/$ORDER"
curl -s -D- -o $W/first.json -H "authorization: Bearer $KEY" -H "x-spgate-seller: A1BENCH" "$URL" | grep -i "x-spgate-cache"
curl -s -D- -o $W/second.json -H "authorization: Bearer $KEY" -H "x-spgate-seller: A1BENCH" "$URL" | grep -i "x-spgate-cache"
wc -c $W/second.json
ticks() { awk '{print $14+$15}' /proc/$GWP/stat; }
$OHA -z 3s -c 32 --no-tui -H "authorization: Bearer $KEY" -H "x-spgate-seller: A1BENCH" "$URL" >/dev/null
t0=$(ticks)
$OHA -z 10s -c 32 --no-tui -H "authorization: Bearer $KEY" -H "x-spgate-seller: A1BENCH" "$URL" > $W/oha.txt
t1=$(ticks)
grep -E "Requests/sec|Success rate|50.00%|99.00%" $W/oha.txt
grep -A3 "Status code" $W/oha.txt
echo "gateway CPU seconds: $(( (t1-t0) ))/100"
kill $GWP $SBP; wait 2>/dev/null || true
rm -rf "$W"
