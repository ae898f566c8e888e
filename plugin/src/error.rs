//! The plugin's error type: what went wrong, said so a user can act, and the
//! exit code a script can rely on (docs/kubectl-soma.md).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not load the Kubernetes client configuration: {0}")]
    Config(String),
    /// An API request failed; `what` says which.
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
    /// An object the command names does not exist (e.g. `installation t1/app`).
    #[error("{0} not found")]
    NotFound(String),
    /// What the user gave cannot be used (a file that is not a Capsule, a key
    /// of an unsupported kind, a revision not in the history).
    #[error("{0}")]
    Input(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Controller(#[from] somastack_controllers::Error),
    /// A check the command makes failed (e.g. a signature does not verify).
    #[error("{0}")]
    CheckFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// 1: runtime or cluster error, or not found; 3: a check failed. (2,
    /// usage errors, comes from clap before anything runs.)
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::CheckFailed(_) => 3,
            _ => 1,
        }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Context for API calls: `what` is the object as a user names it (e.g.
/// `installation t1/app`); a 404 becomes [`Error::NotFound`].
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, kube::Error> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| match source {
            kube::Error::Api(s) if s.code == 404 => Error::NotFound(what.into()),
            source => Error::Kube {
                what: what.into(),
                source,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Error::CheckFailed("bad".into()).exit_code(), 3);
        assert_eq!(Error::NotFound("x".into()).exit_code(), 1);
        assert_eq!(Error::Input("x".into()).exit_code(), 1);
    }

    #[test]
    fn a_404_is_not_found_with_the_object_named() {
        let status = kube::core::Status::failure("gone", "NotFound").with_code(404);
        let r: std::result::Result<(), kube::Error> = Err(kube::Error::Api(Box::new(status)));
        let e = r.context("installation t1/app").unwrap_err();
        assert_eq!(e.to_string(), "installation t1/app not found");
    }
}
