#!/usr/bin/env bash
# Checks that the Dockerfile's build stage has every input cargo needs: copies exactly what the
# build stage's COPY lines copy (minus .dockerignore's entries) into an empty directory and runs
# the same `cargo build` there, sharing this checkout's target directory so it costs a re-link,
# not a rebuild. Docker itself is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# The build stage: from the first FROM to the next FROM.
stage=$(awk '/^FROM /{n++} n==1' Dockerfile)
workdir=$(printf '%s\n' "$stage" | awk '$1=="WORKDIR"{print $2}' | tail -n1)
[ -n "$workdir" ] || { echo "no WORKDIR in the build stage" >&2; exit 1; }
copies=$(printf '%s\n' "$stage" | grep -E '^COPY ' || true)
[ -n "$copies" ] || { echo "no COPY in the build stage" >&2; exit 1; }

while read -r _ args; do
  case "$args" in --*) echo "COPY flags are not supported by this check: $args" >&2; exit 1 ;; esac
  # shellcheck disable=SC2206
  parts=($args)
  dest=${parts[${#parts[@]}-1]}
  unset 'parts[${#parts[@]}-1]'
  case "$dest" in /*) target="$ctx$dest" ;; *) target="$ctx$workdir/$dest" ;; esac
  for src in "${parts[@]}"; do
    [ -e "$src" ] || { echo "COPY source $src does not exist" >&2; exit 1; }
    if [ -d "$src" ]; then
      mkdir -p "$target"
      (cd "$src" && tar --exclude-vcs -cf - .) | (cd "$target" && tar -xf -)
    else
      case "$dest" in */) mkdir -p "$target"; cp "$src" "$target" ;; *) mkdir -p "$(dirname "$target")"; cp "$src" "$target" ;; esac
    fi
  done
done <<<"$copies"

# What .dockerignore leaves out of the context is not there in the image either.
if [ -f .dockerignore ]; then
  while read -r pattern; do
    case "$pattern" in ''|'#'*) continue ;; esac
    rm -rf "${ctx:?}$workdir/${pattern:?}"
  done < .dockerignore
fi

# The build stage's cargo command, run in the copied context.
run=$(printf '%s\n' "$stage" | sed -n 's/^RUN \(cargo .*\)$/\1/p' | head -n1)
[ -n "$run" ] || { echo "no RUN cargo ... in the build stage" >&2; exit 1; }
echo "image context: $(find "$ctx" -type f | wc -l) files; running: $run"
cd "$ctx$workdir"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" $run
echo "image context: OK"
