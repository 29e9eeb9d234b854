# Shared by scripts/test and scripts/bench-*: installs and starts the services Tollgate's
# tests and benchmarks run against. Source it after `set -euo pipefail`; it defines
# functions, a throwaway $workdir, and an EXIT trap that stops every service started.

readonly TANSU_VERSION=0.6.0

say() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# One line naming the machine a benchmark ran on. Figures of CPU-bound benchmarks differ
# between hosts of the same size by up to two times, so the CPU model goes with them.
describe_machine() {
    local cpu
    cpu=$(lscpu 2>/dev/null | awk -F: '
        /^Model name/ { name = $2 } /^CPU family/ { family = $2 } /^Model:/ { model = $2 }
        END { gsub(/^ +/, "", name); gsub(/ /, "", family); gsub(/ /, "", model);
              printf "%s (family %s, model %s)", name, family, model }')
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, ${cpu:-CPU unknown}; $(date -u +%Y-%m-%d)"
}

install_debian_packages() {
    local missing=()
    command -v clickhouse-server >/dev/null || missing+=(clickhouse-server clickhouse-client)
    command -v curl >/dev/null || missing+=(curl)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    dpkg -s libsasl2-dev >/dev/null 2>&1 || missing+=(libsasl2-dev)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    # The dashboard's browser tests drive Debian's chromium through its chromedriver.
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_tansu() {
    local tansu="$HOME/.cargo/bin/tansu"
    if [ -x "$tansu" ] && [ "$("$tansu" --version 2>/dev/null)" = "tansu $TANSU_VERSION" ]; then
        return
    fi
    say "building the tansu $TANSU_VERSION broker (once; cached in ~/.cargo/bin, about 10 minutes)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql --quiet
}

# Tests that stop and restart a broker of their own (outage drills) start this binary.
export TOLLGATE_TEST_TANSU="$HOME/.cargo/bin/tansu"

# The pinned official client SDKs (tests/python/requirements.txt) in a virtualenv cached
# under ~/.cache/tollgate, rebuilt when the requirements change.
install_python_sdks() {
    local venv="$HOME/.cache/tollgate/python-sdks"
    local requirements="$repo_root/tests/python/requirements.txt"
    local wanted
    wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
        say "installing the pinned Python client SDKs into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        echo "$wanted" >"$venv/.requirements.sha256"
    fi
    export TOLLGATE_TEST_PYTHON="$venv/bin/python"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_until() {
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq $((seconds * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "scripts/test: $what did not come up within ${seconds}s" >&2
    return 1
}

workdir=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-test.XXXXXX")
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$status" != 0 ] && [ -d "$workdir" ]; then
        for logfile in "$workdir"/*.log "$workdir"/clickhouse/log/*.log; do
            [ -s "$logfile" ] || continue
            echo "--- last lines of $logfile" >&2
            tail -n 20 "$logfile" >&2
        done
    fi
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_broker [NAME]: NAME tells the log file apart when a script starts two brokers.
start_broker() {
    local port log="$workdir/tansu${1:+-$1}.log"
    port=$(free_port)
    # SQLite storage rather than memory://: tansu 0.6's memory engine reports a high
    # watermark of one per produced batch instead of one per record. The path is relative
    # to the broker's working directory. TOLLGATE_TEST_BROKER_STORAGE overrides it for
    # experiments (for example memory://tansu/ to see what the storage costs).
    (cd "$workdir" && exec "$HOME/.cargo/bin/tansu" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "${TOLLGATE_TEST_BROKER_STORAGE:-sqlite://tansu.db}" \
        >"$log" 2>&1) &
    pids+=($!)
    export TOLLGATE_TEST_BROKER_PID=$!
    wait_until "the tansu broker on port $port" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    export TOLLGATE_TEST_KAFKA_BROKERS="127.0.0.1:$port"
}

start_clickhouse() {
    local http_port tcp_port dir="$workdir/clickhouse"
    http_port=$(free_port)
    tcp_port=$(free_port)
    mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
    cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/server.log</log>
        <errorlog>$dir/log/server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$http_port</http_port>
    <tcp_port>$tcp_port</tcp_port>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
EOF
    clickhouse-server --config-file="$dir/config.xml" >"$workdir/clickhouse.log" 2>&1 &
    pids+=($!)
    wait_until "ClickHouse on port $http_port" 60 curl -fsS "http://127.0.0.1:$http_port/ping"
    export TOLLGATE_TEST_CLICKHOUSE_URL="http://127.0.0.1:$http_port"
}

