# The tabby/node image: the node agent (tabby-node), the cluster controller (tabby-controller),
# tabbyctl and the CNI installer (manifests/cni/install.sh), on Debian 12 as the project is tested.
#   docker build -t tabby/node:latest .
# Used by docker-compose.yml and manifests/ (DaemonSet, Deployment).
# The CNI plugin's native forwarder (controller/cni/forward.c), static: install.sh copies it from
# manifests/cni/tabby-forward, so the node needs no C compiler.
FROM debian:bookworm-slim AS forward
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY controller/cni/forward.c /src/forward.c
RUN gcc -O2 -static -o /src/tabby-forward /src/forward.c

FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv iproute2 nftables iputils-ping \
        procps kmod ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tabby
COPY pyproject.toml README.md ./
COPY common ./common
COPY datamodel ./datamodel
COPY datastore ./datastore
COPY ipam ./ipam
COPY felix_like ./felix_like
COPY bgp ./bgp
COPY controller ./controller
COPY lab ./lab
COPY manifests ./manifests
COPY --from=forward /src/tabby-forward ./manifests/cni/tabby-forward
COPY examples ./examples
RUN python3 -m venv /opt/tabby/.venv \
 && /opt/tabby/.venv/bin/pip install --no-cache-dir /opt/tabby \
 && ln -s /opt/tabby/.venv/bin/tabby-node /opt/tabby/.venv/bin/tabby-controller \
        /opt/tabby/.venv/bin/tabbyctl /usr/local/bin/
ENV PATH=/opt/tabby/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    TABBY_LOG_FORMAT=json \
    GRPC_VERBOSITY=NONE
# Felix's metrics port; the controller's is 9094.
EXPOSE 9091 9094
CMD ["tabby-node"]
