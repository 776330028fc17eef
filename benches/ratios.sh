#!/usr/bin/env bash
# Every headline ratio of BENCHMARKS.md's summary, in one run (about 10 minutes):
# instruction counts under callgrind (client hot path, server validation), then the
# criterion times of the same cases, then end_to_end's interleaved rounds.
#
#   bash benches/ratios.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3fx", a / b }'; }

echo "== instructions per iteration (bash benches/callgrind.sh)"
declare -A ins
while read -r case n; do
  ins[$case]=$n
done < <(bash benches/callgrind.sh)
for c in authorize_static authorize_refreshing; do
  echo "client $c / tower_http_add_authorization: $(ratio "${ins[client_hot_path/$c]}" "${ins[client_hot_path/tower_http_add_authorization]}")"
done
for alg in HS256 RS256 ES256 EdDSA; do
  echo "server $alg: layer / raw_decode $(ratio "${ins[layer/$alg]}" "${ins[raw_decode/$alg]}")," \
    "layer / jwt_authorizer $(ratio "${ins[layer/$alg]}" "${ins[jwt_authorizer/$alg]}")"
done
for alg in RS256 ES256 EdDSA; do
  echo "server $alg, from the headers: huskarl / ours $(ratio "${ins[huskarl/$alg]}" "${ins[headers/$alg]}")"
done

# Criterion's mean of one case, in ns, from its last run.
mean() {
  grep -o '"mean":{[^}]*}[^}]*}' "${CARGO_TARGET_DIR:-target}/criterion/$1/new/estimates.json" |
    grep -o '"point_estimate":[0-9.e+-]*' | cut -d: -f2
}
echo "end to end (whole request path): no_auth / tower_bearer $(ratio "${ins[end_to_end/no_auth]}" "${ins[end_to_end/tower_bearer]}")," \
  "no_auth / tower_bearer_cached $(ratio "${ins[end_to_end/no_auth]}" "${ins[end_to_end/tower_bearer_cached]}")"
for alg in "" _rs256 _es256; do
  echo "end to end: jwt_authorizer$alg / tower_bearer$alg $(ratio "${ins[end_to_end/jwt_authorizer$alg]}" "${ins[end_to_end/tower_bearer$alg]}")"
done

for c in proof_check proof_verify; do
  echo "dpop $c / es256_verify: $(ratio "${ins[dpop/$c]}" "${ins[dpop/es256_verify]}")"
done

echo "== time (criterion)"
cargo bench --bench client -- client_hot_path >/dev/null 2>&1
for c in authorize_static authorize_refreshing; do
  echo "client $c / tower_http_add_authorization: $(ratio "$(mean "client_hot_path/$c")" "$(mean client_hot_path/tower_http_add_authorization)")"
done
cargo bench --bench server >/dev/null 2>&1
for alg in HS256 RS256 ES256 EdDSA; do
  echo "server $alg: layer / raw_decode $(ratio "$(mean "server_validation/layer_$alg")" "$(mean "server_validation/raw_decode_$alg")")," \
    "layer / jwt_authorizer $(ratio "$(mean "server_validation/layer_$alg")" "$(mean "server_validation/jwt_authorizer_$alg")")"
done
for alg in RS256 ES256 EdDSA; do
  echo "server $alg, from the headers: huskarl / ours $(ratio "$(mean "server_validation/huskarl_$alg")" "$(mean "server_validation/headers_$alg")")"
done
echo "server VerifiedCache hit vs RS256 check: $(ratio "$(mean server_validation/jwt_verify_RS256)" "$(mean server_validation/verified_cache_hit_RS256)") faster"

echo "== end to end (cargo bench --bench end_to_end -- interleaved)"
cargo bench --bench end_to_end -- interleaved 2>/dev/null | sed -n '/^end_to_end interleaved/,$p'
