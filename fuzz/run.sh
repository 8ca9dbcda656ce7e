#!/usr/bin/env bash
# Builds the fuzz targets on the stable toolchain (libFuzzer through libfuzzer-sys, with the coverage flags
# `cargo fuzz build -s none` passes; no sanitizer) and runs each for SECS seconds from its seeds.
# New inputs go to a scratch corpus (the seeds in git stay as they are); a crash, panic, failed assertion,
# 10 s input or RSS over 2 GiB fails the run and leaves the input in target/fuzz/artifacts/<target>/.
#   fuzz/run.sh [SECS] [TARGET...]        (default: 20 s, every target)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode auth probe nat admin_json)
triple=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="$root/target/fuzz"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --locked --bins --target "$triple" --manifest-path "$root/fuzz/Cargo.toml"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "$CARGO_TARGET_DIR/artifacts/$t"
  log="$scratch/$t.log"
  if ! "$CARGO_TARGET_DIR/$triple/release/$t" "$scratch/$t" "$root/fuzz/corpus/$t" -max_total_time="$secs" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$CARGO_TARGET_DIR/artifacts/$t/" \
      >"$log" 2>&1; then
    cat "$log"
    echo "fuzz $t: FAILED (input in $CARGO_TARGET_DIR/artifacts/$t/)"
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")"
  echo "fuzz $t: ${secs} s, ${runs} runs, peak RSS ${rss} MB, $(ls "$scratch/$t" | wc -l) new corpus entries, no crash"
done
