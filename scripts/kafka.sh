#!/usr/bin/env bash
# Start, stop or query Apache Kafka (KRaft, combined broker + controller) on
# loopback, built from the jars on Maven Central: one node, or a cluster.
#
#   scripts/kafka.sh start [--nodes N]   resolve jars (cached), format storage, start, wait until
#                                        every node serves; prints the bootstrap servers last
#   scripts/kafka.sh start --secure      one node with a second listener, SASL_SSL on PORT+2:
#                                        TLS (a CA and a broker certificate for 127.0.0.1 made
#                                        with the JDK's keytool) and SASL/SCRAM-SHA-256 (user
#                                        kafkafs, a generated password)
#   scripts/kafka.sh client-properties   librdkafka properties for the SASL_SSL listener (for -F)
#   scripts/kafka.sh stop                stop every node (SIGTERM, then SIGKILL after a grace period)
#   scripts/kafka.sh status              exit 0 when running and serving, 1 otherwise
#   scripts/kafka.sh brokers             print the bootstrap servers (host:port[,host:port...])
#   scripts/kafka.sh kill-node I         SIGKILL node I of a cluster (1-based)
#   scripts/kafka.sh start-node I        restart node I of a cluster with its data
#   scripts/kafka.sh fetch               only resolve the jars into the cache
#
# A cluster of N nodes (N >= 3 for a quorum that survives one loss) uses
# ports PORT, PORT+2, ... for brokers and PORT+1, PORT+3, ... for the KRaft
# controllers; its internal topics are replicated N ways (min ISR N-1), and
# topics created without a factor get min(N, 3) replicas.
#
# Environment:
#   KAFKAFS_KAFKA_VERSION   Apache Kafka version (default pinned below)
#   KAFKAFS_KAFKA_CACHE     where the jars are kept (default: $XDG_CACHE_HOME/kafkafs or ~/.cache/kafkafs)
#   KAFKAFS_KAFKA_PORT      first broker port on 127.0.0.1 (default 19092; controllers use port+1)
#   KAFKAFS_KAFKA_RUN       runtime folder: config, data, log, pid (default: a folder under the temp dir)
#   KAFKAFS_KAFKA_KEEP=1    start: keep the data of an earlier run in the same folder (restart)
set -euo pipefail

VERSION="${KAFKAFS_KAFKA_VERSION:-4.1.1}"
CACHE="${KAFKAFS_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafkafs}"
LIB="$CACHE/kafka-$VERSION/lib"
BASE_PORT="${KAFKAFS_KAFKA_PORT:-19092}"
RUN="${KAFKAFS_KAFKA_RUN:-${TMPDIR:-/tmp}/kafkafs-kafka-$BASE_PORT}"

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

# Node layout: a single node lives in $RUN; node I of a cluster in $RUN/nodeI.
nodes() { cat "$RUN/nodes" 2>/dev/null || echo 1; }
node_dir() { if [ "$(nodes)" = 1 ]; then echo "$RUN"; else echo "$RUN/node$1"; fi; }
node_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }
bootstrap() {
    local i list=""
    for i in $(seq 1 "$(nodes)"); do list="$list${list:+,}127.0.0.1:$(node_port "$i")"; done
    echo "$list"
}

running_node() { local d; d=$(node_dir "$1"); [ -f "$d/kafka.pid" ] && kill -0 "$(cat "$d/kafka.pid")" 2>/dev/null; }
serving_node() { (exec 3<>"/dev/tcp/127.0.0.1/$(node_port "$1")") 2>/dev/null; }
all_nodes() { local i; for i in $(seq 1 "$(nodes)"); do "$@" "$i" || return 1; done; }

secure() { [ -f "$RUN/secure" ]; }
secure_port() { echo $((BASE_PORT + 2)); }
TLS_USER=kafkafs

