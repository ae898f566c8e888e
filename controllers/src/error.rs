//! The one error type of the controllers crate.

/// An error met while reconciling. [`Error::category`] is stable: metrics,
/// Events and logs key on it, so renaming a variant does not change it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be turned into JSON (a bug, not bad input).
    #[error("could not serialize an object: {0}")]
    Serialization(#[from] serde_json::Error),
    /// An object lacks something the API server always sets (name, uid, ...).
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// A watch cache is not (or no longer) filled: still listing, or shutting down.
    #[error("a watch cache is not ready")]
    CacheStopped,
    /// Deleting an object must wait (e.g. a Capsule still installed).
    #[error("{0}")]
    DeletionBlocked(String),
    /// A rollback named a revision the history does not hold.
    #[error("revision {0} is not in the Installation's history (pruned, or never existed)")]
    RevisionNotFound(i64),
    /// A finalizer operation failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The API server refused an object the operator made for a user's
    /// object (invalid, too large, forbidden by quota or another admission
    /// controller): retrying the same write cannot help, so it is reported
    /// in the owner's status and as an Event.
    #[error("the API server refused {kind} {name}: {message}")]
    ChildRefused {
        kind: String,
        name: String,
        message: String,
    },
    /// Writing an object the operator made for a user's object failed in a
    /// way that may pass (the API server unreachable or overloaded, a 5xx
    /// such as a full Service IP range): retried with backoff, and shown.
    #[error("could not write {kind} {name}: {}", short(.source))]
    ChildFailed {
        kind: String,
        name: String,
        source: kube::Error,
    },
}

/// The API server's own message for an API error, else the error.
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

impl Error {
    /// `err`, met writing `kind` `name`: [`Error::ChildRefused`] when the API
    /// server refuses it for good (400, 403, 413, 422), else
    /// [`Error::ChildFailed`].
    pub fn refusing(err: kube::Error, kind: &str, name: &str) -> Error {
        match err {
            kube::Error::Api(s) if matches!(s.code, 400 | 403 | 413 | 422) => Error::ChildRefused {
                kind: kind.to_string(),
                name: name.to_string(),
                message: s.message,
            },
            source => Error::ChildFailed {
                kind: kind.to_string(),
                name: name.to_string(),
                source,
            },
        }
    }
}

impl Error {
    /// Stable, low-cardinality name of the error's kind.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_rejected",
            Error::Kube(_) => "api_unreachable",
            Error::Serialization(_) => "serialization",
            Error::MissingField(_) => "missing_field",
            Error::CacheStopped => "cache_stopped",
            Error::DeletionBlocked(_) => "deletion_blocked",
            Error::Finalizer(_) => "finalizer",
            Error::RevisionNotFound(_) => "revision_not_found",
            Error::ChildRefused { .. } => "child_refused",
            Error::ChildFailed {
                source: kube::Error::Api(_),
                ..
            } => "api_rejected",
            Error::ChildFailed { .. } => "api_unreachable",
        }
    }
}

impl Error {
    /// Whether retrying the same input cannot help: the object (or what it
    /// names) must change first. Everything else is transient and retried
    /// with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Serialization(_) | Error::MissingField(_) | Error::RevisionNotFound(_) => true,
            Error::ChildRefused { .. } => true,
            Error::Kube(kube::Error::Api(s)) => matches!(s.code, 400 | 413 | 422),
            Error::Kube(_)
            | Error::CacheStopped
            | Error::DeletionBlocked(_)
            | Error::Finalizer(_)
            | Error::ChildFailed { .. } => false,
        }
    }
}

impl Error {
    /// Whether a failed reconcile should say so in a Warning Event on the
    /// object: not for a cold cache (not the object's business), nor for a
    /// deletion that waits (the Capsule shows it as its `Ready` condition
    /// and a `DeletionBlocked` Event when it changes; it is retried on
    /// every change of its Installations, and an Event each time would be
    /// an API write each time).
    pub fn worth_an_event(&self) -> bool {
        !matches!(self, Error::CacheStopped | Error::DeletionBlocked(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_stable_names() {
        assert_eq!(Error::MissingField("metadata.name").category(), "missing_field");
        let bad_json = serde_json::from_str::<serde_json::Value>("{").err();
        assert_eq!(bad_json.map(|e| Error::from(e).category()), Some("serialization"));
    }

    #[test]
    fn a_failed_reconcile_is_an_event_unless_the_object_shows_it_already() {
        assert!(Error::MissingField("metadata.uid").worth_an_event());
        assert!(Error::RevisionNotFound(3).worth_an_event());
        assert!(!Error::CacheStopped.worth_an_event());
        assert!(!Error::DeletionBlocked("still used".into()).worth_an_event());
    }
}
