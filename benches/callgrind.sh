#!/usr/bin/env bash
# Instructions per iteration of each server_validation case, under callgrind: steady
# on a loaded machine, unlike times. Prints "<case> <instructions per iteration>".
#
#   bash benches/callgrind.sh            # every case
#   bash benches/callgrind.sh layer/HS256 raw_decode/HS256
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --all-features --bench server --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | grep '/server-' | tail -1 | cut -d'"' -f4)
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  for alg in HS256 RS256 ES256 EdDSA; do cases+=("raw_decode/$alg" "layer/$alg"); done
  cases+=(jwt_verify/RS256 verified_cache_hit/RS256 header_parse)
fi
count() { # case n -> instructions collected inside `measured`
  SERVER_CALLGRIND="$1:$2" valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='*measured*' --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
for case in "${cases[@]}"; do
  case $case in
    *HS256 | verified_cache_hit/* | header_parse) n=2000 ;;
    *) n=100 ;;
  esac
  # The empty run's count (the loop's own entry) is subtracted.
  echo "$case $((($(count "$case" "$n") - $(count "$case" 0)) / n))"
done