# A CA and a broker certificate for 127.0.0.1/localhost signed by it, in
# PKCS12 stores; the CA as PEM for clients; one password for all.
make_tls() {
    local t="$RUN/tls" pw san="SAN=ip:127.0.0.1,dns:localhost"
    command -v keytool >/dev/null || die "keytool (from the JDK) is needed for --secure"
    mkdir -p "$t"
    pw=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    echo "$pw" >"$t/password"
    {
        keytool -genkeypair -alias ca -keyalg RSA -keysize 2048 -dname CN=kafkafs-test-ca \
            -ext bc:c -validity 30 -keystore "$t/ca.p12" -storetype PKCS12 -storepass "$pw"
        keytool -exportcert -alias ca -keystore "$t/ca.p12" -storepass "$pw" -rfc -file "$t/ca.pem"
        keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -dname CN=localhost \
            -ext "$san" -validity 30 -keystore "$t/broker.p12" -storetype PKCS12 -storepass "$pw"
        keytool -certreq -alias broker -keystore "$t/broker.p12" -storepass "$pw" -file "$t/broker.csr"
        keytool -gencert -alias ca -keystore "$t/ca.p12" -storepass "$pw" -infile "$t/broker.csr" \
            -outfile "$t/broker.crt" -ext "$san" -validity 30 -rfc
        keytool -importcert -alias ca -file "$t/ca.pem" -keystore "$t/broker.p12" -storepass "$pw" -noprompt
        keytool -importcert -alias broker -file "$t/broker.crt" -keystore "$t/broker.p12" -storepass "$pw"
    } >"$t/keytool.log" 2>&1 || { cat "$t/keytool.log" >&2; die "making the TLS certificates failed"; }
}

client_properties() {
    secure || die "the broker in $RUN was not started with --secure"
    cat <<PROPS
# librdkafka properties for the SASL_SSL listener on 127.0.0.1:$(secure_port)
security.protocol=SASL_SSL
sasl.mechanisms=SCRAM-SHA-256
sasl.username=$TLS_USER
sasl.password=$(cat "$RUN/tls/password")
ssl.ca.location=$RUN/tls/ca.pem
PROPS
}

# The SASL_SSL listener's part of a node's configuration.
secure_properties() {
    local pw; pw=$(cat "$RUN/tls/password")
    cat <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.location=$RUN/tls/broker.p12
ssl.keystore.type=PKCS12
ssl.keystore.password=$pw
ssl.key.password=$pw
ssl.client.auth=none
PROPS
}

configure_node() {
    local i=$1 n=$2 d port cport voters="" j rf listeners advertised map
    d=$(node_dir "$i")
    port=$(node_port "$i")
    cport=$((port + 1))
    for j in $(seq 1 "$n"); do voters="$voters${voters:+,}$j@127.0.0.1:$(($(node_port "$j") + 1))"; done
    rf=$n
    listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    advertised="PLAINTEXT://127.0.0.1:$port"
    map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if secure; then
        listeners="$listeners,SASL_SSL://127.0.0.1:$(secure_port)"
        advertised="$advertised,SASL_SSL://127.0.0.1:$(secure_port)"
        map="$map,SASL_SSL:SASL_SSL"
    fi
    mkdir -p "$d/data"
    cat >"$d/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$map
log.dirs=$d/data
num.partitions=1
default.replication.factor=$(( n < 3 ? n : 3 ))
auto.create.topics.enable=false
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$(( rf > 1 ? rf - 1 : 1 ))
group.initial.rebalance.delay.ms=0
delete.topic.enable=true
unclean.leader.election.enable=false
PROPS
    if secure; then secure_properties >>"$d/server.properties"; fi
    cat >"$d/log4j2.properties" <<L4J
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $d/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
L4J
}

format_node() {
    local d scram=()
    d=$(node_dir "$1")
    if secure; then
        scram=(--add-scram "SCRAM-SHA-256=[name=$TLS_USER,password=$(cat "$RUN/tls/password")]")
    fi
    java -Dlog4j2.configurationFile="$d/log4j2.properties" -cp "$LIB/*" kafka.tools.StorageTool format \
        -t "$2" -c "$d/server.properties" "${scram[@]}" >"$d/format.log" 2>&1 \
        || { cat "$d/format.log" >&2; die "formatting KRaft storage of node $1 failed"; }
}

