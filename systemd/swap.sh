#!/bin/sh
# Swap frappe-realtime in for Frappe's Node Socket.IO service in a bench's systemd setup, and
# back, without touching bench's unit file.
#
#   systemd/swap.sh apply    BENCH_DIR [BINARY]   # BINARY: default /usr/local/bin/frappe-realtime
#   systemd/swap.sh rollback BENCH_DIR
#   systemd/swap.sh status   BENCH_DIR
#
# `bench setup systemd` writes BENCH_DIR/config/systemd/<bench>-node-socketio.service (linked
# into /etc/systemd/system by `bench setup systemd --create-symlinks`), <bench> being the bench
# directory's name. `apply` writes the drop-in
#
#   $SYSTEMD_DIR/<bench>-node-socketio.service.d/frappe-realtime.conf
#
# which resets ExecStart= and sets it to BINARY, as `systemctl edit` would; everything else of
# bench's unit (User=, WorkingDirectory=<bench dir>, the two log files, PartOf=<bench>-web.target,
# Restart=always) stays in force, and regenerating the unit does not undo the swap. `rollback`
# removes the drop-in. Both are idempotent. `apply` first runs BINARY --check-config on the
# bench (when BINARY is there yet) and changes nothing if the service would not start on it.
#
# Environment: SYSTEMD_DIR (default /etc/systemd/system), BENCH_NAME (default: the name of
# BENCH_DIR, as bench derives it).
#
# Afterwards: sudo systemctl daemon-reload && sudo systemctl restart <bench>-node-socketio.service
set -eu

DEFAULT_BINARY=/usr/local/bin/frappe-realtime
prog=$(basename "$0")

die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

# As `nginx -t` before a reload: run the binary's own check (`--check-config`) on the bench and
# refuse to swap in a service that would not start there. Its errors (file and key at fault)
# are printed as they are. Skipped, with the warning above, when the binary is not there yet.
check_config() {
	[ -x "$1" ] || return 0
	"$@" --bench "$bench_dir" --check-config >/dev/null ||
		die "\`$* --check-config\` failed on $bench_dir (above); nothing changed"
}
usage() {
	cat >&2 <<USAGE
usage: $prog apply BENCH_DIR [BINARY]   (BINARY default: $DEFAULT_BINARY)
       $prog rollback BENCH_DIR
       $prog status BENCH_DIR
environment: SYSTEMD_DIR (default /etc/systemd/system), BENCH_NAME (default: basename of BENCH_DIR)
USAGE
	exit 2
}

[ $# -ge 2 ] || usage
action=$1
case $action in
apply) [ $# -le 3 ] || usage; binary=${3:-$DEFAULT_BINARY} ;;
rollback | status) [ $# -eq 2 ] || usage ;;
*) usage ;;
esac

[ -d "$2" ] || die "$2: no such bench directory"
bench_dir=$(cd "$2" && pwd -P)
bench_name=${BENCH_NAME:-$(basename "$bench_dir")}
systemd_dir=${SYSTEMD_DIR:-/etc/systemd/system}
unit=$bench_name-node-socketio.service
dropin_dir=$systemd_dir/$unit.d
dropin=$dropin_dir/frappe-realtime.conf

hint() {
	echo "Now: sudo systemctl daemon-reload && sudo systemctl restart $unit"
}

case $action in
status)
	if [ -f "$dropin" ]; then
		echo "$dropin:"
		sed -n 's/^ExecStart=./  &/p' "$dropin"
	else
		echo "no drop-in $dropin: $unit runs bench's ExecStart"
	fi
	;;

apply)
	if [ ! -e "$systemd_dir/$unit" ] && [ ! -e "$bench_dir/config/systemd/$unit" ]; then
		die "$unit not found in $systemd_dir or $bench_dir/config/systemd (run \`bench setup systemd\` first, or set BENCH_NAME/SYSTEMD_DIR)"
	fi
	[ -e "$systemd_dir/$unit" ] || echo "$prog: warning: $systemd_dir/$unit does not exist; link it with \`bench setup systemd --create-symlinks\`" >&2
	case $binary in
	*'
'*) die "BINARY must be one line" ;;
	/*) ;;
	*) die "BINARY must be an absolute path for systemd: $binary" ;;
	esac
	set -f
	set -- $binary
	set +f
	[ $# -ge 1 ] || die "BINARY is empty"
	[ -x "$1" ] || echo "$prog: warning: $1 is not an executable file (yet)" >&2
	check_config "$@"
	tmp=$(mktemp)
	trap 'rm -f "$tmp"' EXIT
	cat >"$tmp" <<DROPIN
# Written by frappe-realtime's systemd/swap.sh: run frappe-realtime instead of Frappe's Node
# Socket.IO service. Everything else comes from bench's $unit.
# Undo: systemd/swap.sh rollback $bench_dir (or delete this file), then systemctl daemon-reload.
[Service]
ExecStart=
ExecStart=$binary
DROPIN
	if [ -f "$dropin" ] && cmp -s "$tmp" "$dropin"; then
		echo "$dropin already runs $binary; nothing to do"
	else
		mkdir -p "$dropin_dir"
		chmod 644 "$tmp"
		mv -f "$tmp" "$dropin"
		echo "wrote $dropin: $unit -> ExecStart=$binary"
	fi
	trap - EXIT
	rm -f "$tmp"
	hint
	;;

rollback)
	if [ -e "$dropin" ]; then
		rm -f "$dropin"
		rmdir "$dropin_dir" 2>/dev/null || true
		echo "removed $dropin: $unit runs bench's ExecStart again"
	else
		echo "no drop-in $dropin; nothing to do"
	fi
	hint
	;;
esac
