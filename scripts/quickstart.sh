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
case " $* " in
    *" --broker"*|*" -b "*) ;;
    *)
        # The embedded broker keeps nothing after exit: a data-root of an
        # earlier quick start follows a topic that is gone. Keep it aside.
        if [ -d "$DATA/.kafkafs" ]; then
            aside="$DATA.previous-$(date +%Y%m%d-%H%M%S)"
            mv "$DATA" "$aside"
            # Its snapshots are of that topic too.
            if [ -d "$DATA.snapshots" ]; then mv "$DATA.snapshots" "$aside.snapshots"; fi
            echo "kafkafs: $DATA was served by an earlier embedded broker (which kept nothing); moved it to $aside" >&2
        fi ;;
esac
echo "kafkafs: building (the first build compiles librdkafka, a few minutes)" >&2
cargo build --release
echo "kafkafs: data-root $DATA, mountpoint $MNT" >&2
exec target/release/kafkafs master "$DATA" "$MNT" "$@"
