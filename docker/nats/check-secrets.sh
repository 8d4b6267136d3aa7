#!/bin/sh
# Runs before nats-server (the compose files' entrypoint): nats-server reads a $VAR in its config as a
# config value, not as a string, so a password such as "8e51..." (random hex) parses as a number, and
# "true"/"no" as booleans, and the server stops with "Expected a top-level value". Say so here instead,
# naming the variable, and start nothing. Then run the command given (nats-server --config ...).
set -eu
status=0
for var in NATS_PASSWORD NATS_CLUSTER_PASSWORD; do
	eval "value=\${$var:-}"
	case "$value" in
	"") ;;
	true | false | yes | no | on | off | TRUE | FALSE | YES | NO | ON | OFF)
		echo "check-secrets: $var reads as a boolean in nats.conf; make it with: echo \"p\$(openssl rand -hex 24)\"" >&2
		status=64 ;;
	[A-Za-z]*) ;;
	*)
		echo "check-secrets: $var must start with a letter (nats-server would read it as a number or fail to parse it); make it with: echo \"p\$(openssl rand -hex 24)\"" >&2
		status=64 ;;
	esac
done
[ "$status" -eq 0 ] || exit "$status"
exec "$@"
