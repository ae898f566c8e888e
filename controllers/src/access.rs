//! Acting only within a user's authority: SubjectAccessReviews, and the
//! record of who asked for something.
//!
//! The operator holds rights no tenant has (tainting nodes, reading every
//! namespace). Where it acts on someone's request with those rights, it
//! first asks the API server whether that someone may do what the request
//! implies, through a dedicated RBAC verb (as Kubernetes does with `approve`
//! for certificate requests and `escalate` for roles).

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

/// Who asked: an authenticated user and their groups, as the API server
/// told the admission webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Requester {
    /// The requester recorded in an annotation value, if it is one.
    pub fn parse(annotation: Option<&String>) -> Option<Requester> {
        annotation
            .and_then(|a| serde_json::from_str::<Requester>(a).ok())
            .filter(|r| !r.user.is_empty())
    }

    /// The annotation value recording this requester.
    pub fn annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What is asked: `verb` on `plural.somastack.io` (a `name`d object, in
/// `namespace` for namespaced kinds).
#[derive(Clone, Copy, Debug)]
pub struct Action<'a> {
    pub verb: &'a str,
    pub plural: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// Asks the API server whether `user` (in `groups`, with `uid` and `extra`
/// when known) may do `action` (a SubjectAccessReview).
pub async fn may(
    client: &Client,
    user: &str,
    groups: Option<Vec<String>>,
    uid: Option<String>,
    extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
    action: Action<'_>,
) -> Result<bool, kube::Error> {
    let spec = SubjectAccessReviewSpec {
        user: Some(user.to_string()),
        groups,
        uid,
        extra,
        resource_attributes: Some(ResourceAttributes {
            group: Some(somastack_crds::GROUP.into()),
            resource: Some(action.plural.to_string()),
            verb: Some(action.verb.to_string()),
            name: action.name.map(str::to_string),
            namespace: action.namespace.map(str::to_string),
            ..ResourceAttributes::default()
        }),
        ..SubjectAccessReviewSpec::default()
    };
    allowed(client, spec).await
}

/// Asks the API server the SubjectAccessReview `spec` (of a resource or a
/// non-resource URL): true when it allows and does not deny.
pub async fn allowed(client: &Client, spec: SubjectAccessReviewSpec) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec,
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed && s.denied != Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_round_trips_and_rejects_what_is_not_one() {
        let r = Requester {
            user: "system:serviceaccount:t:alice".into(),
            groups: vec!["system:authenticated".into()],
        };
        assert_eq!(Requester::parse(Some(&r.annotation())), Some(r));
        assert_eq!(Requester::parse(Some(&"root".to_string())), None);
        assert_eq!(Requester::parse(Some(&r#"{"user":""}"#.to_string())), None);
        assert_eq!(Requester::parse(None), None);
    }
}
