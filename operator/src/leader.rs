//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! With several replicas, only the holder of the Lease runs the controllers.
//! The holder renews every [`Config::renew_every`]; a follower takes over a
//! Lease not renewed for `leaseDurationSeconds`. A leader that fails to renew
//! before its own lease would expire stops its controllers at once and
//! campaigns again as a follower, in the same process (controller-runtime
//! exits instead and lets the Deployment restart it: that would also take
//! down this replica's webhook and caches, which every replica serves, for
//! as long as the API server is away). On SIGTERM the leader releases the
//! Lease so a follower takes over without waiting for it to expire.

use somastack_controllers::apply::ApiResultExt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and a follower retries.
    pub renew_every: Duration,
}

/// What to do with the Lease as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it but let it expire (or released it): take it.
    TakeOver,
    /// Someone else holds a valid lease.
    Follow { holder: String },
}

/// Pure: the step for `lease` as seen by `me` at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease else { return Step::Create };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(holder) => {
            let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(t) if t + duration > now => Step::Follow {
                    holder: holder.to_string(),
                },
                _ => Step::TakeOver,
            }
        }
    }
}

fn held_by(cfg: &Config, previous: Option<&LeaseSpec>, now: Timestamp, acquired: bool) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: if acquired {
            Some(MicroTime(now))
        } else {
            previous
                .and_then(|p| p.acquire_time.clone())
                .or(Some(MicroTime(now)))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if acquired && previous.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..Default::default()
    }
}

/// One round: reads the Lease and acts. Returns whether we hold it now.
/// Conflicts (another replica wrote first) count as not holding it.
pub async fn try_hold(api: &Api<Lease>, cfg: &Config) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let result = match decide(spec, &cfg.identity, now) {
        Step::Follow { .. } => return Ok(false),
        Step::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(held_by(cfg, None, now, true)),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        step @ (Step::Renew | Step::TakeOver) => {
            let Some(mut lease) = current.clone() else {
                return Ok(false);
            };
            lease.spec = Some(held_by(cfg, spec, now, step == Step::TakeOver));
            // `replace` carries the resourceVersion we read: a concurrent
            // writer makes it fail with 409 instead of both winning.
            api.replace(&cfg.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    // A conflict: another replica wrote the Lease first.
    Ok(result.ok_if_conflict()?.is_some())
}

/// Waits until this replica holds the Lease.
pub async fn acquire(api: &Api<Lease>, cfg: &Config) {
    let mut announced = false;
    loop {
        match try_hold(api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return;
            }
            Ok(false) if !announced => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "another replica leads; waiting");
                announced = true;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "leader election: cannot read or write the Lease"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the Lease until a renewal fails past the point where the lease
/// could have expired; then resolves (leadership lost).
pub async fn keep(api: &Api<Lease>, cfg: &Config) {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        // Bounded: with etcd away the API server holds a write for up to a
        // minute, and a leader waiting on it would keep reconciling past its
        // own lease, when another replica may already have taken over.
        match tokio::time::timeout(cfg.renew_every, try_hold(api, cfg)).await {
            Ok(Ok(true)) => last_renewal = tokio::time::Instant::now(),
            Ok(Ok(false)) => {
                tracing::error!(lease = %cfg.name, "another replica took the Lease");
                return;
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "could not renew the Lease"),
            Err(_) => tracing::warn!(
                lease = %cfg.name,
                "could not renew the Lease: no answer within {:?}",
                cfg.renew_every
            ),
        }
        // Stop before a follower may legitimately take over.
        if last_renewal.elapsed() + cfg.renew_every >= cfg.lease_duration {
            tracing::error!(lease = %cfg.name, "could not renew the Lease in time");
            return;
        }
    }
}

/// Gives the Lease up (on graceful shutdown) so a follower need not wait.
pub async fn release(api: &Api<Lease>, cfg: &Config) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %cfg.name, "released the Lease"),
        Err(err) => tracing::warn!(error = %err, "could not release the Lease; it will expire"),
    }
}

/// A client's Lease API in `cfg.namespace`.
pub fn api(client: Client, cfg: &Config) -> Api<Lease> {
    Api::namespaced(client, &cfg.namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn spec(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn steps() {
        assert_eq!(decide(None, "a", at(100)), Step::Create);
        assert_eq!(decide(Some(&spec(Some("a"), 90, 10)), "a", at(100)), Step::Renew);
        assert_eq!(
            decide(Some(&spec(Some("b"), 95, 10)), "a", at(100)),
            Step::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 89, 10)), "a", at(100)),
            Step::TakeOver,
            "expired"
        );
        assert_eq!(
            decide(Some(&spec(None, 99, 10)), "a", at(100)),
            Step::TakeOver,
            "released"
        );
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let cfg = Config {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        };
        let previous = spec(Some("b"), 10, 10);
        let taken = held_by(&cfg, Some(&previous), at(100), true);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        let renewed = held_by(&cfg, Some(&taken), at(102), false);
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
    }
}
