#!/usr/bin/env bash
# Prints the kwok Node objects of the local cluster: two zones in each of
# four regions. kwok marks them Ready and runs the pods scheduled to them.
# Each takes SOMASTACK_KWOK_PODS pods (default 1,000, not a kubelet's 110):
# hack/bench puts up to 3,000 pods on the six nodes of three regions.
set -euo pipefail
PODS="${SOMASTACK_KWOK_PODS:-1000}"
# ap-south-1 is reserved for the drill test that takes a whole region down
# (scope: Region), so no other test loses its pods meanwhile.
REGIONS="${SOMASTACK_REGIONS:-eu-west-1 eu-central-1 us-east-1 ap-south-1}"
for region in $REGIONS; do
  for zone in a b; do
    name="kwok-$region-$zone"
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    node.kubernetes.io/instance-type: kwok.large
    topology.kubernetes.io/region: $region
    topology.kubernetes.io/zone: $region$zone
    type: kwok
spec: {}
status:
  allocatable:
    cpu: "32"
    memory: 128Gi
    pods: "$PODS"
  capacity:
    cpu: "32"
    memory: 128Gi
    pods: "$PODS"
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
YAML
  done
done
