#!/usr/bin/env bash
# Runs every fuzz target, one after the other, for SECS seconds each (default 60),
# then prints the executions per target and in all.
#
#   fuzz/run.sh [SECS] [TARGET...]
#
# CI (.ci/run) runs it for 10 s per target: a smoke run, which finds what mutations of
# the seeds find at once. The long run is by hand, on a change to a parser (the
# header, a JWT, a token response, a JWKS, a discovery document) and before a release:
#
#   bash fuzz/run.sh 600       # ten minutes per target, an hour in all
#
# and whatever it finds goes to fuzz/regressions/<target>/ (below), which cargo test
# replays on stable in every CI run.
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`);
# without them it says so and exits 0: `cargo test` replays the seeds and
# regressions with fixed mutations on stable (tests/fuzz_replay.rs runs the harness
# fuzz/src/lib.rs).
#
# libFuzzer grows fuzz/corpus/<target>/ (ignored by git) from fuzz/seeds/<target>/
# and fuzz/regressions/<target>/. A crash stops the run (exit 1): the input is in
# fuzz/artifacts/<target>/; fix the bug and add the input to fuzz/regressions/<target>/.
# The build goes to $FUZZ_TARGET_DIR, else $CARGO_TARGET_DIR/fuzz, else fuzz/target.
set -euo pipefail

secs=${1:-60}
shift || true
cd "$(dirname "$0")"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(header jwt jwt_structured token_response jwks discovery mcp_tool_calls)
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain; skipped (cargo test covers the seeds and regressions)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed; skipped (cargo test covers the seeds and regressions)"
    exit 0
fi

# The parsers, not the signature backend, are what is fuzzed: the pure-Rust backend
# keeps aws-lc's C out of the sanitizer build (Cargo.toml: one backend per build).
export RUSTFLAGS="${RUSTFLAGS:-} --cfg tower_bearer_rust_crypto"

target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}}
target_dir=${target_dir:-target}
cargo +nightly fuzz build --target-dir "$target_dir"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
total=0
summary=""
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    dirs=("corpus/$target" "seeds/$target")
    if [ -d "regressions/$target" ]; then
        dirs+=("regressions/$target")
    fi
    echo "fuzz: $target for ${secs}s"
    if ! cargo +nightly fuzz run --target-dir "$target_dir" "$target" "${dirs[@]}" -- \
        -max_total_time="$secs" -max_len=10000 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$logs/$target" 2>&1; then
        tail -n 60 "$logs/$target"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/"
        exit 1
    fi
    grep -E '^#[0-9]+.*DONE' "$logs/$target" | tail -n 1 || true
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target" | tail -n 1)
    execs=${execs:-0}
    total=$((total + execs))
    summary+=$(printf '%-16s %12s' "$target" "$execs")$'\n'
done
echo
printf '%-16s %12s\n' target executions
printf '%s' "$summary"
printf '%-16s %12s\n' total "$total"
