# Sourced by the bench scripts that discover their origins through a
# registry (bench/callgrind.sh, bench/idle-upstream-h2.sh).

# register_instance REGISTRY_PORT SERVICE ID ORIGIN_PORT SCHEME: lists
# 127.0.0.1:ORIGIN_PORT as instance ID of SERVICE (an hour's lease) with the
# registry on 127.0.0.1:REGISTRY_PORT, retrying while the registry starts.
register_instance() {
  local body="{\"address\": \"127.0.0.1\", \"port\": $4, \"ttl\": \"1h\", \"scheme\": \"$5\"}"
  for _ in $(seq 100); do
    curl -sf -X PUT -H 'content-type: application/json' -d "$body" \
      "http://127.0.0.1:$1/v1/services/$2/instances/$3" >/dev/null && return 0
    sleep 0.1
  done
  echo "the registry on port $1 did not take instance $3 of $2" >&2
  return 1
}
