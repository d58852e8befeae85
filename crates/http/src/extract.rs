//! Extractors that turn every bad input into a 4xx in the API's error shape:
//! JSON bodies (size limit, depth limit, unknown fields, wrong types, with
//! the field that is wrong), JSON-or-YAML documents, query strings, path
//! parameters — and the authenticated caller as an engine [`Actor`].

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use opsconductor::Actor;
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::middleware::{ClientIp, RequestId};
use crate::state::AppState;

/// True if the JSON text nests deeper than `max` (arrays and objects),
/// found by a scan that skips strings — before any parsing.
pub fn too_deep(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The media type of a request, lower-cased, without parameters.
fn media_type(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

fn is_json(mt: &str) -> bool {
    mt == "application/json" || (mt.starts_with("application/") && mt.ends_with("+json"))
}

fn is_yaml(mt: &str) -> bool {
    matches!(
        mt,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml"
    )
}

/// Reads the whole body within the configured limit (413 beyond).
///
/// Past the limit the rest is read and dropped (up to 8 times the limit, for
/// at most two seconds), so the client sees the 413 instead of a connection
/// reset for data it was still sending.
async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    let drain_cap = limit.saturating_mul(8).max(1024 * 1024);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_cap as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(f) => f,
            Err(_) if total > limit => return Err(too_large()),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the request body arrived too slowly",
                ));
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )));
            }
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    total = total.saturating_add(data.len());
                    if total <= limit {
                        buf.extend_from_slice(&data);
                    } else if total > drain_cap {
                        return Err(too_large());
                    }
                }
            }
        }
    }
    if total > limit {
        return Err(too_large());
    }
    Ok(axum::body::Bytes::from(buf))
}

/// Parses JSON into `T`, naming the field that is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    if too_deep(bytes, max_depth) {
        return Err(ApiError::bad_request(format!(
            "the JSON body nests deeper than {max_depth} levels"
        ))
        .with_code("too_deep"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." {
                        "body".to_string()
                    } else {
                        path
                    };
                    Err(ApiError::invalid(field, inner.to_string()))
                }
                _ => Err(ApiError::bad_request(format!("malformed JSON: {inner}"))
                    .with_code("malformed_json")),
            }
        }
    }
}

impl ApiError {
    /// Replaces the code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

/// A request body not read yet: handlers check the caller's permission
/// first (so a refused caller gets 403 whatever it sent), then read it as
/// JSON ([`Lazy::json`]) or as a definition document ([`Lazy::document`]).
#[derive(Debug)]
pub struct Lazy {
    req: Request,
    limit: usize,
    depth: usize,
}

impl FromRequest<AppState> for Lazy {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self {
            req,
            limit: state.inner.body_limit,
            depth: state.inner.json_depth,
        })
    }
}

impl Lazy {
    /// Reads a JSON body (`Content-Type: application/json`, or none) into `T`.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        let (parts, body) = self.req.into_parts();
        if let Some(mt) = media_type(&parts)
            && !is_json(&mt)
        {
            return Err(unsupported(&mt, "application/json"));
        }
        let bytes = read_body(Request::from_parts(parts, body), self.limit).await?;
        parse_json(&bytes, self.depth)
    }

    /// Like [`Lazy::json`], but an empty body is `T::default()` (for
    /// endpoints whose body is optional, e.g. an approval's comment).
    pub async fn json_or_default<T: DeserializeOwned + Default>(self) -> Result<T, ApiError> {
        let (parts, body) = self.req.into_parts();
        if let Some(mt) = media_type(&parts)
            && !is_json(&mt)
        {
            return Err(unsupported(&mt, "application/json"));
        }
        let bytes = read_body(Request::from_parts(parts, body), self.limit).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        parse_json(&bytes, self.depth)
    }

    /// Reads a definition document: a JSON object, or YAML text (`application/yaml`).
    pub async fn document(self) -> Result<Document, ApiError> {
        let (parts, body) = self.req.into_parts();
        let mt = media_type(&parts);
        let bytes = read_body(Request::from_parts(parts, body), self.limit).await?;
        match mt.as_deref() {
            None => parse_json(&bytes, self.depth).map(Document::Json),
            Some(m) if is_json(m) => parse_json(&bytes, self.depth).map(Document::Json),
            // Depth, size and aliases of YAML are checked on the parser's
            // structure by the core (`opsconductor::spec::check_yaml`): a
            // text scan cannot know YAML's quoting rules.
            Some(m) if is_yaml(m) => String::from_utf8(bytes.to_vec())
                .map(Document::Yaml)
                .map_err(|_| ApiError::bad_request("the YAML body is not UTF-8")),
            Some(m) => Err(unsupported(m, "application/json or application/yaml")),
        }
    }
}

