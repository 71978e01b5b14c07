# Sourced by the set-up scripts: installs missing Debian packages and the Rust components the
# project needs, idempotently (nothing is fetched when everything is present).

need_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        return 1
    fi
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

need_rust() {
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; return 1; }
    for comp in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$comp" || rustup component add "$comp"
    done
}

# Everything any crate of the workspace needs to build: clang and libbpf's headers compile the
# XDP program (ebpf/build.rs).
need_build() {
    need_apt clang llvm libbpf-dev linux-libc-dev
}

# A PostgreSQL server for the control plane's database tests: Debian's package, its newest
# cluster started, and a role and database `linerate` (password `linerate`) owned by that role.
# Set-up goes through the local socket as the `postgres` superuser (peer authentication);
# clients use TCP on 127.0.0.1, where Debian's pg_hba.conf asks for a password, because peer
# authentication would need an OS user named `linerate`. Exports LINERATE_TEST_DATABASE_URL.
need_postgres() {
    need_apt postgresql || return 1
    local ver name port status _rest
    read -r ver name port status _rest < <(pg_lsclusters --no-header 2>/dev/null | sort -V -k1,1 | tail -n 1) || true
    if [ -z "${ver:-}" ]; then
        ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1) || true
        [ -n "$ver" ] || { echo "postgresql is installed but /usr/lib/postgresql holds no version" >&2; return 1; }
        echo "creating PostgreSQL cluster $ver/main" >&2
        pg_createcluster "$ver" main >/dev/null || return 1
        read -r ver name port status _rest < <(pg_lsclusters --no-header | grep "^$ver  *main ") || true
    fi
    if [ "$status" != "online" ]; then
        echo "starting PostgreSQL cluster $ver/$name" >&2
        pg_ctlcluster "$ver" "$name" start || service postgresql start || return 1
    fi
    local i
    for i in $(seq 1 50); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 0.2
    done
    pg_isready -q -h 127.0.0.1 -p "$port" || { echo "PostgreSQL $ver/$name does not answer on port $port" >&2; return 1; }
    local psql=(runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres -tA)
    if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'linerate'")" != 1 ]; then
        "${psql[@]}" -c "CREATE ROLE linerate LOGIN PASSWORD 'linerate'" || return 1
    fi
    if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'linerate'")" != 1 ]; then
        "${psql[@]}" -c "CREATE DATABASE linerate OWNER linerate" || return 1
    fi
    export LINERATE_TEST_DATABASE_URL="postgres://linerate:linerate@127.0.0.1:$port/linerate"
}

# A virtual environment under target/ (the system's Python stays as it is) holding what
# REQUIREMENTS lists, made or completed when `import MODULES` fails there.
need_venv() {
    local reqs=$1 modules=$2 root venv
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    venv=$root/target/pyenv
    if ! "$venv/bin/python" -c "import $modules" 2>/dev/null; then
        command -v python3 >/dev/null || need_apt python3 || return 1
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv" 2>/dev/null \
            || { need_apt python3-venv && python3 -m venv "$venv"; } || return 1
        echo "installing $reqs into $venv" >&2
        "$venv/bin/pip" install -q -r "$root/$reqs" || return 1
    fi
    VENV_PYTHON="$venv/bin/python"
}

# Python with psycopg for the example scripts (control/examples/*.py); exports LINERATE_PYTHON.
need_psycopg() {
    need_venv control/examples/requirements.txt psycopg || return 1
    export LINERATE_PYTHON="$VENV_PYTHON"
}

# Python with kubernetes-validate (and PyYAML) for checking deploy/kubernetes/; exports
# LINERATE_DEPLOY_PYTHON.
need_deploy_tools() {
    need_venv deploy/requirements.txt "kubernetes_validate, yaml" || return 1
    export LINERATE_DEPLOY_PYTHON="$VENV_PYTHON"
}
