#!/usr/bin/env bash
# Where the HS256 layer's time goes on this CPU (SHA extensions and all, which callgrind
# cannot show): `perf record` of end_to_end's single-thread request path (client and
# server, kernel included), no_auth and tower_bearer, the same number of requests each;
# the difference of their samples, by part, as a share of no_auth's whole path.
#
#   bash benches/native_share.sh [requests]      # needs perf; default 300000
#
# "essential" parts are those no validator of this token can skip: the HMAC, the
# base64 of the payload and signature, and reading the claims into `Claims`.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300000}
bin=$(cargo bench --all-features --bench end_to_end --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | grep "/end_to_end-" | tail -1 | cut -d'"' -f4)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for c in no_auth tower_bearer; do
  END_TO_END_CALLGRIND=end_to_end/$c:$n perf record -q -F 20000 -o "$dir/$c.data" "$bin" >/dev/null 2>&1
  # "<samples>\t<dso and symbol>", one line per symbol.
  perf report -i "$dir/$c.data" --no-children --sort dso,symbol -F sample,dso,symbol 2>/dev/null |
    awk '!/^#/ && NF { s = $1; $1 = ""; print s "\t" $0 }' | sort -t$'\t' -k2 >"$dir/$c.txt"
done
join -t$'\t' -1 2 -2 2 -a1 -a2 -e0 -o 0,1.1,2.1 "$dir/no_auth.txt" "$dir/tower_bearer.txt" |
  awk -F'\t' '
    { base += $2; d = $3 - $2; n = $1; part = "other (user space)"
      if (n ~ /\[k\]/) part = "kernel (the same I/O in both: noise)"
      else if (n ~ /sha256|HMAC|SHA256/) part = "essential: HMAC-SHA256"
      else if (n ~ /base64/) part = "essential: base64"
      else if (n ~ /serde|Claims|Field/) part = "essential: claims (serde_json)"
      else if (n ~ /malloc|free|_int_|rdl_|rust_alloc|rust_dealloc/) part = "allocation"
      else if (n ~ /memmove|memcpy|memset|memcmp/) part = "memory moves"
      else if (n ~ /clock_gettime/) part = "clock reads"
      else if (n ~ /hashbrown|Extensions/) part = "request extensions"
      else if (n ~ /tower_bearer/) part = "tower-bearer own code"
      share[part] += d }
    END { for (p in share) printf "%6.2f %%  %s\n", 100 * share[p] / base, p }' | sort -rn
