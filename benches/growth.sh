#!/usr/bin/env bash
# Instructions per operation of the growth cases (benches/growth.rs), under callgrind:
# steady on a loaded machine, unlike times. Prints "<case> <instructions per op>".
#
#   bash benches/growth.sh                 # every case below
#   bash benches/growth.sh multi_issuer/1 multi_issuer/1000
#   bash benches/growth.sh introspection_hit/100000   # not in the default set: ~10 min
#
# The set-up (filling a cache with a million tokens, loading a thousand issuers'
# keys) runs under valgrind too, outside the count: the whole set takes about
# 15 minutes on a 2-core machine, 8 of them filling the million-token cache. Not part
# of CI (benches/callgrind.sh --check is).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --all-features --bench growth --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | grep "/growth-" | tail -1 | cut -d'"' -f4)
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  for n in 1 100 1000; do cases+=("multi_issuer/$n"); done
  for n in 10000 100000 1000000; do cases+=("verified_cache_hit/$n"); done
  cases+=(introspection_hit/10000)
  for t in 1 4 16 64 256 1024; do cases+=("no_auth/$t" "refreshing/$t"); done
fi
count() { # case n -> instructions collected inside `measured`
  GROWTH_CALLGRIND="$1:$2" valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='*measured*' --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
for case in "${cases[@]}"; do
  case $case in
    multi_issuer/*) n=100 ;;
    *) n=4096 ;;
  esac
  # The empty run's count (the loop's own entry, the tasks' start) is subtracted.
  echo "$case $((($(count "$case" "$n") - $(count "$case" 0)) / n))"
done
