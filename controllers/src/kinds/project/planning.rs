//! Planner calls made beside the reconciles, never inside them.
//!
//! A planner may take minutes to answer (or never answer within its
//! timeout); a reconcile that waited for it would hold one of the project
//! controller's few slots, and eight hanging planners would stop every
//! other tenant's projects. So a reconcile only asks [`Calls::poll`]: the
//! first ask starts the call on a task of its own and says `InFlight`; when
//! the call ends, the project is reconciled again (the stream
//! [`Calls::triggers`] feeds the controller) and the next ask returns the
//! answer. A failed call is remembered until its retry time, so events in
//! between (a Capsule published, a bundle changed) never call the planner
//! again. At most [`PER_NAMESPACE`] calls run at once per namespace; more
//! wait their turn without holding anything else.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use somastack_crds::KamachiqProject;
use somastack_crds::kamachiq::Task;
use somastack_crds::planner::PlanRequest;
use tokio::sync::Semaphore;

use crate::planner::{PlanFailure, PlannerClient};

/// Planner calls running at once for the projects of one namespace.
pub const PER_NAMESPACE: usize = 4;
/// Entries of projects that no longer exist are dropped this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What a reconcile learns about its project's planner call.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    /// A call is running (or waiting for a free slot) since this long.
    InFlight(Duration),
    /// The planner answered with a plan (kept until [`Calls::forget`]).
    Planned(Vec<Task>),
    /// The last call failed; the next one starts once `retry_in` has passed.
    Failed {
        failure: PlanFailure,
        retry_in: Duration,
    },
}

/// A call, identified by what it was made from.
struct Entry {
    /// What the call was made from (goal, planner, maxTasks, URL): another
    /// value means another call.
    input: String,
    started: Instant,
    /// Set when the call ended: its result and when it ended.
    result: Option<(Result<Vec<Task>, PlanFailure>, Instant)>,
}

/// One planner call, as a reconcile asks for it.
pub struct Call<'a> {
    /// The project to reconcile again when the call ends.
    pub project: ObjectRef<KamachiqProject>,
    /// The project's uid, which keys its call.
    pub uid: &'a str,
    /// What the call is made from: another value means another call.
    pub input: &'a str,
    pub url: &'a str,
    pub request: &'a PlanRequest,
    pub timeout: Duration,
}

/// Planner calls of every project, keyed by project uid.
pub struct Calls {
    client: PlannerClient,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
    trigger: mpsc::UnboundedSender<ObjectRef<KamachiqProject>>,
    triggers: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<KamachiqProject>>>>,
    last_sweep: Mutex<Instant>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("Calls").field("entries", &n).finish()
    }
}

impl Default for Calls {
    fn default() -> Self {
        Self::new(PlannerClient::new())
    }
}

/// How long after a failure the planner is called again.
pub fn retry_after(failure: &PlanFailure) -> Duration {
    match failure {
        PlanFailure::Unavailable(_) => Duration::from_secs(10),
        _ => Duration::from_secs(60),
    }
}

