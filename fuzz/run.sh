#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation and runs each one for a
# bounded time, starting from the seeds in fuzz/seeds. A crash or a failed check stops the run
# with libFuzzer's report and leaves the input in target/fuzz/artifacts.
#
#   fuzz/run.sh SECONDS [TARGET ...]     e.g. fuzz/run.sh 60 (as CI does), fuzz/run.sh 3600 reply_scanner
#
# This works on the stable toolchain (no sanitizer: keyward has no unsafe code, so what the
# fuzzer hunts is panics and failed checks). `cargo +nightly fuzz run TARGET` works too.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET ...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(request_decoder reply_scanner command_classifier)
fi

out=../target/fuzz
# An explicit target keeps the instrumentation off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --locked --target "$host" --target-dir "$out" --bins

for target in "${targets[@]}"; do
  corpus="$out/corpus/$target"
  mkdir -p "$corpus" "$out/artifacts/$target"
  echo "--- fuzzing $target for ${seconds}s"
  log="$out/$target.log"
  status=0
  "$out/$host/release/$target" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$target/" "$corpus" "seeds/$target" >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz target $target failed; the input is in $out/artifacts/$target" >&2
    exit 1
  fi
done
