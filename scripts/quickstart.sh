#!/usr/bin/env bash
# The README's quickstart, step by step against a running server: a metric, its product, a
# rate card, a customer, a contract with a prepaid commit and both threshold configurations,
# usage, the auto-recharge workflow it starts (and its webhook), its release, the balance.
#   scripts/quickstart.sh [BASE_URL]     (TOKEN defaults to the development token)
set -euo pipefail
BASE="${1:-http://127.0.0.1:8080}"
TOKEN="${TOKEN:-tollgate-dev-token}"

# POST (or GET without a body) with the token; prints the answer; fails on a non-2xx.
call() {
  local method="$1" path="$2" body="${3:-}"
  echo ">>> $method $path $body" >&2
  if [ -n "$body" ]; then
    curl -sS --fail-with-body -X "$method" -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' "$BASE$path" -d "$body"
  else
    curl -sS --fail-with-body -X "$method" -H "Authorization: Bearer $TOKEN" "$BASE$path"
  fi
  echo >&2
}
# Reads a field of the JSON on stdin, e.g. field data.id
field() {
  python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if k.isdigit() else v[k]
print(v)' "$1"
}

MONTH_START="$(date -u +%Y-%m-01T00:00:00Z)"
NOW="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
RUN="$(date +%s%N)"

# 1. A billable metric: count the events of type api_call.
METRIC=$(call POST /v1/billable-metrics/create \
  '{"name": "API calls", "aggregation_type": "COUNT", "event_type_filter": {"in_values": ["api_call"]}}' | field data.id)
# 2. A usage product on it, and a fixed product for the prepaid commits.
USAGE=$(call POST /v1/contract-pricing/products/create \
  "{\"name\": \"API calls\", \"type\": \"USAGE\", \"billable_metric_id\": \"$METRIC\"}" | field data.id)
CREDIT=$(call POST /v1/contract-pricing/products/create \
  '{"name": "Prepaid credit", "type": "FIXED"}' | field data.id)
# 3. A rate card: $1.00 (100 cents) per API call.
CARD=$(call POST /v1/contract-pricing/rate-cards/create '{"name": "Standard"}' | field data.id)
call POST /v1/contract-pricing/rate-cards/addRate \
  "{\"rate_card_id\": \"$CARD\", \"product_id\": \"$USAGE\", \"entitled\": true, \"rate_type\": \"FLAT\", \"price\": 100, \"starting_at\": \"$MONTH_START\"}" >/dev/null
# 4. A customer whose services send usage as "acme-$RUN".
ALIAS="acme-$RUN"
CUSTOMER=$(call POST /v1/customers "{\"name\": \"Acme\", \"ingest_aliases\": [\"$ALIAS\"]}" | field data.id)
# 5. A contract: a $50 prepaid commit; recharge it to $50 when it falls to $20 (prepaid balance
#    threshold), and charge $10 of uncovered usage at once (spend threshold); both paid through
#    your own payment system (EXTERNAL gate).
CONTRACT=$(call POST /v1/contracts/create "{
  \"customer_id\": \"$CUSTOMER\", \"rate_card_id\": \"$CARD\", \"starting_at\": \"$MONTH_START\",
  \"commits\": [{\"type\": \"PREPAID\", \"product_id\": \"$CREDIT\", \"priority\": 10,
    \"access_schedule\": {\"schedule_items\": [{\"amount\": 5000, \"starting_at\": \"$MONTH_START\", \"ending_before\": \"2099-01-01T00:00:00Z\"}]},
    \"invoice_schedule\": {\"schedule_items\": [{\"timestamp\": \"$MONTH_START\", \"amount\": 5000}]}}],
  \"prepaid_balance_threshold_configuration\": {\"commit\": {\"product_id\": \"$CREDIT\", \"name\": \"Auto-recharge\"},
    \"is_enabled\": true, \"payment_gate_config\": {\"payment_gate_type\": \"EXTERNAL\"},
    \"threshold_amount\": 2000, \"recharge_to_amount\": 5000},
  \"spend_threshold_configuration\": {\"commit\": {\"product_id\": \"$CREDIT\", \"name\": \"Threshold charge\"},
    \"is_enabled\": true, \"payment_gate_config\": {\"payment_gate_type\": \"EXTERNAL\"},
    \"threshold_amount\": 1000}}" | field data.id)
# 6. Usage: 30 API calls ($30) draw the commit down to $20, the threshold: the recharge is
#    decided on the event that reaches it, for $30 (to $50).
EVENTS=$(python3 -c 'import json, sys
print(json.dumps([{"transaction_id": f"{sys.argv[1]}-{i}", "customer_id": sys.argv[1],
  "event_type": "api_call", "timestamp": sys.argv[2]} for i in range(30)]))' "$ALIAS" "$NOW")
call POST /v1/ingest "$EVENTS" >/dev/null
# 7. The recharge workflow started at once: payment_gate.threshold_reached and
#    payment_gate.external_initiate went to your webhook endpoint; it is also listed here.
WORKFLOW=""
for _ in $(seq 1 50); do
  WORKFLOW=$(call GET "/v1/tollgate/workflows?customer_id=$CUSTOMER&state=AWAITING_EXTERNAL" \
    | python3 -c 'import json, sys; d = json.load(sys.stdin)["data"]; print(d[0]["id"] if d else "")')
  [ -n "$WORKFLOW" ] && break
  sleep 0.1
done
[ -n "$WORKFLOW" ] || { echo "quickstart: no workflow awaiting its payment" >&2; exit 1; }
# 8. Your payment system collected the money: release the recharge.
call POST /v1/contracts/commits/threshold-billing/release \
  "{\"workflow_id\": \"$WORKFLOW\", \"outcome\": \"paid\"}" >/dev/null
# 9. The balance is back to $50 (5000 cents).
BALANCE=$(call POST /v1/contracts/customerBalances/getNetBalance "{\"customer_id\": \"$CUSTOMER\"}" | field data.balance)
echo "quickstart: customer $CUSTOMER, contract $CONTRACT, workflow $WORKFLOW released, balance $BALANCE"
[ "$BALANCE" = "5000" ] || { echo "quickstart: expected a balance of 5000, got $BALANCE" >&2; exit 1; }
