//! The built-in admin API under `/_admin`: module upload, rollback and status,
//! JSON in and out. Every request must carry the device's bearer token
//! (compared in constant time); nothing here bypasses that check. The context
//! executes what a request asks (it owns the protocols and the store).

/// URL prefix of the admin API.
pub const PREFIX: &str = "/_admin";

/// Admin API settings. `None` in the device config disables the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Bearer token every admin request must carry.
    pub token: String,
    /// Development mode: unsigned modules are accepted (and the status says so).
    pub allow_unsigned: bool,
    /// ed25519 public keys whose signatures are trusted.
    pub trusted_keys: Vec<[u8; 32]>,
    /// Largest module upload, in bytes; more is answered `413`. Default 512 KiB.
    pub max_module_bytes: usize,
    /// Module bytes the store may hold, all slots together; more is `507`.
    /// Default 2 MiB.
    pub store_bytes: u64,
    /// Only this listener serves the admin API (`None`: every listener).
    pub listener: Option<String>,
    /// The trial period of a new module: its first this many callbacks.
    /// Default 200.
    pub trial_callbacks: u32,
    /// More faults than this in the trial period roll the module back by
    /// itself. Default 3.
    pub trial_max_faults: u32,
    /// After a swap, connections still on the old module (WebSockets) are
    /// closed with 1001 "going away" once this has passed. Default 60 s.
    pub drain_timeout: std::time::Duration,
}

impl AdminConfig {
    /// Defaults, with `token` as the bearer token and no trusted keys.
    pub fn new(token: impl Into<String>) -> Self {
        AdminConfig {
            token: token.into(),
            allow_unsigned: false,
            trusted_keys: Vec::new(),
            max_module_bytes: 512 * 1024,
            store_bytes: 2 * 1024 * 1024,
            listener: None,
            trial_callbacks: 200,
            trial_max_faults: 3,
            drain_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// What an admin request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /_admin/status`
    Status,
    /// `GET /_admin/modules`
    Modules,
    /// `PUT /_admin/modules/{protocol}`
    Upload(String),
    /// `POST /_admin/modules/{protocol}/rollback`
    Rollback(String),
    /// A path the API does not have.
    NotFound,
    /// A path the API has, with another method; the allowed one is given.
    MethodNotAllowed(&'static str),
}

/// True if `path` belongs to the admin API.
pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Maps a request to a [`Route`].
pub fn route(method: &str, path: &str) -> Route {
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let want = |allowed: &'static str, route: Route| {
        if method == allowed {
            route
        } else {
            Route::MethodNotAllowed(allowed)
        }
    };
    match segments.as_slice() {
        ["status"] => want("GET", Route::Status),
        ["modules"] => want("GET", Route::Modules),
        ["modules", protocol] => want("PUT", Route::Upload((*protocol).to_string())),
        ["modules", protocol, "rollback"] => want("POST", Route::Rollback((*protocol).to_string())),
        _ => Route::NotFound,
    }
}

/// True if `authorization` is `Bearer <token>`. The comparison takes the same
/// time wherever the first difference is.
pub fn authorized(authorization: Option<&[u8]>, token: &str) -> bool {
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let Some(given) = authorization
        .filter(|h| h.len() >= 7 && h[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|h| &h[7..])
    else {
        return false;
    };
    let want = token.as_bytes();
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= w ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0 && !want.is_empty()
}

/// `{"error": msg}`.
pub fn error_json(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(route("GET", "/_admin/status"), Route::Status);
        assert_eq!(route("GET", "/_admin/modules"), Route::Modules);
        assert_eq!(
            route("PUT", "/_admin/modules/http"),
            Route::Upload("http".into())
        );
        assert_eq!(
            route("POST", "/_admin/modules/http/rollback"),
            Route::Rollback("http".into())
        );
        assert_eq!(
            route("POST", "/_admin/modules/http"),
            Route::MethodNotAllowed("PUT")
        );
        assert_eq!(route("GET", "/_admin/nope"), Route::NotFound);
        assert_eq!(route("GET", "/_admin"), Route::NotFound);
    }

    #[test]
    fn admin_paths_are_whole_segments() {
        assert!(is_admin_path("/_admin"));
        assert!(is_admin_path("/_admin/status"));
        assert!(!is_admin_path("/_administrator"));
        assert!(!is_admin_path("/"));
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cret2"), "s3cret"));
        assert!(!authorized(Some(b"Basic s3cret"), "s3cret"));
        assert!(
            authorized(Some(b"bearer s3cret"), "s3cret"),
            "the scheme ignores case"
        );
        assert!(!authorized(None, "s3cret"));
        assert!(
            !authorized(Some(b"Bearer "), ""),
            "an empty token never authorises"
        );
    }
}
