#!/bin/bash
# host h1: address and route towards the other side, then stay up as the container's main process
set -e
ip addr add 10.1.1.2/24 dev eth1
ip link set eth1 up
ip route replace 10.2.2.0/24 via 10.1.1.1
echo "h1 configured"
exec sleep infinity
