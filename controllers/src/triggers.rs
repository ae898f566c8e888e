//! What triggers a reconcile, as stream combinators: a change that matters
//! to the controller that reads it ([`changed`]), and bursts of triggers
//! taken together ([`coalesced`]). No API calls; tested with tokio's clock.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;

/// What an unbounded channel receives, as a stream (it ends when every
/// sender is gone): how a task that is not a stream combinator feeds
/// triggers to a controller.
pub fn received<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

/// The objects of `events` (each with whether the watch deleted it) that
/// appear, go, or change in what `read` returns since they were last seen;
/// a write that leaves that part alone passes nothing on.
pub fn changed<K, T, S>(
    events: S,
    read: impl Fn(&K) -> T + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send
where
    K: kube::Resource<DynamicType = ()> + Send + Sync + 'static,
    T: Hash + 'static,
    S: Stream<Item = (Arc<K>, bool)> + Send,
{
    let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
    events.filter_map(move |(obj, deleted)| {
        let key = ObjectRef::from_obj(obj.as_ref());
        let pass = if deleted {
            seen.remove(&key);
            true
        } else {
            let mut h = DefaultHasher::new();
            read(&obj).hash(&mut h);
            seen.insert(key, h.finish()) != Some(h.finish())
        };
        futures::future::ready(pass.then_some(obj))
    })
}

/// `triggers` taken `window` at a time: the first one opens a window, and
/// when it closes each distinct trigger of the window is passed on once. For
/// a controller that summarizes many objects (a count, an audit), so that a
/// burst of N changes costs one reconcile per window instead of N; a trigger
/// waits at most `window`.
pub fn coalesced<T, S>(triggers: S, window: Duration) -> impl Stream<Item = T> + Send
where
    T: Eq + Hash + Clone + Send + 'static,
    S: Stream<Item = T> + Send + 'static,
{
    let triggers = Box::pin(triggers);
    futures::stream::unfold(Some(triggers), move |state| async move {
        let mut triggers = state?;
        let first = triggers.next().await?;
        let mut batch = vec![first.clone()];
        let mut distinct = HashSet::from([first]);
        let close = tokio::time::sleep(window);
        tokio::pin!(close);
        let mut ended = false;
        loop {
            tokio::select! {
                () = &mut close => break,
                next = triggers.next() => match next {
                    Some(t) => {
                        if distinct.insert(t.clone()) {
                            batch.push(t);
                        }
                    }
                    None => {
                        ended = true;
                        break;
                    }
                },
            }
        }
        Some((futures::stream::iter(batch), (!ended).then_some(triggers)))
    })
    .flatten()
}

/// How long a summarizing controller lets triggers gather ([`coalesced`]).
pub const WINDOW: Duration = Duration::from_millis(500);

/// What a user or another controller declares about an object, as opposed
/// to what its controller reports: its spec (through `generation`), labels,
/// annotations, finalizers and whether it is being deleted. A controller
/// triggered only by changes to this is not triggered by its own status
/// writes.
pub fn intent<K: kube::Resource>(obj: &K) -> impl Hash + use<K> {
    let meta = obj.meta();
    (
        meta.generation,
        meta.labels.clone(),
        meta.annotations.clone(),
        meta.finalizers.clone(),
        meta.deletion_timestamp.is_some(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn cm(name: &str, data: &str, label: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([("l".to_string(), label.to_string())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("k".to_string(), data.to_string())])),
            ..Default::default()
        })
    }

    fn names(objs: Vec<Arc<ConfigMap>>) -> Vec<String> {
        objs.iter()
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn only_changes_of_what_is_read_pass_and_deletions_always_do() {
        let events = futures::stream::iter(vec![
            (cm("a", "1", "x"), false), // first seen
            (cm("a", "1", "y"), false), // a label nobody reads
            (cm("b", "1", "x"), false), // first seen
            (cm("a", "2", "y"), false), // data changed
            (cm("a", "2", "y"), true),  // deleted
            (cm("a", "2", "y"), false), // created again
        ]);
        let read = |c: &ConfigMap| c.data.clone();
        let passed: Vec<_> = changed(events, read).collect().await;
        assert_eq!(names(passed), ["a", "b", "a", "a", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_passed_on_once_per_window() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let triggers = received(rx);
        let mut out = Box::pin(coalesced(triggers, Duration::from_secs(1)));
        for t in [1, 2, 1, 1, 2, 3] {
            tx.send(t).ok();
        }
        let start = tokio::time::Instant::now();
        let mut first = vec![];
        for _ in 0..3 {
            first.extend(out.next().await);
        }
        assert_eq!(first, [1, 2, 3]);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "a trigger waits for its window"
        );
        tx.send(1).ok();
        drop(tx);
        assert_eq!(out.next().await, Some(1));
        assert_eq!(out.next().await, None, "ends with its input");
    }
}
