//! Admin listener guards: bearer-token auth on `/api/v1` (and optionally `/metrics`), JSON-only
//! POSTs and a cap on request bodies, all answering with the API's JSON errors.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admin::api::ApiError;
use crate::config::BearerToken;

/// Largest request body the admin listener reads (its bodies are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the token guards.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    pub token: BearerToken,
    /// Whether `/metrics` needs the token too (`/healthz` and the static page never do).
    pub protect_metrics: bool,
}

impl AuthPolicy {
    /// Whether a request for `path` must carry the token.
    fn guards(&self, path: &str) -> bool {
        path == "/api" || path.starts_with("/api/") || (self.protect_metrics && path == "/metrics")
    }
}

/// `router` with the body cap and, when `policy` is set, the token check in front of it
/// (the check runs first, so an unauthenticated body is never read).
pub fn guard(router: Router, policy: Option<AuthPolicy>) -> Router {
    let router = router
        .layer(middleware::from_fn(limit_body))
        .layer(middleware::from_fn(json_posts_only));
    match policy {
        Some(p) => router.layer(middleware::from_fn_with_state(Arc::new(p), require_token)),
        None => router,
    }
}

async fn require_token(
    State(policy): State<Arc<AuthPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    if !policy.guards(req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match presented {
        Some(t) if token_matches(t, &policy.token) => next.run(req).await,
        Some(_) => unauthorized("invalid bearer token", "invalid_token"),
        None => unauthorized(
            "this API needs a bearer token: send Authorization: Bearer <token>",
            "",
        ),
    }
}

/// The credentials of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Compares in constant time: the SHA-256 digests, so neither where the tokens differ nor the
/// expected token's length shows in the timing.
fn token_matches(presented: &str, expected: &BearerToken) -> bool {
    let digest = |t: &str| Sha256::digest(t.as_bytes());
    digest(presented)
        .as_slice()
        .ct_eq(digest(expected.expose()).as_slice())
        .into()
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750) and a JSON error.
fn unauthorized(message: &str, error_code: &str) -> Response {
    let challenge = if error_code.is_empty() {
        HeaderValue::from_static("Bearer realm=\"triage-loop\"")
    } else {
        HeaderValue::from_static("Bearer realm=\"triage-loop\", error=\"invalid_token\"")
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message.into()).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    resp
}

/// Refuses a POST under `/api/` that is not `application/json` with 415: a browser sends such a
/// request cross-site without asking first (a form, `no-cors` fetch), so without this an other
/// site could post to an unguarded API; JSON needs a CORS preflight, which this API never grants.
async fn json_posts_only(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let is_api_post =
        req.method() == axum::http::Method::POST && (path == "/api" || path.starts_with("/api/"));
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if is_api_post && !json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST bodies must be Content-Type: application/json".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Refuses bodies over `MAX_BODY_BYTES` with 413: by `Content-Length` at once, otherwise while
/// reading (the body is buffered; admin bodies are small).
async fn limit_body(req: Request, next: Next) -> Response {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY_BYTES} bytes"),
        )
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                return too_large();
            }
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parses_the_scheme_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        let t = BearerToken::new("s3cret").unwrap();
        assert!(token_matches("s3cret", &t));
        assert!(!token_matches("s3cre", &t));
        assert!(!token_matches("s3cret!", &t));
        assert!(!token_matches("S3cret", &t));
    }

    #[test]
    fn policy_guards_the_api_and_optionally_metrics() {
        let mut p = AuthPolicy {
            token: BearerToken::new("t").unwrap(),
            protect_metrics: false,
        };
        assert!(p.guards("/api/v1/issues"));
        assert!(p.guards("/api/v2/unknown"));
        assert!(!p.guards("/apix"));
        assert!(!p.guards("/metrics"));
        assert!(!p.guards("/healthz"));
        assert!(!p.guards("/ui"));
        p.protect_metrics = true;
        assert!(p.guards("/metrics"));
        assert!(!p.guards("/healthz"));
    }

    /// A body without `Content-Length` (streamed) is cut off at the cap while it is read.
    #[tokio::test]
    async fn streamed_bodies_over_the_cap_are_refused() {
        use axum::routing::post;
        use tower::ServiceExt;
        let app = guard(
            Router::new().route(
                "/api/v1/x",
                post(|b: axum::body::Bytes| async move { b.len().to_string() }),
            ),
            None,
        );
        let send = |chunks: usize| {
            let app = app.clone();
            async move {
                let parts = (0..chunks).map(|_| {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 256 * 1024]))
                });
                let req = Request::post("/api/v1/x")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from_stream(tokio_stream::iter(parts)))
                    .unwrap();
                let resp = app.oneshot(req).await.unwrap();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                    .await
                    .unwrap();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (status, body) = send(4).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, (1024 * 1024).to_string());
        let (status, body) = send(5).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("\"error\""), "{body}");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let p = AuthPolicy {
            token: BearerToken::new("hunter2").unwrap(),
            protect_metrics: false,
        };
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
