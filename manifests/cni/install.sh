#!/bin/sh
# Install the Tabby CNI plugins (tabby, tabby-ipam) and the network configuration.
#
# Self-contained: <bin dir>/tabby_cni.py is a copy of the stdlib-only plugin (with its byte-code in
# __pycache__), run through the bootstrap tabby-cni.py by the NODE's python3 (3.7+, isolated: -I -S);
# tabby and tabby-ipam are /bin/sh launchers. Nothing points at
# this checkout or its virtualenv, so the DaemonSet's init container can install it on any host.
# Native forwarder: where a C compiler is present (or a prebuilt tabby-forward lies beside this
# script), tabby and tabby-ipam are controller/cni/forward.c instead, which passes ADD/DEL/CHECK to
# the agent without starting Python (the agent answers with the plugin's own code) and runs the
# Python plugin (tabby-py) for everything else: no agent, VERSION, GC, STATUS, unusual netconfs.
# Usage: install.sh [--bin-dir DIR] [--conf-dir DIR] [--python PATH] [--no-conf] [--no-native]
#   --python PATH  bake this interpreter (default: python3 found on PATH at run time, then /usr/bin/python3)
#   --no-native    install the Python plugin alone (no forwarder)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=/opt/cni/bin
CONF_DIR=/etc/cni/net.d
PYTHON=""
WRITE_CONF=1
NATIVE=1

while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        --conf-dir) CONF_DIR=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --no-conf) WRITE_CONF=0; shift ;;
        --no-native) NATIVE=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# The plugin source: beside this script in an image (/usr/share/tabby/cni), or the checkout's.
