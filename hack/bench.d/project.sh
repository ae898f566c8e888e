# shellcheck shell=bash disable=SC2154,SC2034 # WORK, KUBEPY, timeout, ... are hack/bench's; it reads project_table, project_doc
# The KAMACHIQ part of hack/bench (--parts project): sourced by it, functions
# only; they use hack/bench's helpers (start_operator, now, secs, phase, ...).
#
# One KamachiqProject of --project-tasks N tasks against the same Jobs
# created directly, on the same cluster, one after the other:
#  project  A fresh operator; namespace bench-project, governed by the bench's
#           PolicyBundles (the signed, approved Capsule bench-agent 1.0.0 is
#           the agent) and by PolicyBundle bench-planner, which allows the
#           planner below (spec.tasks holds at most 128 tasks; a plan up to
#           budget.maxTasks, at most 5,000). The planner is the bench's own
#           (kube.py planner, the contract of docs/planner.md, on loopback):
#           the DAG is 10 layers of ceil(N/10) tasks (at most 100 wide, then
#           more layers), task i of layer k depending on tasks i..i+3 (modulo
#           the width) of layer k-1: fan-in and fan-out 4, every task but the
#           first layer's waits for four others. parallelism 100 (the CRD's
#           maximum), budget.maxTasks N, region eu-west-1, no review, no
#           approval. Each task's input says kwok:run=1s: its pod is kwok's
#           (hack/kwok-stages.yaml), Running for 1 s then Succeeded with a
#           termination message; no agent runs, so what is measured is
#           orchestration: the operator, the Job controller, the scheduler
#           and kwok. Timed from the start of `kubectl apply` until the
#           watch shows condition Succeeded (kube.py until); the planner call
#           is inside that time. Then: the operator's peak RSS (VmHWM) and
#           CPU seconds over that window, its API requests (audit log).
#  direct   The task Jobs the operator made (the accepted attempt of each
#           task; with its agents' ServiceAccount and NetworkPolicies),
#           dumped and stripped of what the API server, the Job controller
#           and the operator's verdicts set (kube.py project-children), are
#           created in namespace bench-direct by a driver (kube.py jobs-dag)
#           that plays the DAG as the operator does: a Job is POSTed once
#           every Job its task depends on is Complete (one watch of the
#           namespace's Jobs), at most 100 unfinished at a time, 4 POSTs at
#           a time. The namespace, ServiceAccount and NetworkPolicies are
#           applied before the clock starts. Timed from the first POST until
#           the watch shows the last Job Complete. No operator runs. This is
#           the floor of a DAG of Jobs: what the operator adds is planning,
#           reading each pod's termination message, the verdict on each Job,
#           the status and the results ConfigMap.
# Per task: (project - direct) / N. From the Jobs themselves (kube.py
# jobs-stats, whole-second timestamps): first creation to last completion,
# the dispatch gap (a Job's creation after the last of its dependencies'
# Jobs completed) and a Job's own creation-to-completion time, both sides.

PROJECT_NS=bench-project
PROJECT_DIRECT_NS=bench-direct
PROJECT_NAME=bench
PROJECT_PARALLELISM=100

# Sets P[...] (the results) and project_table / project_doc.
declare -A P
planner_pid=""
project_part() {
  local n=$1 width=$(( ($1 + 9) / 10 )) port t0 t1 cpu0
  ((width <= 100)) || width=100
  local layers=$(( (n + width - 1) / width ))
  P[width]=$width P[layers]=$layers
  log "== KAMACHIQ: a $n-task project ($layers layers of $width, fan-in 4), then the same Jobs directly"

  python3 "$KUBEPY" planner --port-file "$WORK/planner.port" --tasks "$n" --width "$width" --fan-in 4 \
    --input-suffix "kwok:run=1s" >"$WORK/planner.log" 2>&1 &
  planner_pid=$!
  for _ in $(seq 1 100); do [[ -f "$WORK/planner.port" ]] && break; sleep 0.1; done
  port=$(cat "$WORK/planner.port")
  start_operator "$LOCAL_DIR/operator-bench-project.log"
  # Left by an interrupted run.
  kubectl delete namespace "$PROJECT_NS" "$PROJECT_DIRECT_NS" --ignore-not-found --wait=true --timeout=600s >/dev/null
  cat <<EOF | kubectl apply --server-side --field-manager=bench -f - >/dev/null
apiVersion: v1
kind: Namespace
metadata: { name: $PROJECT_NS, labels: { somastack.io/bench: "true" } }
---
apiVersion: somastack.io/v1alpha1
kind: PolicyBundle
metadata: { name: bench-planner }
spec:
  namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: $PROJECT_NS } }
  projects: { allowedPlannerUrls: ["http://127.0.0.1:$port/"] }
EOF
  kubectl wait --for=condition=Ready policybundle/bench-planner --timeout=60s >/dev/null
  cat >"$WORK/project.yaml" <<EOF
