#!/usr/bin/env bash
# Start, stop or query a single-node Apache Kafka (KRaft, combined broker +
# controller) on loopback, built from the jars on Maven Central.
#
#   scripts/kafka.sh start     resolve jars (cached), format storage, start, wait until it serves
#   scripts/kafka.sh stop      stop it (SIGTERM, then SIGKILL after a grace period)
#   scripts/kafka.sh status    exit 0 when running and serving, 1 otherwise
#   scripts/kafka.sh brokers   print the bootstrap address (host:port)
#   scripts/kafka.sh fetch     only resolve the jars into the cache
#
# Environment:
#   KAFKAFS_KAFKA_VERSION   Apache Kafka version (default pinned below)
#   KAFKAFS_KAFKA_CACHE     where the jars are kept (default: $XDG_CACHE_HOME/kafkafs or ~/.cache/kafkafs)
#   KAFKAFS_KAFKA_PORT      broker port on 127.0.0.1 (default 19092; the controller uses port+1)
#   KAFKAFS_KAFKA_RUN       runtime folder: config, data, log, pid (default: a folder under the temp dir)
#   KAFKAFS_KAFKA_KEEP=1    start: keep the data of an earlier run in the same folder (restart)
set -euo pipefail

VERSION="${KAFKAFS_KAFKA_VERSION:-4.1.1}"
CACHE="${KAFKAFS_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafkafs}"
LIB="$CACHE/kafka-$VERSION/lib"
PORT="${KAFKAFS_KAFKA_PORT:-19092}"
CPORT=$((PORT + 1))
RUN="${KAFKAFS_KAFKA_RUN:-${TMPDIR:-/tmp}/kafkafs-kafka-$PORT}"
PIDFILE="$RUN/kafka.pid"
LOG="$RUN/kafka.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
    if [ -f "$LIB/.complete" ]; then return 0; fi
    command -v mvn >/dev/null || die "maven (mvn) is needed to fetch Apache Kafka $VERSION from Maven Central"
    command -v java >/dev/null || die "java (17 or newer) is needed to run Apache Kafka"
    local work="$CACHE/kafka-$VERSION"
    mkdir -p "$work"
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafkafs</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.16</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
    echo "kafka.sh: resolving Apache Kafka $VERSION from Maven Central into $LIB" >&2
    rm -rf "$LIB"
    mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$LIB" -DincludeScope=runtime >&2 \
        || die "maven could not resolve org.apache.kafka:kafka_2.13:$VERSION"
    ls "$LIB"/kafka_2.13-"$VERSION".jar >/dev/null 2>&1 || die "kafka_2.13-$VERSION.jar missing after resolution"
    touch "$LIB/.complete"
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

serving() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start() {
    if running && serving; then echo "127.0.0.1:$PORT"; return 0; fi
    if running; then stop; fi
    fetch
    if [ "${KAFKAFS_KAFKA_KEEP:-0}" = 1 ] && [ -f "$RUN/data/meta.properties" ]; then
        launch
        return
    fi
    rm -rf "$RUN"
    mkdir -p "$RUN/data"
    cat >"$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$RUN/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
delete.topic.enable=true
PROPS
    cat >"$RUN/log4j2.properties" <<L4J
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
L4J
    local cp="$LIB/*"
    local cluster_id
    cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    [ -n "$cluster_id" ] || die "could not generate a cluster id (see java output above)"
    java -Dlog4j2.configurationFile="$RUN/log4j2.properties" -cp "$cp" kafka.tools.StorageTool format \
        -t "$cluster_id" -c "$RUN/server.properties" >"$RUN/format.log" 2>&1 \
        || { cat "$RUN/format.log" >&2; die "formatting KRaft storage failed"; }
    launch
}

launch() {
    local cp="$LIB/*"
    : >"$LOG"
    nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
        -cp "$cp" kafka.Kafka "$RUN/server.properties" >"$RUN/stdout.log" 2>&1 &
    echo $! >"$PIDFILE"
    local i
    for i in $(seq 1 240); do
        if ! running; then
            tail -50 "$RUN/stdout.log" "$LOG" >&2 2>/dev/null || true
            die "Kafka exited during startup"
        fi
        if serving && grep -q "Kafka Server started" "$LOG" 2>/dev/null; then
            echo "127.0.0.1:$PORT"
            return 0
        fi
        sleep 0.5
    done
    tail -50 "$LOG" >&2 2>/dev/null || true
    stop
    die "Kafka did not start serving on 127.0.0.1:$PORT within 120 s"
}

stop() {
    if ! [ -f "$PIDFILE" ]; then return 0; fi
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) running && serving && echo "running on 127.0.0.1:$PORT" ;;
    brokers) echo "127.0.0.1:$PORT" ;;
    fetch) fetch ;;
    *) echo "usage: $0 start|stop|status|brokers|fetch" >&2; exit 2 ;;
esac
