#!/usr/bin/env bash
# `make run`: start the local stack, the four services and the local stand-ins for SMTP,
# Slack and a supplier API (scripts/stack/dev_services.py), register the examples, then run
# restock-check (every node type) to the end: it waits for an approval, which this script
# gives. The stack keeps running; `make stop` stops it.
# The gateway wants a token on every call: this script issues an admin token for the local
# stack once (flowyard-api-gateway issue-token, straight into MongoDB), keeps it in
# $STATE_DIR/admin-token (mode 600), reuses it while the gateway accepts it, and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=stack/lib.sh
source scripts/stack/lib.sh

APPROVAL_WAIT_SECONDS="${FLOWYARD_RUN_APPROVAL_WAIT_SECONDS:-120}"
TOKEN_FILE="$STATE_DIR/admin-token"

eval "$(scripts/stack/start.sh)"
export FLOWYARD_KAFKA_BOOTSTRAP FLOWYARD_MONGO_URL
scripts/services.sh start

flowyard() { scripts/uv.sh run --frozen --no-sync flowyard "$@"; }

# issue_admin_token : a new admin token into $TOKEN_FILE (only MongoDB is needed for this).
issue_admin_token() {
	local token
	token=$(scripts/uv.sh run --frozen --no-sync flowyard-api-gateway issue-token \
		--name local-admin --role admin)
	(
		umask 077
		printf '%s\n' "$token" >"$TOKEN_FILE.new"
	)
	chmod 600 "$TOKEN_FILE.new"
	mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
}

[[ -s "$TOKEN_FILE" ]] || issue_admin_token
chmod 600 "$TOKEN_FILE"
FLOWYARD_TOKEN=$(<"$TOKEN_FILE")
export FLOWYARD_TOKEN

# whoami exits 3 while the gateway is unreachable, 1 when it refuses the token.
echo "waiting for the gateway on ${FLOWYARD_GRPC_ADDR:-127.0.0.1:50051} ..." >&2
status=3
for _ in $(seq 1 120); do
	status=0
	flowyard whoami >/dev/null 2>&1 || status=$?
	[[ "$status" == 3 ]] || break
	sleep 0.5
done
if [[ "$status" != 0 && "$status" != 3 ]]; then
	# A saved token this database does not know (reset, or revoked): issue a new one.
	echo "the saved admin token was refused; issuing a new one" >&2
	issue_admin_token
	FLOWYARD_TOKEN=$(<"$TOKEN_FILE")
fi
flowyard whoami >/dev/null || {
	echo "the gateway did not come up or refuses the admin token; see the logs in" \
		"$STATE_DIR/logs" >&2
	exit 1
}
echo "admin token for the local stack (saved in $TOKEN_FILE):"
echo "  $FLOWYARD_TOKEN"
echo "use it with: export FLOWYARD_TOKEN=\$(cat $TOKEN_FILE)"
echo

# restock-check's query node reads the local store: its URL (with the login start.sh made)
# is kept as a credential, so it is encrypted at rest and redacted from outputs and logs.
printf '%s' "$FLOWYARD_MONGO_URL" | flowyard credential set local_store_url \
	--description "the local document store (make run)" >/dev/null

for file in examples/*.yaml; do
	flowyard workflow apply -f "$file"
done
flowyard workflow list
echo

# run_state RUN_ID NODE_ID : prints "<run status> <task status>", e.g. "waiting waiting".
run_state() {
	flowyard run get "$1" -o json | scripts/uv.sh run --frozen --no-sync python -c '
import json, sys
run = json.load(sys.stdin)
task = next((t for t in run.get("tasks", []) if t.get("nodeId") == sys.argv[1]), {})
print(run.get("status", "").removeprefix("RUN_STATUS_").lower() or "unknown",
      task.get("status", "").removeprefix("TASK_STATUS_").lower() or "unknown")
' "$2" || echo "unknown unknown"
}

# The supplier stand-in has 152 x WIDGET-7; asking for 40 takes the approval branch.
input='{"sku": "widget-7", "quantity": 40, "on_hand": 12, "daily_demand": 5}'
run_id=$(flowyard run start restock-check --input "$input" | head -n 1)
echo "started restock-check run $run_id with $input"

# Follow it until it waits on the approval (or ends without reaching it).
last="" deadline=$((SECONDS + APPROVAL_WAIT_SECONDS))
while :; do
	read -r run_status approval_status <<<"$(run_state "$run_id" approve-purchase)"
	if [[ "$run_status" != "$last" ]]; then
		echo "run $run_id is $run_status"
		last="$run_status"
	fi
	case "$run_status/$approval_status" in
	waiting/waiting) break ;;
	succeeded/* | failed/* | stopped/*) break ;;
	esac
	if ((SECONDS >= deadline)); then
		echo "run $run_id did not reach approve-purchase within ${APPROVAL_WAIT_SECONDS}s" \
			"(FLOWYARD_RUN_APPROVAL_WAIT_SECONDS); see: flowyard run get $run_id" >&2
		exit 1
	fi
	sleep 1
done

if [[ "$approval_status" == waiting ]]; then
	echo "approve-purchase is waiting for a decision; approving it"
	flowyard run approve "$run_id" approve-purchase --comment "approved by make run" || {
		echo "could not approve; the run keeps waiting. Approve it by hand with:" >&2
		echo "  scripts/uv.sh run flowyard run approve $run_id approve-purchase" >&2
		exit 1
	}
fi
flowyard run get "$run_id" --watch

echo
echo "Local stand-ins (scripts/stack/dev_services.py) received:"
echo "  email: $STATE_DIR/logs/dev-mail.log"
echo "  Slack: $STATE_DIR/logs/dev-slack.log"
if [[ -s "$STATE_DIR/logs/dev-mail.log" ]]; then
	tail -n 1 "$STATE_DIR/logs/dev-mail.log" | scripts/uv.sh run --frozen --no-sync python -c '
import json, sys
mail = json.loads(sys.stdin.read())
print("  latest email: to", ", ".join(mail["to"]) + ":", repr(mail["subject"]))
' || true
fi
echo
echo "The stack is running: gRPC ${FLOWYARD_GRPC_ADDR:-127.0.0.1:50051}, metrics on ports 9101-9104."
echo "The CLI needs the admin token: export FLOWYARD_TOKEN=\$(cat $TOKEN_FILE)"
echo "Try the shortage branch (posts to Slack):"
echo "  scripts/uv.sh run flowyard run start restock-check --input '{\"sku\": \"widget-7\", \"quantity\": 500}' --watch"
echo "Stop it with: make stop"
