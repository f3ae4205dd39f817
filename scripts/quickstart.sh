#!/usr/bin/env bash
# Runs a kafkafs master for real with the embedded broker: installs what is
# missing (fuse3 and build prerequisites, on Debian as root), builds, mounts.
#   bash scripts/quickstart.sh [DATA] [MNT] [extra master options...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-/tmp/kafkafs-data}"
MNT="${2:-/tmp/kafkafs-mnt}"
shift $(( $# > 2 ? 2 : $# ))
scripts/deps.sh
echo "kafkafs: building (the first build compiles librdkafka, a few minutes)" >&2
cargo build --release
echo "kafkafs: data-root $DATA, mountpoint $MNT" >&2
exec target/release/kafkafs master "$DATA" "$MNT" "$@"
