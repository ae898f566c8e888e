//! Who may read `/metrics` with `--metrics-secure`: the caller's bearer
//! token is authenticated by the API server (a TokenReview) and the user it
//! names is authorized to `get` the non-resource URL of the request (a
//! SubjectAccessReview), as controller-runtime's
//! `filters.WithAuthenticationAndAuthorization` does. Answers: 401 without a
//! token or with one the API server does not accept, 403 when the user may
//! not, 500 when the API server could not be asked.
//!
//! Decisions are cached per (token, verb, path) for [`ALLOW_TTL`] (allowed)
//! or [`DENY_TTL`] (refused), at most [`CACHE_ENTRIES`] of them, so that a
//! scrape every few seconds costs the API server two reviews a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long an allowed caller is let through without asking again.
pub const ALLOW_TTL: Duration = Duration::from_secs(60);
/// How long a refusal (bad token, or not allowed) stands.
pub const DENY_TTL: Duration = Duration::from_secs(10);
/// Most decisions kept at once.
pub const CACHE_ENTRIES: usize = 1024;

/// The API server's answer for one token and request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The token is valid and its user may (the user's name).
    Allowed(String),
    /// The API server does not accept the token.
    Unauthenticated,
    /// The token is valid, but its user (named) may not.
    Forbidden(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    token: String,
    verb: String,
    path: String,
}

/// Decisions with their expiry, bounded in number.
#[derive(Default)]
struct Cache {
    entries: HashMap<Key, (Decision, Instant)>,
}

impl Cache {
    fn get(&self, key: &Key, now: Instant) -> Option<Decision> {
        self.entries
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(d, _)| d.clone())
    }

    /// Keeps `decision` until `now` + its TTL; when full, drops the expired
    /// entries, then the one that expires first.
    fn put(&mut self, key: Key, decision: Decision, now: Instant) {
        let ttl = match decision {
            Decision::Allowed(_) => ALLOW_TTL,
            _ => DENY_TTL,
        };
        if self.entries.len() >= CACHE_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, until)| *until > now);
            if self.entries.len() >= CACHE_ENTRIES
                && let Some(first) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&first);
            }
        }
        self.entries.insert(key, (decision, now + ttl));
    }
}

/// Asks the API server, through the operator's own client.
pub struct Guard {
    client: Client,
    cache: Mutex<Cache>,
}

impl Guard {
    pub fn new(client: Client) -> Arc<Guard> {
        Arc::new(Guard {
            client,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// May the holder of `token` do `verb` on `path`? An error only when the
    /// API server could not answer (never cached).
    pub async fn decide(&self, token: &str, verb: &str, path: &str) -> Result<Decision, kube::Error> {
        let key = Key {
            token: token.to_string(),
            verb: verb.to_string(),
            path: path.to_string(),
        };
        if let Some(d) = self.lock().get(&key, Instant::now()) {
            return Ok(d);
        }
        let decision = self.ask(token, verb, path).await?;
        self.lock().put(key, decision.clone(), Instant::now());
        Ok(decision)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn ask(&self, token: &str, verb: &str, path: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Ok(Decision::Unauthenticated),
        };
        let name = user.username.clone().unwrap_or_default();
        let spec = SubjectAccessReviewSpec {
            user: user.username,
            groups: user.groups,
            uid: user.uid,
            extra: user.extra,
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_string()),
                verb: Some(verb.to_string()),
            }),
            ..SubjectAccessReviewSpec::default()
        };
        let allowed = somastack_controllers::access::allowed(&self.client, spec).await?;
        Ok(if allowed {
            Decision::Allowed(name)
        } else {
            Decision::Forbidden(name)
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "Unauthorized: send a Kubernetes bearer token (Authorization: Bearer <token>)\n",
    )
        .into_response()
}

/// The axum middleware: lets a request through only when [`Guard::decide`] allows it.
pub async fn authorize(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let Some(token) = bearer(request.headers()) else {
        return unauthorized();
    };
    let verb = request.method().as_str().to_lowercase();
    let path = request.uri().path().to_string();
    match guard.decide(token, &verb, &path).await {
        Ok(Decision::Allowed(_)) => next.run(request).await,
        Ok(Decision::Unauthenticated) => unauthorized(),
        Ok(Decision::Forbidden(user)) => (
            StatusCode::FORBIDDEN,
            format!("Forbidden: user {user:?} may not {verb} {path}\n"),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "could not review a /metrics caller with the API server");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not check the token with the API server\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(token: &str) -> Key {
        Key {
            token: token.into(),
            verb: "get".into(),
            path: "/metrics".into(),
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(&headers("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn allowed_lasts_longer_than_refused() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.put(key("good"), Decision::Allowed("sa".into()), t0);
        cache.put(key("bad"), Decision::Unauthenticated, t0);
        cache.put(key("no"), Decision::Forbidden("sb".into()), t0);
        let later = t0 + DENY_TTL + Duration::from_secs(1);
        assert_eq!(
            cache.get(&key("good"), later),
            Some(Decision::Allowed("sa".into()))
        );
        assert_eq!(cache.get(&key("bad"), later), None);
        assert_eq!(cache.get(&key("no"), later), None);
        assert_eq!(cache.get(&key("good"), t0 + ALLOW_TTL), None);
        // Another verb or path is another question.
        let other = Key {
            path: "/debug".into(),
            ..key("good")
        };
        assert_eq!(cache.get(&other, t0), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        for i in 0..CACHE_ENTRIES {
            cache.put(key(&format!("t{i}")), Decision::Allowed("sa".into()), t0);
        }
        // Full: the one expiring first makes room.
        cache.put(
            key("late"),
            Decision::Allowed("sa".into()),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(cache.entries.len(), CACHE_ENTRIES);
        assert!(cache.get(&key("late"), t0 + Duration::from_secs(1)).is_some());
        // Expired ones all go at once.
        let much_later = t0 + ALLOW_TTL + Duration::from_secs(5);
        cache.put(key("fresh"), Decision::Unauthenticated, much_later);
        assert_eq!(cache.entries.len(), 1);
    }
}
