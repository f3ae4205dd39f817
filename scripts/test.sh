#!/usr/bin/env bash
# The whole kafkafs test suite in one command:
#   unit and integration tests against a real Apache Kafka broker (started
#   here unless KAFKAFS_TEST_BROKERS points at one) and real FUSE mounts,
#   then the scheduler's loom model checks.
# Set KAFKAFS_TEST_SEEDS to run more randomized seeds.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh git
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

cargo test --all-targets -- --test-threads="${KAFKAFS_TEST_THREADS:-2}"

echo "test.sh: loom model checks of the scheduler" >&2
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --lib --release loom
