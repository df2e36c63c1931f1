#!/bin/sh
# Make a Tabby node a route reflector, as Calico's docs do it with calicoctl:
#   calicoctl patch node NODE -p '{"spec":{"bgp":{"routeReflectorClusterID":"CLUSTER_ID"}}}'
#   calicoctl label node NODE route-reflector=true
# The Node exists only once its agent has registered it (after its address appeared), so both
# steps are retried for up to 10 s. Usage: reflector.sh NODE CLUSTER_ID
node="$1"; cluster_id="$2"
for _ in $(seq 100); do
  if tabbyctl patch nodes "$node" -p "{\"spec\":{\"bgp\":{\"routeReflectorClusterID\":\"$cluster_id\"}}}" >/dev/null 2>&1 \
     && tabbyctl label nodes "$node" route-reflector=true --overwrite >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.1
done
echo "error: node $node was not registered within 10 s" >&2
exit 1