PLUGIN="$HERE/plugin.py"
[ -f "$PLUGIN" ] || PLUGIN="$HERE/../../controller/cni/plugin.py"
[ -f "$PLUGIN" ] || { echo "install.sh: plugin.py not found beside $0 nor in the checkout" >&2; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$HERE/../../pyproject.toml" 2>/dev/null || true)
VERSION=${VERSION:-${TABBY_VERSION:-unknown}}
mkdir -p "$BIN_DIR"

# 1. the Python program: tabby_cni.py (the plugin) and its byte-code, and tabby-cni.py, a bootstrap
#    that even an old python3 can parse (version check), then imports tabby_cni. Imported, not run
#    as the script: a script is compiled on every start (~3 ms per pod), an imported module is read
#    from __pycache__ (compiled here; a node python3 of another version writes its own on first use).
TMP="$BIN_DIR/.tabby_cni.py.tmp"
{
    echo "# Tabby CNI plugin $VERSION (self-contained copy installed by manifests/cni/install.sh). Standard library only."
    cat "$PLUGIN"
} > "$TMP"
chmod 0644 "$TMP"
mv -f "$TMP" "$BIN_DIR/tabby_cni.py"
TMP="$BIN_DIR/.tabby-cni.py.tmp"
cat > "$TMP" <<'BOOT'
# Tabby CNI plugin bootstrap (installed by manifests/cni/install.sh): checks the interpreter, then
# runs tabby_cni.py beside this file, from its cached byte-code. Standard library only.
import sys
if sys.version_info < (3, 7):
    sys.stdout.write('{"cniVersion": "1.0.0", "code": 999, "msg": "the tabby CNI plugin needs python3 3.7 or '
                     'newer on the node, found %d.%d", "details": "%s"}\n'
                     % (sys.version_info[0], sys.version_info[1], sys.executable))
    sys.exit(1)
sys.path.append(sys.argv[0].rpartition("/")[0] or ".")
import tabby_cni
tabby_cni.entry()
BOOT
chmod 0644 "$TMP"
mv -f "$TMP" "$BIN_DIR/tabby-cni.py"
COMPILE_PY=${PYTHON:-$(command -v python3 2>/dev/null || true)}
if [ -n "$COMPILE_PY" ]; then
    "$COMPILE_PY" -I -S -c 'import py_compile, sys
py_compile.compile(sys.argv[1], doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)' \
        "$BIN_DIR/tabby_cni.py" 2>/dev/null || echo "install.sh: could not precompile tabby_cni.py (compiled on first use)" >&2
fi

# 2. the native forwarder, built here (or prebuilt beside this script); the launchers below are then
#    tabby-py, which the forwarder runs for what it does not pass on.
FORWARD=""
if [ "$NATIVE" = 1 ]; then
    if [ -x "$HERE/tabby-forward" ]; then
        FORWARD="$HERE/tabby-forward"
    else
        SRC="$HERE/forward.c"
        [ -f "$SRC" ] || SRC="$HERE/../../controller/cni/forward.c"
        CC=$(command -v cc 2>/dev/null || command -v gcc 2>/dev/null || true)
        if [ -f "$SRC" ] && [ -n "$CC" ]; then
            # Static where libc.a is there: the binary then runs on any host's libc.
            if "$CC" -O2 -static -o "$BIN_DIR/.tabby-forward.tmp" "$SRC" 2>/dev/null \
                || "$CC" -O2 -o "$BIN_DIR/.tabby-forward.tmp" "$SRC"; then
                FORWARD="$BIN_DIR/.tabby-forward.tmp"
            fi
        fi
        [ -n "$FORWARD" ] || echo "install.sh: no C compiler (or the build failed): the Python plugin alone" >&2
    fi
fi

# 3. the launchers: tabby and tabby-ipam by type name (tabby-py, mode as its argument, behind the forwarder).
if [ -n "$FORWARD" ]; then TYPES="tabby-py"; else TYPES="tabby tabby-ipam"; rm -f "$BIN_DIR/tabby-py"; fi
for TYPE in $TYPES; do
    MODEARG=$TYPE; [ "$TYPE" = tabby-py ] && MODEARG=""
    TMP="$BIN_DIR/.$TYPE.tmp"
    cat > "$TMP" <<SCRIPT
#!/bin/sh
# Tabby CNI plugin '$TYPE' $VERSION (installed by manifests/cni/install.sh): runs tabby-cni.py beside
# this file with the node's python3. No python3 -> a CNI error (code 999) saying so.
# No subshell or external command here (each fork+exec is ~1 ms on every pod's start).
PY="\${TABBY_CNI_PYTHON:-$PYTHON}"
if [ -z "\$PY" ]; then
    set -f; _ifs=\$IFS; IFS=:
    for _d in \$PATH; do
        if [ -f "\${_d:-.}/python3" ] && [ -x "\${_d:-.}/python3" ]; then PY=\${_d:-.}/python3; break; fi
    done
    IFS=\$_ifs; set +f
    [ -n "\$PY" ] || { [ -x /usr/bin/python3 ] && PY=/usr/bin/python3; }
fi
if [ -z "\$PY" ] || ! [ -x "\$PY" ] && ! command -v "\$PY" >/dev/null 2>&1; then
    printf '%s\n' '{"cniVersion": "1.0.0", "code": 999, "msg": "the tabby CNI plugin needs python3 (3.7 or newer) on the node; none found", "details": "install python3 on the host, or set TABBY_CNI_PYTHON"}'
    exit 1
fi
case \$0 in */*) _here=\${0%/*} ;; *) _here=. ;; esac
exec "\$PY" -I -S "\$_here/tabby-cni.py" $MODEARG "\$@"
SCRIPT
    chmod 0755 "$TMP"
    mv -f "$TMP" "$BIN_DIR/$TYPE"
done
if [ -n "$FORWARD" ]; then
    for TYPE in tabby tabby-ipam; do
        cp "$FORWARD" "$BIN_DIR/.$TYPE.tmp"
        chmod 0755 "$BIN_DIR/.$TYPE.tmp"
        mv -f "$BIN_DIR/.$TYPE.tmp" "$BIN_DIR/$TYPE"
    done
    rm -f "$BIN_DIR/.tabby-forward.tmp"
fi

if [ "$WRITE_CONF" = 1 ]; then
    mkdir -p "$CONF_DIR"
    cp "$HERE/10-tabby.conflist" "$CONF_DIR/10-tabby.conflist.tmp"
    mv -f "$CONF_DIR/10-tabby.conflist.tmp" "$CONF_DIR/10-tabby.conflist"
fi
if [ -n "$FORWARD" ]; then
    echo "installed tabby, tabby-ipam (native forwarder; python program tabby-py -> tabby-cni.py + tabby_cni.py) into $BIN_DIR" >&2
else
    echo "installed tabby, tabby-ipam (python program tabby-cni.py + tabby_cni.py) into $BIN_DIR" >&2
fi
