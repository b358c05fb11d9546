#!/usr/bin/env bash
# Resident memory of snigate-router with 10,000 routes, at start and after each
# of N reloads (SIGHUP), for each binary given, interleaved so that a noisy
# machine affects them alike. Loopback only; the routes point at 127.0.0.1:9.
#
#   bench/scripts/reload-rss.sh [-n N] [-r ROUNDS] BINARY...
#   e.g. bench/scripts/reload-rss.sh /tmp/router-before target/release/snigate-router
#
# Prints one line per binary and round: VmRSS in KiB at start, then after each
# reload. Uses ports 18443 (TLS) and 18444 (admin) unless PORT_BASE says.
set -euo pipefail
reloads=10 rounds=2
while getopts "n:r:" opt; do
  case $opt in
    n) reloads=$OPTARG ;;
    r) rounds=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
(($#)) || { echo "usage: $0 [-n N] [-r ROUNDS] BINARY..." >&2; exit 2; }
base=${PORT_BASE:-18443}
admin="127.0.0.1:$((base + 1))"
dir=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

{
  printf 'listen = ["127.0.0.1:%s"]\nadmin = "%s"\n[log]\nlevel = "warn"\n[reload]\nwatch = false\n' "$base" "$admin"
  for i in $(seq 0 9999); do
    printf '[[route]]\nname = "r%s"\nhosts = ["h%s.bench.snigate.test"]\nendpoints = ["127.0.0.1:9"]\n' "$i" "$i"
  done
} > "$dir/router.toml"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Waits (at most 10 s) until the admin server reports `want` successful reloads.
wait_reloads() {
  for _ in $(seq 1 500); do
    if curl -sf "http://$admin/metrics" | grep -q "^snigate_router_reloads_total{result=\"success\"} $1\$"; then
      return 0
    fi
    sleep 0.02
  done
  echo "no reload number $1 within 10 s" >&2
  return 1
}

for round in $(seq 1 "$rounds"); do
  for binary in "$@"; do
    "$binary" --config "$dir/router.toml" > "$dir/router.log" 2>&1 &
    pid=$!
    wait_reloads 0
    line="$(rss "$pid")"
    for i in $(seq 1 "$reloads"); do
      kill -HUP "$pid"
      wait_reloads "$i"
      line="$line $(rss "$pid")"
    done
    echo "round $round $binary: $line"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
  done
done
