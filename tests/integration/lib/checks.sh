# Sourced by the shell integration tests (run from the project's root):
# named checks counted in $passed and $failed, and a free loopback port.
#   ok NAME / bad NAME          count and print one result
#   check NAME CMD [ARGS...]    ok when CMD succeeds, bad otherwise
#   free_port                   a TCP port free on 127.0.0.1 now ($PY)
passed=0 failed=0
ok()  { passed=$((passed + 1)); echo "  ok   $1"; }
bad() { failed=$((failed + 1)); echo "  FAIL $1" >&2; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
free_port() { "${PY:-/usr/bin/python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
