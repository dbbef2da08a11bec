# shellcheck shell=bash
# Installs each package the way its users install it, built with the dev profile in the
# workspace's target dir (so every script shares one debug build). Sourced by
# scripts/demo, scripts/python-tests, scripts/node-tests, scripts/ruby-tests and
# scripts/polyglot-tests. Every function reports on stderr and returns non-zero on
# failure; none exits.

# apt-get install, refreshing the package lists only when a first try fails.
tasker_apt_install() { # packages...
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >/dev/null &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >/dev/null
    }
}

# The Debian packages of those given that are not installed yet.
tasker_missing_debs() { # packages...
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# A venv at VENV (python3-venv from apt when missing) with the `tasker` package from
# ./bindings-python (dev profile) and the extra pip requirements given.
tasker_python_package() { # ROOT VENV [pip requirement...]
    local root="$1" venv="$2"
    shift 2
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "installing python3 and python3-venv (apt)" >&2
        tasker_apt_install python3 python3-venv || return 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating a Python venv in $venv" >&2
        python3 -m venv "$venv" || return 1
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.9,<2' "$@" || return 1
    echo "pip install ./bindings-python (dev profile)" >&2
    (cd "$root" && PATH="$venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" \
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
        --force-reinstall --no-deps ./bindings-python)
}

# Node.js 20+ and npm (apt when missing), then `npm install ./bindings-node` (dev
# profile) and the extra npm packages given into the scratch project SCRATCH; the
# package lands in SCRATCH/node_modules/tasker.
tasker_node_package() { # ROOT SCRATCH [npm package...]
    local root="$1" scratch="$2"
    shift 2
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "installing nodejs and npm (apt)" >&2
        tasker_apt_install nodejs npm || return 1
    fi
    if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
        echo "Node.js 20 or later is needed (found $(node --version))" >&2
        return 1
    fi
    mkdir -p "$scratch" || return 1
    [ -f "$scratch/package.json" ] || echo '{"name": "tasker-scratch", "private": true}' >"$scratch/package.json"
    echo "npm install ./bindings-node (dev profile) $*" >&2
    (cd "$scratch" && TASKER_NODE_PROFILE=dev npm install --no-audit --no-fund --loglevel=error \
        "$root/bindings-node" "$@" >&2) || return 1
    node -e "require('$scratch/node_modules/tasker')" || {
        echo "the installed Node.js package does not load" >&2
        return 1
    }
}

# Debian's Ruby (and what building the extension needs), then `gem build` and
# `gem install --local` (dev profile) into GEM_HOME=GEMS; the .gem goes to PKG_DIR.
tasker_ruby_gem() { # ROOT TARGET_DIR GEMS PKG_DIR [extra deb...]
    local root="$1" target_dir="$2" gems="$3" pkg_dir="$4"
    shift 4
    local missing
    missing="$(tasker_missing_debs ruby ruby-dev libclang-dev "$@")"
    if [ -n "$missing" ]; then
        echo "installing $(echo "$missing" | paste -sd' ') (apt)" >&2
        # shellcheck disable=SC2086
        tasker_apt_install $missing || return 1
    fi
    mkdir -p "$pkg_dir" || return 1
    echo "gem build tasker.gemspec" >&2
    (cd "$root/bindings-ruby" && gem build tasker.gemspec --output "$pkg_dir/tasker.gem" >/dev/null) || return 1
    echo "gem install --local (dev profile) into $gems" >&2
    if ! GEM_HOME="$gems" GEM_PATH="$gems" TASKER_CARGO_PROFILE=dev CARGO_TARGET_DIR="$target_dir" \
        nice -n 10 gem install --local --no-document --force "$pkg_dir/tasker.gem" >"$pkg_dir/install.log" 2>&1; then
        cat "$pkg_dir/install.log" >&2
        find "$gems/extensions" -name gem_make.out -exec tail -n 40 {} + >&2 2>/dev/null
        return 1
    fi
}

# The GEM_PATH that sees the scratch GEM_HOME and Debian's gems (minitest, rack, ...).
tasker_gem_path() { # GEMS
    echo "$1:$(ruby -e 'print Gem.default_path.join(":")')"
}

# libtasker (debug) in TARGET_DIR/debug, and cJSON's headers (libcjson-dev) for C
# programs.
tasker_c_library() { # ROOT TARGET_DIR
    local root="$1" target_dir="$2"
    if [ ! -f /usr/include/cjson/cJSON.h ]; then
        echo "installing libcjson-dev (apt)" >&2
        tasker_apt_install libcjson-dev || return 1
    fi
    (cd "$root" && cargo build --quiet -p tasker-ffi) || return 1
    [ -f "$target_dir/debug/libtasker.so" ] || {
        echo "$target_dir/debug/libtasker.so was not built" >&2
        return 1
    }
}
