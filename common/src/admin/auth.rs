//! Bearer-token authentication of the admin API: the token file, the constant-time check, and the middleware.
//!
//! Invariants:
//! - The token never appears in a log line, an error message, a response or a `Debug` output.
//! - The comparison takes the same time whatever the presented token is: both sides are hashed with SHA-256 and
//!   the digests compared with `subtle`, so neither the content nor the length of the token leaks by timing.
//! - Every request is authenticated except the paths explicitly made public (`/healthz` by default), so an
//!   unknown route without a token answers 401, not 404.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use portable_atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{ConfigError, MAX_KEY_FILE_LEN};

/// Tokens shorter than this are accepted with a warning: an admin token should be e.g. 32 hex digits.
pub const RECOMMENDED_TOKEN_LEN: usize = 16;

/// The admin API's bearer token. Only its SHA-256 digest is kept in memory after loading.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// A token from its text (for tests and for daemons that get it some other way). Rejects an empty token
    /// and characters a client cannot send in an `Authorization` header (only visible ASCII is allowed).
    pub fn new(token: &str) -> Result<Self, &'static str> {
        if token.is_empty() {
            return Err("token is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("token must be visible ASCII without spaces, as it is sent in an HTTP header");
        }
        Ok(BearerToken { digest: Sha256::digest(token.as_bytes()).into() })
    }

    /// Reads the token from the file at `path` (config field `field`, for errors): the file's text with
    /// surrounding whitespace trimmed. An empty file is an error; a file the group or other users can read is
    /// refused or warned about as `policy` says (`crate::config::secret_file_check`); a short token is accepted
    /// with a warning.
    pub fn from_file(field: &str, path: &Path, policy: crate::config::SecretFiles) -> Result<Self, ConfigError> {
        use std::io::Read as _;
        let key_file = |source| ConfigError::KeyFile { field: field.to_owned(), path: path.to_owned(), source };
        let format = |reason: &str| ConfigError::KeyFormat {
            field: field.to_owned(),
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let file = std::fs::File::open(path).map_err(key_file)?;
        let mut raw = Vec::new();
        (&file).take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut raw).map_err(key_file)?;
        if raw.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(format("longer than 4096 bytes; is this really a token file?"));
        }
        crate::config::secret_file_check(field, path, &file, &raw, "admin token", policy)?;
        let text = std::str::from_utf8(&raw).map_err(|_| format("token is not text"))?.trim();
        let token = Self::new(text).map_err(format)?;
        if text.len() < RECOMMENDED_TOKEN_LEN {
            tracing::warn!(
                field,
                len = text.len(),
                "admin token is shorter than {RECOMMENDED_TOKEN_LEN} characters; use e.g. 32 random hex digits"
            );
        }
        Ok(token)
    }

    /// Whether `presented` is this token, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&digest).into()
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>` (scheme case-insensitive, RFC 9110 §11.1).
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, rest) = value.split_at(space);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return false;
        }
        self.matches(rest.trim_ascii())
    }
}

/// The admin API's token and refusal counter, shared by the middleware and the daemon (which may replace the
/// token on a config reload through [`Auth::set_token`]).
#[derive(Debug)]
pub struct Auth {
    token: RwLock<BearerToken>,
    failures: AtomicU64,
}

impl Auth {
    /// Requires `token`.
    pub fn new(token: BearerToken) -> Self {
        Auth { token: RwLock::new(token), failures: AtomicU64::new(0) }
    }

    /// Replaces the token; requests from then on need the new one.
    pub fn set_token(&self, token: BearerToken) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// Whether `headers` carry the current token.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        self.token.read().unwrap_or_else(|p| p.into_inner()).authorizes(headers)
    }

    /// Requests refused for a missing or wrong token since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// State of the [`require_bearer`] middleware: the [`Auth`] and the paths served without it.
#[derive(Debug, Clone)]
pub struct AuthGate {
    auth: Arc<Auth>,
    public: Arc<HashSet<String>>,
}

impl AuthGate {
    /// Requires `auth`'s token on every path but those in `public` (exact paths, e.g. `/healthz`).
    pub fn new(auth: Arc<Auth>, public: impl IntoIterator<Item = String>) -> Self {
        AuthGate { auth, public: Arc::new(public.into_iter().collect()) }
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(gate, require_bearer)`): lets public paths and requests
/// with the right bearer token through; answers anything else 401 `{"error":"unauthorized"}` with
/// `WWW-Authenticate: Bearer`.
pub async fn require_bearer(State(gate): State<AuthGate>, req: Request, next: Next) -> Response {
    if gate.public.contains(req.uri().path()) || gate.auth.authorizes(req.headers()) {
        return next.run(req).await;
    }
    gate.auth.failures.fetch_add(1, Ordering::Relaxed);
    // Peer, method and path only: the header (a wrong token may be a real one of another system) is never logged.
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string());
    tracing::info!(
        peer = peer.as_deref().unwrap_or("-"),
        method = %req.method(),
        path = req.uri().path(),
        "admin API: missing or wrong bearer token"
    );
    ApiError::unauthorized().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn accepts_only_the_exact_token_with_bearer_scheme() {
        let t = BearerToken::new("s3cr3t-t0ken-0123456789").unwrap();
        assert!(t.authorizes(&headers("Bearer s3cr3t-t0ken-0123456789")));
        assert!(t.authorizes(&headers("bearer s3cr3t-t0ken-0123456789")));
        assert!(t.authorizes(&headers("Bearer  s3cr3t-t0ken-0123456789 ")));
        for wrong in [
            "Bearer s3cr3t-t0ken-012345678",
            "Bearer s3cr3t-t0ken-01234567890",
            "Bearer S3CR3T-T0KEN-0123456789",
            "Basic s3cr3t-t0ken-0123456789",
            "s3cr3t-t0ken-0123456789",
            "Bearer",
            "Bearer ",
        ] {
            assert!(!t.authorizes(&headers(wrong)), "{wrong}");
        }
        assert!(!t.authorizes(&HeaderMap::new()));
    }

    #[test]
    fn a_replaced_token_takes_effect_and_the_old_one_stops_working() {
        let auth = Auth::new(BearerToken::new("old-token-0123456789").unwrap());
        assert!(auth.authorizes(&headers("Bearer old-token-0123456789")));
        auth.set_token(BearerToken::new("new-token-0123456789").unwrap());
        assert!(auth.authorizes(&headers("Bearer new-token-0123456789")));
        assert!(!auth.authorizes(&headers("Bearer old-token-0123456789")));
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let t = BearerToken::new("visible-secret-value").unwrap();
        let dbg = format!("{t:?} {:?}", AuthGate::new(Arc::new(Auth::new(t.clone())), []));
        assert!(!dbg.contains("visible-secret-value"), "{dbg}");
        assert!(!dbg.contains(&hex::encode(Sha256::digest(b"visible-secret-value"))), "{dbg}");
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let t = BearerToken::from_file("admin.token_file", &p, crate::config::SecretFiles::Refuse).unwrap();
        assert!(t.matches(b"abcdef0123456789abcdef"));

        std::fs::write(&p, " \n").unwrap();
        let e = BearerToken::from_file("admin.token_file", &p, crate::config::SecretFiles::Refuse).unwrap_err();
        assert_eq!(e.field(), Some("admin.token_file"));
        assert!(e.to_string().contains("empty"), "{e}");

        std::fs::write(&p, "two words\n").unwrap();
        let e = BearerToken::from_file("admin.token_file", &p, crate::config::SecretFiles::Refuse).unwrap_err();
        assert!(e.to_string().contains("visible ASCII"), "{e}");
        assert!(!e.to_string().contains("two words"), "the token must not be echoed: {e}");

        let e =
            BearerToken::from_file("admin.token_file", &dir.path().join("missing"), crate::config::SecretFiles::Refuse)
                .unwrap_err();
        assert!(matches!(e, ConfigError::KeyFile { .. }), "{e}");
    }
}
