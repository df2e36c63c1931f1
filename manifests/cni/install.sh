#!/bin/sh
# Install the Tabby CNI plugins (tabby, tabby-ipam) and the network configuration.
#
# Self-contained: <bin dir>/tabby-cni.py is a copy of the stdlib-only plugin, run by the NODE's
# python3 (3.7+, isolated: -I -S); tabby and tabby-ipam are /bin/sh launchers. Nothing points at
# this checkout or its virtualenv, so the DaemonSet's init container can install it on any host.
# Usage: install.sh [--bin-dir DIR] [--conf-dir DIR] [--python PATH] [--no-conf]
#   --python PATH  bake this interpreter (default: python3 found on PATH at run time, then /usr/bin/python3)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
BIN_DIR=/opt/cni/bin
CONF_DIR=/etc/cni/net.d
PYTHON=""
WRITE_CONF=1

while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        --conf-dir) CONF_DIR=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --no-conf) WRITE_CONF=0; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
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

# 1. the Python program: a version check that even an old python3 can parse, then the plugin.
TMP="$BIN_DIR/.tabby-cni.py.tmp"
{
    cat <<'HEADER'
# Tabby CNI plugin (self-contained copy installed by manifests/cni/install.sh). Standard library only.
import sys
if sys.version_info < (3, 7):
    sys.stdout.write('{"cniVersion": "1.0.0", "code": 999, "msg": "the tabby CNI plugin needs python3 3.7 or '
                     'newer on the node, found %d.%d", "details": "%s"}\n'
                     % (sys.version_info[0], sys.version_info[1], sys.executable))
    sys.exit(1)
HEADER
    cat "$PLUGIN"
} > "$TMP"
chmod 0644 "$TMP"
mv -f "$TMP" "$BIN_DIR/tabby-cni.py"

# 2. the launchers the runtime executes by type name.
for TYPE in tabby tabby-ipam; do
    TMP="$BIN_DIR/.$TYPE.tmp"
    cat > "$TMP" <<SCRIPT
#!/bin/sh
# Tabby CNI plugin '$TYPE' $VERSION (installed by manifests/cni/install.sh): runs tabby-cni.py beside
# this file with the node's python3. No python3 -> a CNI error (code 999) saying so.
PY="\${TABBY_CNI_PYTHON:-$PYTHON}"
if [ -z "\$PY" ]; then
    PY=\$(command -v python3 2>/dev/null || true)
    [ -n "\$PY" ] || { [ -x /usr/bin/python3 ] && PY=/usr/bin/python3; }
fi
if [ -z "\$PY" ] || ! [ -x "\$PY" ] && ! command -v "\$PY" >/dev/null 2>&1; then
    printf '%s\n' '{"cniVersion": "1.0.0", "code": 999, "msg": "the tabby CNI plugin needs python3 (3.7 or newer) on the node; none found", "details": "install python3 on the host, or set TABBY_CNI_PYTHON"}'
    exit 1
fi
exec "\$PY" -I -S "\$(dirname "\$0")/tabby-cni.py" $TYPE "\$@"
SCRIPT
    chmod 0755 "$TMP"
    mv -f "$TMP" "$BIN_DIR/$TYPE"
done

if [ "$WRITE_CONF" = 1 ]; then
    mkdir -p "$CONF_DIR"
    cp "$HERE/10-tabby.conflist" "$CONF_DIR/10-tabby.conflist.tmp"
    mv -f "$CONF_DIR/10-tabby.conflist.tmp" "$CONF_DIR/10-tabby.conflist"
fi
echo "installed tabby, tabby-ipam (python program tabby-cni.py) into $BIN_DIR" >&2
