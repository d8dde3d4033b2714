#!/bin/sh
# Swap frappe-realtime in for Frappe's Node Socket.IO service in a bench's supervisor config,
# and back.
#
#   supervisor/swap.sh apply    BENCH_DIR [BINARY]   # BINARY: default /usr/local/bin/frappe-realtime
#   supervisor/swap.sh rollback BENCH_DIR
#   supervisor/swap.sh status   BENCH_DIR
#
# Edits BENCH_DIR/config/supervisor.conf (as written by `bench setup supervisor`): only the
# `command=` line of the `[program:<bench>-node-socketio]` block changes; the program name,
# directory=, log files, user=, and the `<bench>-web` group stay as bench wrote them. Before the
# first change the file is copied to supervisor.conf.node-socketio.bak next to it; `rollback`
# puts that backup's command= line back (nothing else is touched, so apply + rollback gives the
# original file byte for byte). Both are idempotent. If `bench setup supervisor` rewrote the
# file since, `apply` takes a fresh backup of the new file.
#
# `apply` first runs BINARY --check-config on the bench (when BINARY is there yet) and changes
# nothing if the service would not start on it.
#
# Afterwards: sudo supervisorctl reread && sudo supervisorctl update
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
	cat >&2 <<EOF
usage: $prog apply BENCH_DIR [BINARY]   (BINARY default: $DEFAULT_BINARY)
       $prog rollback BENCH_DIR
       $prog status BENCH_DIR
EOF
	exit 2
}

[ $# -ge 2 ] || usage
action=$1
bench_dir=$2
case $action in
apply) [ $# -le 3 ] || usage; binary=${3:-$DEFAULT_BINARY} ;;
rollback | status) [ $# -eq 2 ] || usage ;;
*) usage ;;
esac

[ -d "$bench_dir" ] || die "$bench_dir: no such bench directory"
conf=$bench_dir/config/supervisor.conf
[ -e "$conf" ] || die "$conf not found (run \`bench setup supervisor\` in $bench_dir first)"
[ -f "$conf" ] || die "$conf is not a regular file"
# Edit the real file when config/supervisor.conf is a symlink.
conf=$(readlink -f "$conf")
backup=$conf.node-socketio.bak

# Prints "<sections> <line number of command= or 0> <count of command= lines>" for the
# [program:*-node-socketio] section(s) of file $1.
locate() {
	awk '
		/^[ \t]*\[/ {
			insec = ($0 ~ /^[ \t]*\[program:[^]]*-node-socketio\][ \t]*\r?$/)
			if (insec) sections++
			next
		}
		insec && /^[ \t]*command[ \t]*=/ { if (!line) line = NR; count++ }
		END { printf "%d %d %d\n", sections, line, count }
	' "$1"
}

# The command= line of the socketio block of file $1 (checked: exactly one block, one line).
command_line() {
	set -- "$1" $(locate "$1")
	[ "$2" -ge 1 ] || die "$1 has no [program:<bench>-node-socketio] block (is socketio disabled, or was it renamed?)"
	[ "$2" -eq 1 ] || die "$1 has $2 [program:*-node-socketio] blocks; edit it by hand"
	[ "$4" -ge 1 ] || die "$1: the [program:*-node-socketio] block has no command= line"
	[ "$4" -eq 1 ] || die "$1: the [program:*-node-socketio] block has $4 command= lines"
	LINE_NO=$3
	LINE=$(sed -n "${3}p" "$1")
}

# Replace line $2 of file $1 with the text $3; every other byte stays (GNU sed keeps a missing
# final newline); ownership and mode are kept; the file is replaced atomically.
replace_line() {
	escaped=$(printf '%s\n' "$3" | sed 's/[\\&|]/\\&/g')
	tmp=$(mktemp "$1.swap.XXXXXX")
	trap 'rm -f "$tmp"' EXIT
	sed "${2}s|.*|$escaped|" "$1" >"$tmp"
	chmod --reference="$1" "$tmp" 2>/dev/null || true
	chown --reference="$1" "$tmp" 2>/dev/null || true
	mv -f "$tmp" "$1"
	trap - EXIT
}

hint() {
	echo "Now: sudo supervisorctl reread && sudo supervisorctl update"
}

command_line "$conf"
current=$LINE
current_no=$LINE_NO

case $action in
status)
	echo "$conf line $current_no: $current"
	if [ -f "$backup" ]; then
		command_line "$backup"
		echo "backup $backup: $LINE"
	else
		echo "no backup (never applied)"
	fi
	;;

apply)
	case $binary in
	*'
'*) die "BINARY must be one line" ;;
	/*) ;;
	*) echo "$prog: warning: $binary is not an absolute path; supervisor resolves it against its own PATH" >&2 ;;
	esac
	set -f
	set -- $binary
	set +f
	[ $# -ge 1 ] || die "BINARY is empty"
	[ -x "$1" ] || echo "$prog: warning: $1 is not an executable file (yet)" >&2
	check_config "$@"
	wanted="command=$binary"
	if [ "$current" = "$wanted" ]; then
		echo "$conf already runs $binary; nothing to do"
		hint
		exit 0
	fi
	refresh_backup=yes
	if [ -f "$backup" ]; then
		command_line "$backup"
		# Current file already swapped (to another binary): keep the backup's Node command.
		[ "$LINE" = "$current" ] || refresh_backup=no
	fi
	if [ $refresh_backup = yes ]; then
		cp -p "$conf" "$backup"
		echo "backup: $backup"
	fi
	replace_line "$conf" "$current_no" "$wanted"
	echo "$conf: [program:*-node-socketio] $current -> $wanted"
	hint
	;;

rollback)
	[ -f "$backup" ] || die "no backup $backup: nothing to roll back (was apply run on this bench?)"
	command_line "$backup"
	original=$LINE
	if [ "$current" = "$original" ]; then
		echo "$conf already runs the original command ($original); nothing to do"
		hint
		exit 0
	fi
	replace_line "$conf" "$current_no" "$original"
	echo "$conf: [program:*-node-socketio] $current -> $original"
	hint
	;;
esac
