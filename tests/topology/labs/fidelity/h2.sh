#!/bin/bash
# host h2: address and route towards the other side, then stay up as the container's main process
set -e
ip addr add 10.2.2.2/24 dev eth1
ip link set eth1 up
ip route replace 10.1.1.0/24 via 10.2.2.1
echo "h2 configured"
exec sleep infinity
