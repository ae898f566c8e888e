//! What the operator reads back from the Jobs it runs (project agents,
//! reviewers and moderators, upgrade evaluations): the result an agent
//! writes as its termination message.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use crate::Result;

/// The termination message of the Job's (last finished) pod, if it left
/// one that is not blank.
pub async fn termination_message(
    client: &kube::Client,
    namespace: &str,
    job: &str,
) -> Result<Option<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?;
    Ok(last_message(&list.items))
}

/// Pure: of `pods`' finished containers, the message of the one that
/// finished last, if not blank.
pub fn last_message(pods: &[Pod]) -> Option<String> {
    let mut finished: Vec<(jiff::Timestamp, String)> = pods
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            let at = t.finished_at.as_ref().map(|f| f.0).unwrap_or_default();
            Some((at, t.message.clone().unwrap_or_default()))
        })
        .collect();
    finished.sort();
    finished.pop().map(|(_, m)| m).filter(|m| !m.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(finished: Option<(i64, &str)>) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    state: Some(ContainerState {
                        terminated: finished.map(|(at, m)| ContainerStateTerminated {
                            finished_at: Some(Time(jiff::Timestamp::from_second(at).unwrap())),
                            message: Some(m.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_last_finished_container_speaks() {
        let pods = [pod(Some((200, "second"))), pod(None), pod(Some((100, "first")))];
        assert_eq!(last_message(&pods).as_deref(), Some("second"));
        assert_eq!(last_message(&[pod(Some((1, "  \n")))]), None);
        assert_eq!(last_message(&[pod(None)]), None);
    }
}
