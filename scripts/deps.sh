#!/usr/bin/env bash
# Installs what building and running kafkafs needs on Debian, when missing:
# FUSE 3 (fusermount3, /dev/fuse use), a C toolchain for librdkafka, OpenSSL
# headers (TLS/SASL to real clusters). Extras:
#   broker  Java + Maven (the real Apache Kafka the tests start)
#   test    e2fsprogs, util-linux (limit and fault tests), python3,
#           systemd-analyze (the example units are verified)
#   bench   bindfs, lsyncd, rsync (the end-to-end comparison)
#   git     git (tests run it on the mount)
# Idempotent and quick when everything is present. Needs root to install.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
[ -f /usr/include/fuse3/fuse.h ] || need+=(libfuse3-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
[ -f /usr/include/zlib.h ] || need+=(zlib1g-dev)
command -v cc >/dev/null || need+=(build-essential)
command -v cmake >/dev/null || need+=(cmake)
command -v perl >/dev/null || need+=(perl)
command -v python3 >/dev/null || need+=(python3)
for extra in "$@"; do
    case "$extra" in
        # keytool (the JDK's) makes the secure broker's certificates.
        broker) { command -v java >/dev/null && command -v keytool >/dev/null; } || need+=(openjdk-17-jre-headless)
                command -v mvn >/dev/null || need+=(maven) ;;
        # Tests: small ext4 images, open-file limits, unprivileged runs,
        # freezing, JSON checks.
        test) command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
              command -v tar >/dev/null || need+=(tar)
              command -v prlimit >/dev/null || need+=(util-linux)
              command -v setpriv >/dev/null || need+=(util-linux)
              command -v fsfreeze >/dev/null || need+=(util-linux)
              command -v losetup >/dev/null || need+=(mount)
              command -v python3 >/dev/null || need+=(python3)
              command -v systemd-analyze >/dev/null || need+=(systemd) ;;
        bench) command -v bindfs >/dev/null || need+=(bindfs)
               command -v lsyncd >/dev/null || need+=(lsyncd)
               command -v rsync >/dev/null || need+=(rsync) ;;
        git) command -v git >/dev/null || need+=(git) ;;
    esac
done

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "deps.sh: missing Debian packages: ${need[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "deps.sh: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q "${need[@]}" >/dev/null
    }
fi
[ -e /dev/fuse ] || echo "deps.sh: warning: /dev/fuse is missing; FUSE tests will fail" >&2
