//! hcpe's status page: one static HTML document (inline CSS, JS and SVG, no external resources) embedded in
//! the binary and served at `GET /` without auth.
//!
//! Invariants:
//! - The page holds no data: the browser fetches `/api/v1/uplinks` and `/api/v1/connections` itself with the
//!   bearer token from the URL fragment (`#token=...`, never sent to the server) or from a form, so serving it
//!   unauthenticated reveals nothing.
//! - The Content-Security-Policy allows nothing but this page's own inline `<script>` and `<style>`, pinned by
//!   their SHA-256 hashes (computed from the embedded text, so they cannot drift), and requests to the same
//!   origin. No other script, style, image, font, frame or form target can load, and no other site may frame it.

use std::sync::LazyLock;

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY};
use axum::http::{HeaderName, HeaderValue};
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

/// The page, as served.
pub const PAGE: &str = include_str!("status.html");

/// The CSP header value for [`PAGE`].
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source_hash(inline(PAGE, "script")),
        source_hash(inline(PAGE, "style")),
    )
});

/// Status page (HTML, no data in it; needs no token, asks for it in the URL fragment).
#[utoipa::path(get, path = "/", security(()), responses(
    (status = 200, description = "The page, with its security headers.", body = String, content_type = "text/html"),
))]
pub async fn handler() -> impl IntoResponse {
    let csp = HeaderValue::from_str(&CSP).unwrap_or(HeaderValue::from_static("default-src 'none'"));
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (CONTENT_SECURITY_POLICY, csp),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
}

/// The text between the first `<tag>` and the following `</tag>` (what a CSP hash covers), empty if absent.
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    page.find(&open)
        .map(|i| &page[i + open.len()..])
        .and_then(|rest| rest.find(&close).map(|j| &rest[..j]))
        .unwrap_or("")
}

/// A CSP hash source, `sha256-<base64>`.
fn source_hash(text: &str) -> String {
    format!("sha256-{}", base64(&Sha256::digest(text.as_bytes())))
}

/// Standard base64 with padding. Hand-written: 32 bytes once per process do not justify a dependency.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= chunk.len() { char::from(A[((n >> shift) & 63) as usize]) } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::StatusCode;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn page_has_exactly_one_inline_script_and_style_and_nothing_external() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(inline(PAGE, "script").contains("/api/v1/uplinks"));
        assert!(inline(PAGE, "style").contains("svg.graph"));
        // no external or attribute-borne resources the CSP would have to allow
        for bad in ["src=", "href=", "http://", "https://", "style=\"", " onclick", " onload", "@import", "url("] {
            let hits: Vec<_> = PAGE.match_indices(bad).map(|(i, _)| &PAGE[i.saturating_sub(20)..i + 30]).collect();
            // the SVG namespace URI is an identifier, not a fetch
            let hits: Vec<_> = hits.into_iter().filter(|h| !h.contains("www.w3.org/2000/svg")).collect();
            assert!(hits.is_empty(), "{bad:?} in the page: {hits:?}");
        }
    }

    #[test]
    fn csp_pins_the_inline_hashes_and_allows_only_self() {
        let csp = CSP.as_str();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(csp.contains(&format!("script-src '{}'", source_hash(inline(PAGE, "script")))), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        // one known vector, so a broken hash cannot pass by agreeing with itself
        assert_eq!(source_hash("alert(1)"), "sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI=");
    }

    #[tokio::test]
    async fn handler_serves_html_with_security_headers() {
        let resp = handler().await.into_response();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[CONTENT_SECURITY_POLICY], CSP.as_str());
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
        assert_eq!(body, PAGE.as_bytes());
    }
}