launch_node() {
    local d heap="768m"
    d=$(node_dir "$1")
    [ "$(nodes)" = 1 ] || heap="512m"
    : >"$d/kafka.log"
    nohup java -Xms256m -Xmx$heap -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$d/log4j2.properties" \
        -cp "$LIB/*" kafka.Kafka "$d/server.properties" >"$d/stdout.log" 2>&1 &
    echo $! >"$d/kafka.pid"
}

wait_node() {
    local d i
    d=$(node_dir "$1")
    for i in $(seq 1 360); do
        if ! running_node "$1"; then
            tail -50 "$d/stdout.log" "$d/kafka.log" >&2 2>/dev/null || true
            die "Kafka node $1 exited during startup"
        fi
        if serving_node "$1" && grep -q "Kafka Server started" "$d/kafka.log" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    tail -50 "$d/kafka.log" >&2 2>/dev/null || true
    stop
    die "Kafka node $1 did not start serving on 127.0.0.1:$(node_port "$1") within 180 s"
}

start() {
    local n=1 want_secure=0
    case "${1:-}" in
        --nodes) n="${2:?--nodes needs a number}" ;;
        --secure) want_secure=1 ;;
    esac
    local was_secure=0; if secure; then was_secure=1; fi
    if [ -f "$RUN/nodes" ] && [ "$(nodes)" = "$n" ] && [ "$was_secure" = "$want_secure" ] \
        && all_nodes running_node && all_nodes serving_node; then
        bootstrap; return 0
    fi
    if [ -f "$RUN/nodes" ] || [ -f "$RUN/kafka.pid" ]; then stop; fi
    fetch
    local keep=0 i
    if [ "${KAFKAFS_KAFKA_KEEP:-0}" = 1 ] && [ "$(cat "$RUN/nodes" 2>/dev/null || echo 1)" = "$n" ] \
        && [ "$was_secure" = "$want_secure" ] && [ -f "$(node_dir 1)/data/meta.properties" ]; then
        keep=1
    fi
    if [ "$keep" = 0 ]; then
        rm -rf "$RUN"
        mkdir -p "$RUN"
        echo "$n" >"$RUN/nodes"
        if [ "$want_secure" = 1 ]; then
            touch "$RUN/secure"
            make_tls
        fi
        local cluster_id
        cluster_id=$(java -cp "$LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
        [ -n "$cluster_id" ] || die "could not generate a cluster id"
        for i in $(seq 1 "$n"); do configure_node "$i" "$n"; format_node "$i" "$cluster_id"; done
    fi
    echo "$n" >"$RUN/nodes"
    for i in $(seq 1 "$n"); do launch_node "$i"; done
    for i in $(seq 1 "$n"); do wait_node "$i"; done
    bootstrap
}

stop_node() {
    local d pid i
    d=$(node_dir "$1")
    [ -f "$d/kafka.pid" ] || return 0
    pid=$(cat "$d/kafka.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -CONT "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$d/kafka.pid"
}

stop() {
    local i
    for i in $(seq 1 "$(nodes)"); do stop_node "$i"; done
}

kill_node() {
    local d; d=$(node_dir "${1:?node number}")
    [ -f "$d/kafka.pid" ] && kill -9 "$(cat "$d/kafka.pid")" 2>/dev/null || true
    rm -f "$d/kafka.pid"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) all_nodes running_node && all_nodes serving_node && echo "running on $(bootstrap)" ;;
    brokers) bootstrap ;;
    kill-node) kill_node "${2:-}" ;;
    start-node) launch_node "${2:?node number}"; wait_node "$2"; echo "127.0.0.1:$(node_port "$2")" ;;
    fetch) fetch ;;
    client-properties) client_properties ;;
    *) echo "usage: $0 start [--nodes N|--secure]|stop|status|brokers|client-properties|kill-node I|start-node I|fetch" >&2; exit 2 ;;
esac
