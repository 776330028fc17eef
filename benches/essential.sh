#!/usr/bin/env bash
# What RequireBearerLayer adds to a request, as a multiple of the parts no validator
# can skip, measured alone in the same run (instructions under callgrind, so a second
# machine gets the same ratio whatever its load; the CPU's own SHA code moves both
# sides alike):
#
#   uncached HS256: (layer/HS256 - identity/HS256) / essential
#       essential = the signature and payload out of base64url, the HMAC, the claims
#       read into `Claims` (benches/server.rs, module `essential`);
#   a VerifiedCache hit: (layer_cached/HS256 - identity/HS256) / essential_cached
#       essential_cached = the token's SHA-256 and the quick_cache look-up.
#
# identity/HS256 is the same request through an identity layer, around the same
# service: what any middleware costs.
#
#   bash benches/essential.sh            # prints the counts and the two ratios
#   bash benches/essential.sh --check    # and fails when a ratio is above 1.5
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A ins
while read -r case n; do
  ins[$case]=$n
done < <(bash benches/callgrind.sh identity/HS256 layer/HS256 essential layer_cached/HS256 essential_cached)
for c in identity/HS256 layer/HS256 essential layer_cached/HS256 essential_cached; do
  echo "$c ${ins[$c]}"
done
failed=0
report() { # name layer essential
  local added=$((ins[$2] - ins[identity/HS256]))
  local ratio
  ratio=$(awk -v a="$added" -v e="${ins[$3]}" 'BEGIN { printf "%.2f", a / e }')
  echo "$1: the layer adds $added instructions, ${ratio}x its essential parts (${ins[$3]})"
  if awk -v r="$ratio" 'BEGIN { exit !(r > 1.5) }'; then
    echo "  above 1.5x"
    failed=1
  fi
}
report "uncached HS256" layer/HS256 essential
report "VerifiedCache hit" layer_cached/HS256 essential_cached
if [ "${1:-}" = --check ]; then
  exit $failed
fi