/// A JSON request body (`Content-Type: application/json`, or none), read
/// before the handler runs: for endpoints any caller may use.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Lazy::from_request(req, state)
            .await?
            .json()
            .await
            .map(JsonBody)
    }
}

fn unsupported(mt: &str, expected: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("Content-Type '{mt}' is not accepted here; send {expected}"),
    )
}

/// A definition document: JSON (an object) or YAML text (`application/yaml`).
#[derive(Debug)]
pub enum Document {
    /// A JSON object.
    Json(serde_json::Value),
    /// YAML text (possibly several documents).
    Yaml(String),
}

/// A query string parsed into `T` (400 with the reason when it does not fit).
#[derive(Debug)]
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<T>(query).map(Q).map_err(|e| {
            ApiError::bad_request(format!("bad query string: {e}")).with_field("query")
        })
    }
}

/// Path parameters parsed into `T` (400 when they do not fit).
#[derive(Debug)]
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()).with_field("path"))
    }
}

/// The authenticated caller: who (the [`Principal`]) and the engine
/// [`Actor`] to act as (role, auth method, client address, request id).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The actor for engine calls, held to the permission matrix.
    pub actor: Actor,
}

impl Caller {
    /// Fails with 403 unless the caller's role holds `perm` (the core's matrix).
    pub fn require(&self, perm: opsconductor::auth::Permission) -> Result<(), ApiError> {
        opsconductor::auth::require(self.principal.role, perm).map_err(ApiError::from)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("authentication required"))?;
        let mut actor = Actor::user(&principal.username, principal.role, principal.via);
        actor.source = parts.extensions.get::<ClientIp>().map(|c| c.0.clone());
        actor.request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        // The login family is a UUIDv7 made when the password was entered:
        // its time is the login's (refreshing a token keeps the family).
        actor.login_at = principal
            .family
            .as_deref()
            .and_then(|f| uuid::Uuid::parse_str(f).ok())
            .and_then(|u| u.get_timestamp())
            .and_then(|ts| {
                let (secs, nanos) = ts.to_unix();
                chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
            });
        Ok(Self { principal, actor })
    }
}

/// Where a request comes from, for endpoints without a caller (login).
#[derive(Debug, Clone)]
pub struct Source {
    /// The client address.
    pub ip: String,
    /// The request id.
    pub request_id: Option<String>,
}

impl Source {
    /// An actor named `name` (the username tried) from this source.
    pub fn actor(&self, name: &str) -> Actor {
        let mut actor = Actor::new(name);
        actor.via = Some("password".into());
        actor.source = Some(self.ip.clone());
        actor.request_id = self.request_id.clone();
        actor
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            ip: parts
                .extensions
                .get::<ClientIp>()
                .map(|c| c.0.clone())
                .unwrap_or_else(|| "unknown".into()),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_ignores_strings() {
        assert!(!too_deep(br#"{"a":[1,{"b":"[[[[[[["}]}"#, 3));
        assert!(too_deep(b"[[[[1]]]]", 3));
        assert!(!too_deep(b"[[[1]]]", 3));
        assert!(!too_deep(br#"{"a":"\"[[[[["}"#, 1));
    }

    #[test]
    fn json_errors_are_4xx_with_fields() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only parsed")]
        struct B {
            n: u32,
        }
        let e = parse_json::<B>(b"{\"n\": \"x\"}", 8).unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (422, Some("n")));
        let e = parse_json::<B>(b"{\"n\": 1, \"zz\": 2}", 8).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        assert!(e.message.contains("zz"), "{}", e.message);
        let e = parse_json::<B>(b"{\"n\": ", 8).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "malformed_json"));
        let e = parse_json::<B>(b"", 8).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
    }
}
