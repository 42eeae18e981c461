#!/usr/bin/env bash
# Keeps deploy/ consistent with the gateway's configuration: makes throwaway secrets and
# certificates with deploy/make-secrets.sh in a temporary directory, then runs `spgate check` on
# every gateway config the compose file starts (each must exist and be valid).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp deploy/gateway/*.toml "$tmp/"
SPGATE_SECRETS_DIR="$tmp/secrets" SPGATE_LWA_CLIENT_SECRET=ci-check-not-a-secret \
  deploy/make-secrets.sh >/dev/null
cargo build --locked --quiet --bin spgate
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug/spgate
configs=$(grep -oE -- '--config", "/etc/spgate/[^"]+' deploy/compose.yaml | sed 's#.*/etc/spgate/##' | sort -u)
[ -n "$configs" ] || { echo "deploy/compose.yaml starts no gateway" >&2; exit 1; }
set -a
# shellcheck disable=SC1091
. "$tmp/secrets/env"
set +a
cd "$tmp"
for c in $configs; do
  [ -f "$c" ] || { echo "deploy/compose.yaml names $c, which deploy/gateway/ does not have" >&2; exit 1; }
  "$bin" check --config "$c"
done
echo "deploy: OK ($(echo $configs | wc -w) configs)"
