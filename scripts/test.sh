#!/usr/bin/env bash
# The whole kafkafs test suite in one command:
#   unit and integration tests against a real Apache Kafka broker (started
#   here unless KAFKAFS_TEST_BROKERS points at one) and real FUSE mounts,
#   then the loom model checks (applier pool, master hand-offs).
# Set KAFKAFS_TEST_SEEDS to run more randomized seeds.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh git bench broker test
# The third-party POSIX conformance suite run against the mount.
if ! [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest" ]; then
    cargo install pjdfstest --version 0.2.2 --locked
fi

started=""
if [ -z "${KAFKAFS_TEST_BROKERS:-}" ]; then
    KAFKAFS_TEST_BROKERS=$(scripts/kafka.sh start | tail -1)
    export KAFKAFS_TEST_BROKERS
    started=1
fi
cleanup() { if [ -n "$started" ]; then scripts/kafka.sh stop; fi; }
trap cleanup EXIT
echo "test.sh: using Kafka at $KAFKAFS_TEST_BROKERS" >&2

# Every integration test runs here: a missing prerequisite fails it
# instead of skipping it (plain `cargo test` skips them without root or Kafka).
export KAFKAFS_TEST_REQUIRE_ALL=1
cargo test --lib --bins --tests -- --test-threads="${KAFKAFS_TEST_THREADS:-2}"

# The benches, run once each in test mode at tiny sizes (a smoke run, so
# they never rot); `cargo bench` measures (see BENCHMARKS.md).
echo "test.sh: bench smoke run" >&2
KAFKAFS_BENCH_SCALE="${KAFKAFS_BENCH_SCALE:-0.01}" \
KAFKAFS_BENCH_FILES="${KAFKAFS_BENCH_FILES:-300}" \
KAFKAFS_BENCH_BIG_MB="${KAFKAFS_BENCH_BIG_MB:-8}" \
KAFKAFS_BENCH_RENAMES="${KAFKAFS_BENCH_RENAMES:-300}" \
KAFKAFS_BENCH_MANY="${KAFKAFS_BENCH_MANY:-300}" \
KAFKAFS_BENCH_IMPORT_FILES="${KAFKAFS_BENCH_IMPORT_FILES:-300}" \
    cargo test --benches

echo "test.sh: loom model checks (applier pool, master hand-offs)" >&2
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --lib --release loom
