#!/usr/bin/env bash
# Instructions per iteration of the hot paths, under callgrind: steady on a loaded
# machine, unlike times. Prints "<case> <instructions per iteration>".
#
#   bash benches/callgrind.sh            # every case
#   bash benches/callgrind.sh layer/HS256 raw_decode/HS256 client_hot_path/authorize_static
#   bash benches/callgrind.sh --check benches/callgrind-baseline.txt
#
# Cases: server_validation's (`layer/HS256`, `raw_decode/RS256`, `jwt_verify/RS256`,
# `headers/ES256` and huskarl's `huskarl/ES256`, `verified_cache_hit/RS256`,
# `header_parse`, ...), client_hot_path's
# (`client_hot_path/<case>`) and end_to_end's (`end_to_end/<case>`: the whole request
# path, client and server, per request) and dpop's (`dpop/es256_verify`, `dpop/proof_check`,
# `dpop/proof_verify`). With --check FILE, the cases are FILE's (lines "<case>
# <instructions>", # comments) and the script fails when one counts more than 10 %
# over its line (CI: .ci/run). Uses the release bench binaries, building them if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=
if [ "${1:-}" = --check ]; then
  baseline=$2
  shift 2
fi
binary() { # bench name -> path of its release executable
  cargo bench --all-features --bench "$1" --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | grep "/$1-" | tail -1 | cut -d'"' -f4
}
server_bin=$(binary server)
client_bin=$(binary client)
end_to_end_bin=$(binary end_to_end)
dpop_bin=$(binary dpop)
cases=("$@")
if [ -n "$baseline" ]; then
  mapfile -t cases < <(grep -v '^#' "$baseline" | awk 'NF { print $1 }')
elif [ ${#cases[@]} -eq 0 ]; then
  for alg in HS256 RS256 ES256 EdDSA; do cases+=("raw_decode/$alg" "layer/$alg" "jwt_authorizer/$alg"); done
  for alg in RS256 ES256 EdDSA; do cases+=("headers/$alg" "huskarl/$alg"); done
  cases+=(jwt_verify/RS256 verified_cache_hit/RS256 header_parse)
  for c in no_auth tower_http_add_authorization tower_http_inspecting authorize_static authorize_refreshing; do
    cases+=("client_hot_path/$c")
  done
  for c in no_auth tower_bearer tower_bearer_cached jwt_authorizer tower_bearer_rs256 jwt_authorizer_rs256 tower_bearer_es256 jwt_authorizer_es256; do
    cases+=("end_to_end/$c")
  done
  cases+=(dpop/es256_verify dpop/proof_check dpop/proof_verify)
fi
count() { # case n -> instructions collected inside `measured`
  local bin=$server_bin var=SERVER_CALLGRIND
  case $1 in
    client_hot_path/*) bin=$client_bin var=CLIENT_CALLGRIND ;;
    end_to_end/*) bin=$end_to_end_bin var=END_TO_END_CALLGRIND ;;
    dpop/*) bin=$dpop_bin var=DPOP_CALLGRIND ;;
  esac
  env "$var=$1:$2" valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='*measured*' --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
failed=0
for case in "${cases[@]}"; do
  case $case in
    *HS256 | essential* | verified_cache_hit/* | header_parse | client_hot_path/*) n=2000 ;;
    end_to_end/*) n=2000 ;;
    *) n=100 ;;
  esac
  # The empty run's count (the loop's own entry) is subtracted.
  got=$((($(count "$case" "$n") - $(count "$case" 0)) / n))
  if [ -z "$baseline" ]; then
    echo "$case $got"
    continue
  fi
  want=$(awk -v c="$case" '$1 == c { print $2 }' "$baseline")
  verdict=ok
  if [ $((got * 10)) -gt $((want * 11)) ]; then
    verdict="FAILED: more than 10 % over the baseline"
    failed=1
  fi
  echo "$case $got (baseline $want) $verdict"
done
exit $failed
