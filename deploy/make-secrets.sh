#!/usr/bin/env bash
# Makes what deploy/compose.yaml needs besides the images, under deploy/gateway/secrets/ (never
# committed): a private CA, the gateways' and Redis's TLS certificates, the Redis ACL file and an
# env file with the gateway's keys. For a trial run: in production the certificates come from
# your CA (the gateway reloads them when the files change) and the keys from your secret store.
#
#   SPGATE_LWA_CLIENT_SECRET=... deploy/make-secrets.sh [HOSTNAME]
# (SPGATE_SECRETS_DIR=DIR writes elsewhere: tools/check-deploy.sh uses a temporary directory.)
set -euo pipefail
cd "$(dirname "$0")"
deploy=$(pwd)
: "${SPGATE_LWA_CLIENT_SECRET:?set SPGATE_LWA_CLIENT_SECRET to your LWA client secret}"
host=${1:-localhost}
out=${SPGATE_SECRETS_DIR:-gateway/secrets}
mkdir -p "$out"
cd "$out"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=spgate deploy CA" -keyout ca.key -out ca.pem 2>/dev/null
issue() { # name, subjectAltName
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 90 \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$2") -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
issue gateway "DNS:$host,DNS:gateway-a,DNS:gateway-b,IP:127.0.0.1"
issue redis "DNS:redis"
# The containers run as their own users (spgate 10001, redis 999) and read these through a
# read-only mount as members of this user's group (compose's group_add, SPGATE_SECRETS_GID in
# deploy/.env): the keys are never world-readable. The CA key stays here.
chmod 0640 gateway.key redis.key
chmod 0600 ca.key
if [ -z "${SPGATE_SECRETS_DIR:-}" ]; then
  printf 'SPGATE_SECRETS_GID=%s\n' "$(id -g)" > "$deploy/.env"
fi

password=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
hash=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
cat > users.acl <<ACL
user default off
user spgate on #$hash ~spgate:* &* +@all
ACL
chmod 0640 users.acl

umask 077
cat > env <<ENV
SPGATE_LWA_CLIENT_SECRET=$SPGATE_LWA_CLIENT_SECRET
SPGATE_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
SPGATE_AUDIT_KEY=$(head -c 32 /dev/urandom | base64)
SPGATE_REDIS_PASSWORD=$password
SPGATE_ADMIN_TOKEN=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
ENV
echo "wrote $(pwd): ca.pem (trust it in your tools), gateway.crt/key, redis.crt/key, users.acl, env"