apiVersion: somastack.io/v1alpha1
kind: KamachiqProject
metadata: { name: $PROJECT_NAME, namespace: $PROJECT_NS }
spec:
  goal: "hack/bench: $n tasks, $layers layers of $width, each task after 4 of the layer before"
  region: eu-west-1
  parallelism: $PROJECT_PARALLELISM
  budget: { maxTasks: $n }
  planner:
    url: http://127.0.0.1:$port/plan
    agent: { package: $PACKAGE, version: 1.0.0 }
    timeoutSeconds: 60
EOF
  local path="/apis/somastack.io/v1alpha1/namespaces/$PROJECT_NS/kamachiqprojects"
  rm -f "$WORK/project-done.started"
  python3 "$KUBEPY" until "$WORK/admin.json" --path "$path" --name "$PROJECT_NAME" --timeout "$timeout" \
    --expr 'cond(o, "Succeeded") in ("True", "False")' --out "$WORK/project-done.json" \
    --started "$WORK/project-done.started" >"$WORK/project-done" &
  watcher=$!
  for _ in $(seq 1 600); do [[ -f "$WORK/project-done.started" ]] && break; sleep 0.1; done
  cpu0=$(cpu)
  op_metrics >"$WORK/op-metrics-project-0.txt"
  t0=$(now)
  kubectl apply --server-side --field-manager=bench -f "$WORK/project.yaml" >/dev/null
  wait "$watcher" || die "the project did not finish within ${timeout}s (--timeout)"
  watcher=""
  t1=$(cat "$WORK/project-done")
  [[ $(jq_ 'd["status"]["phase"]' <"$WORK/project-done.json") == Succeeded ]] ||
    die "the project ended $(jq_ 'd["status"]["phase"] + ": " + str(d["status"]["conditions"])' <"$WORK/project-done.json")"
  P[op]=$(secs "$t0" "$t1")
  P[hwm]=$(mib VmHWM)
  P[cpu]=$(secs "$cpu0" "$(cpu)")
  op_metrics >"$WORK/op-metrics-project-1.txt"
  P[rec]=$(reconciles "$WORK/op-metrics-project-1.txt" KamachiqProject)
  phase "project N=$n operator: to Succeeded" "${P[op]}"
  python3 "$KUBEPY" audit --logs "$AUDIT_DIR" --from "$t0" --to "$t1" >"$WORK/audit-project.json"
  kubectl get jobs,serviceaccounts,networkpolicies -n "$PROJECT_NS" -l "kamachiq.somastack.io/project=$PROJECT_NAME" \
    -o json >"$WORK/project-children.json"
  kubectl get configmap "$PROJECT_NAME-plan" -n "$PROJECT_NS" -o json >"$WORK/project-plan.json"
  python3 "$KUBEPY" jobs-stats --plan "$WORK/project-plan.json" <"$WORK/project-children.json" >"$WORK/project-stats-op.json"
  P[jobs]=$(jq_ 'd["jobs"]' <"$WORK/project-stats-op.json")
  P[status_bytes]=$(python3 -c 'import json,sys; print(len(json.dumps(json.load(sys.stdin)["status"])))' <"$WORK/project-done.json")
  project_delete "$PROJECT_NS"
  kubectl delete policybundle bench-planner --ignore-not-found >/dev/null
  stop_operator
  project_cleanup

  log "== KAMACHIQ: the same $n Jobs, created in DAG order by a driver, no operator"
  P[direct_jobs]=$(python3 "$KUBEPY" project-children --to "$PROJECT_DIRECT_NS" --setup "$WORK/direct-setup.json" \
    --jobs "$WORK/direct-jobs.json" <"$WORK/project-children.json")
  kubectl apply --server-side --field-manager=bench -f "$WORK/direct-setup.json" >/dev/null
  python3 "$KUBEPY" jobs-dag "$WORK/admin.json" --jobs "$WORK/direct-jobs.json" --plan "$WORK/project-plan.json" \
    --namespace "$PROJECT_DIRECT_NS" --parallelism "$PROJECT_PARALLELISM" --timeout "$timeout" >"$WORK/direct.json" ||
    die "the direct Jobs did not all complete"
  P[direct]=$(jq_ '"%.1f" % d["seconds"]' <"$WORK/direct.json")
  phase "project N=$n direct: to all Complete" "${P[direct]}"
  kubectl get jobs -n "$PROJECT_DIRECT_NS" -o json |
    python3 "$KUBEPY" jobs-stats --plan "$WORK/project-plan.json" >"$WORK/project-stats-direct.json"
  project_delete "$PROJECT_DIRECT_NS"
  project_rows "$n"
}

# Stops the planner (hack/bench's EXIT trap calls it too).
project_cleanup() {
  [[ -n "$planner_pid" ]] || return 0
  kill "$planner_pid" 2>/dev/null || true
  wait "$planner_pid" 2>/dev/null || true
  planner_pid=""
}

