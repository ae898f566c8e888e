# shellcheck shell=bash
# One signed, trusted and approved Capsule for the scripts that load the
# cluster (hack/bench, hack/chaos): sourced, functions only.

# publish_capsule PREFIX PACKAGE WORK: a P-256 key of its own (WORK/PREFIX-publisher.key);
# PolicyBundle PREFIX-trust over the namespaces labelled somastack.io/PREFIX=true
# (signature and approval required, the key trusted for publisher
# PREFIX-publisher); Capsule PACKAGE-1.0.0 (an image reference of no registry:
# kwok runs its pods), signed with kubectl-soma and approved by a reviewer
# of group PREFIX:reviewers (ClusterRole somastack-PREFIX-reviewer). Needs an
# operator running; returns once the Capsule is Ready.
publish_capsule() {
  local prefix=$1 package=$2 work=$3
  local key="$work/$prefix-publisher.key" capsule="$package-1.0.0" pub digest image
  digest=$(printf '%s' "$package" | sha256sum | cut -c1-64)
  image="registry.$prefix.example/agents/$package@sha256:$digest"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>/dev/null
  pub=$(openssl pkey -in "$key" -pubout)
  log "publishing the Capsule $capsule: signed, trusted by a PolicyBundle, approved by a reviewer"
  cat <<EOF_ | kubectl apply --server-side --field-manager="$prefix" -f - >/dev/null
apiVersion: somastack.io/v1alpha1
kind: PolicyBundle
metadata: { name: $prefix-trust }
spec:
  namespaceSelector: { matchLabels: { somastack.io/$prefix: "true" } }
  enforcement: Enforce
  trust:
    requireSignature: true
    requireApproval: true
    publishers:
      - name: $prefix-publisher
        keys:
          - id: $prefix-2026
            publicKey: |
              ${pub//$'\n'/$'\n'              }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: somastack-$prefix-reviewer }
rules:
  - { apiGroups: [somastack.io], resources: [capsules], verbs: [get, list, watch, patch, approve] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: somastack-$prefix-reviewer }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: somastack-$prefix-reviewer }
subjects: [{ apiGroup: rbac.authorization.k8s.io, kind: Group, name: "$prefix:reviewers" }]
EOF_
  cat >"$work/capsule.yaml" <<EOF_
apiVersion: somastack.io/v1alpha1
kind: Capsule
metadata: { name: $capsule }
spec:
  package: $package
  version: 1.0.0
  publisher: $prefix-publisher
  image: $image
  dataClassification: public
  ports:
    - { name: http, port: 8080 }
  resources:
    requests: { cpu: 10m, memory: 16Mi }
    limits: { cpu: 100m, memory: 64Mi }
  healthPath: /healthz
  readyPath: /readyz
EOF_
  cargo build --locked --quiet -p kubectl-soma
  "$TARGET_DIR/debug/kubectl-soma" capsule sign -f "$work/capsule.yaml" --key "$key" --key-id "$prefix-2026" \
    >"$work/capsule.signed.yaml"
  kubectl delete capsule "$capsule" --ignore-not-found --wait=true >/dev/null
  kubectl apply --server-side --field-manager="$prefix" -f "$work/capsule.signed.yaml" >/dev/null
  kubectl --as "$prefix-reviewer@$prefix.example" --as-group "$prefix:reviewers" annotate capsule "$capsule" \
    review.somastack.io/decision=approve review.somastack.io/reason="hack/$prefix" --overwrite >/dev/null
  kubectl wait --for=condition=Ready "capsule/$capsule" --timeout=60s >/dev/null
}