impl Calls {
    pub fn new(client: PlannerClient) -> Self {
        let (trigger, rx) = mpsc::unbounded();
        Self {
            client,
            entries: Arc::default(),
            namespaces: Mutex::default(),
            trigger,
            triggers: Mutex::new(Some(rx)),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// The projects to reconcile because their call ended (taken once, by
    /// the controller's wiring).
    pub fn triggers(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<KamachiqProject>>> {
        self.triggers.lock().ok().and_then(|mut t| t.take())
    }

    /// The state of the project's `call`, starting it when there is none for
    /// its input or the last one failed longer ago than its retry time.
    /// Never waits for the planner.
    pub fn poll(&self, call: Call<'_>) -> Poll {
        let Ok(mut entries) = self.entries.lock() else {
            return Poll::InFlight(Duration::ZERO);
        };
        if let Some(e) = entries.get(call.uid).filter(|e| e.input == call.input) {
            match &e.result {
                None => return Poll::InFlight(e.started.elapsed()),
                Some((Ok(tasks), _)) => return Poll::Planned(tasks.clone()),
                Some((Err(failure), ended)) => {
                    let wait = retry_after(failure);
                    if ended.elapsed() < wait {
                        return Poll::Failed {
                            failure: failure.clone(),
                            retry_in: wait - ended.elapsed(),
                        };
                    }
                }
            }
        }
        entries.insert(
            call.uid.to_string(),
            Entry {
                input: call.input.to_string(),
                started: Instant::now(),
                result: None,
            },
        );
        drop(entries);
        self.start(call);
        Poll::InFlight(Duration::ZERO)
    }

    fn start(&self, call: Call<'_>) {
        // The project's namespace, as the reconcile read it (never a default).
        let namespace = call.request.project.namespace.clone();
        let slots = match self.namespaces.lock() {
            Ok(mut m) => m
                .entry(namespace)
                .or_insert_with(|| Arc::new(Semaphore::new(PER_NAMESPACE)))
                .clone(),
            Err(_) => Arc::new(Semaphore::new(PER_NAMESPACE)),
        };
        let client = self.client.clone();
        let trigger = self.trigger.clone();
        let Call {
            project,
            uid,
            input,
            url,
            request,
            timeout,
        } = call;
        let (uid, input, url, request) = (
            uid.to_string(),
            input.to_string(),
            url.to_string(),
            request.clone(),
        );
        let entries = self.entries.clone();
        tokio::spawn(async move {
            let result = match slots.acquire_owned().await {
                Ok(_permit) => client.plan(&url, &request, timeout).await,
                Err(_) => Err(PlanFailure::Unavailable("the planner queue was closed".into())),
            };
            if let Ok(mut entries) = entries.lock()
                && let Some(e) = entries.get_mut(&uid).filter(|e| e.input == input)
            {
                e.result = Some((result, Instant::now()));
            }
            let _ = trigger.unbounded_send(project);
        });
    }

    /// Forgets `uid`'s call (its plan is stored, or the project is gone).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(uid);
        }
    }

    /// Drops what belongs to projects that no longer exist (at most once a
    /// minute): `live` holds the uids of the projects that do.
    pub fn sweep(&self, live: impl FnOnce() -> HashSet<String>) {
        let due = self
            .last_sweep
            .lock()
            .map(|mut last| {
                let due = last.elapsed() >= SWEEP_EVERY;
                if due {
                    *last = Instant::now();
                }
                due
            })
            .unwrap_or(false);
        if !due {
            return;
        }
        let live = live();
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|uid, _| live.contains(uid));
        }
        if let Ok(mut namespaces) = self.namespaces.lock() {
            // A semaphore nobody else holds has no call running or waiting.
            namespaces.retain(|_, s| Arc::strong_count(s) > 1);
        }
    }

    /// How many calls are remembered (running or ended), for tests.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use somastack_crds::common::CapsuleRef;
    use somastack_crds::planner::{PLANNER_API_VERSION, ProjectRef};

    use super::*;

    fn request() -> PlanRequest {
        PlanRequest {
            api_version: PLANNER_API_VERSION.into(),
            goal: "g".into(),
            project: ProjectRef {
                namespace: "t1".into(),
                name: "p".into(),
                uid: "uid-1".into(),
            },
            agent: CapsuleRef {
                package: "a".into(),
                version: "1.0.0".into(),
            },
            max_tasks: 10,
        }
    }

    /// A loopback port nothing listens on: calls fail at once.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9)
    }

    #[tokio::test]
    async fn a_call_runs_beside_the_caller_and_its_failure_is_kept_until_the_retry_time() {
        let calls = Calls::default();
        let mut ended = calls.triggers().expect("the trigger stream");
        assert!(calls.triggers().is_none(), "taken once");
        let url = format!("http://127.0.0.1:{}/plan", closed_port());
        let project = ObjectRef::<KamachiqProject>::new("p").within("t1");
        let request = request();
        let call = |input| Call {
            project: project.clone(),
            uid: "uid-1",
            input,
            url: &url,
            request: &request,
            timeout: Duration::from_secs(2),
        };
        let poll = || calls.poll(call("input-a"));
        // The first ask starts the call and returns at once.
        assert!(matches!(poll(), Poll::InFlight(_)));
        assert!(
            matches!(poll(), Poll::InFlight(_)),
            "no second call while one runs"
        );
        // Its end reconciles the project.
        let woken = tokio::time::timeout(Duration::from_secs(30), ended.next()).await;
        assert_eq!(woken.ok().flatten(), Some(project.clone()));
        let Poll::Failed { failure, retry_in } = poll() else {
            panic!("the failure is kept");
        };
        assert_eq!(failure.reason(), "PlannerUnavailable");
        assert!(retry_in <= retry_after(&failure) && retry_in > Duration::from_secs(5));
        // Another input is another call; forgetting drops it.
        assert!(matches!(calls.poll(call("input-b")), Poll::InFlight(_)));
        calls.forget("uid-1");
        assert!(calls.is_empty());
    }
}