project_delete() {
  local t0; t0=$(now)
  kubectl delete namespace "$1" --ignore-not-found --wait=true --timeout=1800s >/dev/null
  phase "  delete $1" "$(secs "$t0" "$(now)")"
}

# The rows of the part's table, and its section of the doc.
project_rows() {
  local n=$1 o="$WORK/project-stats-op.json" d="$WORK/project-stats-direct.json" a="$WORK/audit-project.json"
  # FORMAT KEY: the key of both jobs-stats, "operator / direct".
  pair() {
    python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2])); k=sys.argv[4]
f=lambda v: "-" if v is None else sys.argv[3] % v
print(f(o[k]) + " / " + f(d[k]))' "$o" "$d" "$1" "$2"
  }
  P[ratio]=$(ratio "${P[op]}" "${P[direct]}")
  P[per_task]=$(awk -v a="${P[op]}" -v b="${P[direct]}" -v n="$n" 'BEGIN { printf "%.0f", (a - b) * 1000 / n }')
  P[span]=$(pair %.0f span)
  P[gap]="$(pair %.2f gap_mean) (p50 $(pair %.0f gap_p50), max $(pair %.0f gap_max))"
  P[run]="$(pair %.2f run_mean) (p50 $(pair %.0f run_p50))"
  P[req]="$(per "$(jq_ 'd["total"]' <"$a")" "$n") ($(per "$(jq_ 'd["reads"]' <"$a")" "$n") reads, $(per "$(jq_ 'd["writes"]' <"$a")" "$n") writes)"
  P[rec_per]="$(per "${P[rec]}" "$n" %.2f) (${P[rec]} in all)"
  P[by]=$(jq_ '", ".join("%s %d" % kv for kv in d["by"].items())' <"$a")
  project_table=$(
    echo "| KAMACHIQ | N = $n tasks |"
    echo "|---|---|"
    echo "| operator: apply to project Succeeded (s) | ${P[op]} |"
    echo "| direct: the same Jobs created in DAG order by a driver, to all Complete (s) | ${P[direct]} |"
    echo "| **operator / direct** | ${P[ratio]} |"
    echo "| **operator overhead per task, (operator − direct) / N (ms)** | ${P[per_task]} |"
    echo "| first Job created to last Job complete, operator / direct (s) | ${P[span]} |"
    echo "| dispatch gap, a Job created after its dependencies completed, mean operator / direct (s) | ${P[gap]} |"
    echo "| a Job created to complete, mean operator / direct (s; kwok runs each pod 1 s) | ${P[run]} |"
    echo "| API requests per task, apply to Succeeded (audit log) | ${P[req]} |"
    echo "| project reconciles per task (operator metrics) | ${P[rec_per]} |"
    echo "| operator peak RSS (MiB) / CPU s, apply to Succeeded | ${P[hwm]} / ${P[cpu]} |"
    echo "| project status at the end (bytes, JSON) | ${P[status_bytes]} |"
    echo
    echo "The operator's API requests, apply to Succeeded, by verb and resource: ${P[by]}."
  )
  project_doc=$(
    cat <<EOF
## KAMACHIQ: a $n-task project against the same Jobs created directly

One KamachiqProject of $n tasks planned by the bench's planner (the
contract of docs/planner.md, on loopback; \`spec.tasks\` holds at most 128): a
DAG of ${P[layers]} layers of ${P[width]} tasks, each task after 4 tasks of the
layer before (fan-in and fan-out 4), \`parallelism: $PROJECT_PARALLELISM\` (the
CRD's maximum), \`budget.maxTasks: $n\`, region eu-west-1, the same signed
and approved Capsule as agent, no review or approval. **The pods are kwok's**
(hack/kwok-stages.yaml): each task's pod runs 1 s (\`kwok:run=1s\`) and ends
with a termination message; no agent process runs. The figures measure
orchestration (the operator, kube-controller-manager's Job controller, the
scheduler, kwok), not agents. Operator: from the start of \`kubectl apply\`
until the watch shows \`Succeeded=True\` (planning, ${P[jobs]} Jobs, each pod's
termination message read and judged, the results ConfigMap). Direct: the very
Jobs the operator made (dumped, stripped of what the API server, the Job
controller and the operator's verdicts set), created in namespace
$PROJECT_DIRECT_NS by a driver (\`hack/bench.d/kube.py jobs-dag\`) that plays
the same DAG under the same rules: a Job is POSTed once every Job its task
depends on is Complete (one watch), at most $PROJECT_PARALLELISM unfinished at
a time; from the first POST to the last Job Complete, no operator running.
Dispatch gap and Job times come from the Jobs' own timestamps, which
Kubernetes keeps in whole seconds.

$project_table
EOF
  )
}
