//! The MCP server side: [`ToolScopeLayer`], a scope per tool on a Streamable HTTP
//! endpoint.
//!
//! An MCP server is one HTTP endpoint (`POST /mcp`) whose JSON-RPC messages name what
//! they do; a tool call says which tool in its body (`"method": "tools/call"`,
//! `"params": { "name": … }`), not in its path. [`RequireBearerLayer`] checks the
//! token and the audience for the whole endpoint; this layer, composed after it,
//! reads the tool calls of each request and answers `403` `insufficient_scope`
//! (RFC 6750 §3.1, MCP's "scope challenge") naming the scopes the tool needs when the
//! verified claims lack one, so the client can ask for them and try again. Every
//! other message (`initialize`, `tools/list`, notifications, responses) passes, and
//! so does every other HTTP method (`GET` streams, `DELETE`), its body unread.
//!
//! A `POST` body is read whole before the MCP service sees it, and bounded: a size
//! limit (`413`), a deadline for reading it (`408`), no compressed bodies (`415`,
//! they would be judged unread). A body that is not UTF-8 JSON, or whose `tools/call`
//! has no tool name, or names a key twice (`{"name": "echo", "name": "admin"}`, which
//! two parsers could read differently) is refused with `400` and a JSON-RPC error
//! (`id` `null`), before it reaches the service: what this layer judged is what the
//! service runs. The fuzz target `mcp_tool_calls` holds the reading to that.
//!
//! [`RequireBearerLayer`]: crate::server::RequireBearerLayer

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;
use tower_layer::Layer;
use tower_service::Service;

use crate::server::{Rejection, ScopedClaims, Verified};
use crate::BoxError;

/// The largest body read by default: 4 MiB (rmcp's own limit).
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// How long reading a body may take by default: 30 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body the MCP service behind [`ToolScope`] receives: the bytes read (a `POST`)
/// or the request's own body, unread (every other method).
pub type PeekedBody<B> = Either<Full<Bytes>, B>;

/// The body of [`ToolScope`]'s answers: the service's, or the layer's own refusal.
pub type ToolScopeBody<B> = Either<B, Full<Bytes>>;

/// Requires, per MCP tool, scopes of the verified claims (of type `C`): a
/// `tools/call` of a tool whose scopes the token lacks is answered `403`
/// `insufficient_scope`, with the `resource_metadata` and realm of the
/// [`RequireBearerLayer`] in front, and `scope="…"` naming what the tool needs
/// together with the scopes the token already holds among those this layer and the
/// bearer layer's [`scope`](crate::server::RequireBearerLayer::scope) name: a
/// client that asks for exactly that scope (as MCP clients do) gains the tool
/// without losing the others (the MCP spec's recommended answer).
///
/// Compose it after [`RequireBearerLayer`] (it reads the [`Verified`] claims that
/// layer adds), directly around the MCP service: it hands that service the body it
/// read. A tool it is not told about needs the scopes of
/// [`other_tools`](Self::other_tools) (none by default: any token the bearer layer
/// accepted). A `tools/call` without verified claims (an anonymous request, with
/// [`RequireBearerLayer::allow_anonymous`]) is answered `401`, when the tool needs a
/// scope.
///
/// With rmcp's Streamable HTTP service (the whole server: `examples/mcp_server.rs`):
///
/// ```
/// use std::sync::Arc;
///
/// use axum::Router;
/// use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
/// use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
/// use tower::Layer;
/// use tower_bearer::mcp::server::ToolScopeLayer;
/// use tower_bearer::server::{from_fn, Claims, ProtectedResourceMetadata, RequireBearerLayer};
///
/// #[derive(Clone)]
/// struct Tools; // #[tool_router] and #[tool_handler] in a real server
/// impl rmcp::ServerHandler for Tools {}
///
/// # fn main() -> Result<(), tower_bearer::Error> {
/// let resource = "https://mcp.example.com/mcp";
/// let metadata = ProtectedResourceMetadata::new(resource)
///     .authorization_servers(["https://idp.example.com"])
///     .scopes_supported(["read", "admin"]);
/// // A JwksValidator with `.rules(|v| v.audience(resource))` in a real server.
/// let validator = from_fn(|_token: &str| Ok(Claims::default()));
/// let mcp = StreamableHttpService::new(
///     || Ok(Tools),
///     Arc::new(NeverSessionManager::default()),
///     StreamableHttpServerConfig::default()
///         .with_legacy_session_mode(false)
///         .with_allowed_hosts(["mcp.example.com"]),
/// );
/// let scopes = ToolScopeLayer::<Claims>::new()
///     .tool("echo", ["read"])
///     .tool("delete_repository", ["admin"])
///     // tools added later are not open to every token
///     .other_tools(["admin"]);
/// let app: Router = Router::new()
///     .route_service("/mcp", scopes.layer(mcp))
///     .layer(
///         RequireBearerLayer::new(validator)
///             .realm("mcp")
///             .resource_metadata(metadata.url()?)
///             .scope("read"),
///     )
///     .route_service(&metadata.path()?, metadata.service()?);
/// # let _ = app;
/// # Ok(()) }
/// ```
///
/// [`RequireBearerLayer`]: crate::server::RequireBearerLayer
/// [`RequireBearerLayer::allow_anonymous`]: crate::server::RequireBearerLayer::allow_anonymous
pub struct ToolScopeLayer<C> {
    /// Each tool and its scopes, in the order given (a few dozen at most: a search
    /// costs less than a hash).
    tools: Arc<Vec<(String, Arc<[String]>)>>,
    others: Arc<[String]>,
    max_body: usize,
    read_timeout: Duration,
    /// `None`: the realm of the `RequireBearerLayer` in front.
    realm: Option<Arc<str>>,
    _claims: std::marker::PhantomData<fn() -> C>,
}

impl<C> Clone for ToolScopeLayer<C> {
    fn clone(&self) -> Self {
        ToolScopeLayer {
            tools: Arc::clone(&self.tools),
            others: Arc::clone(&self.others),
            max_body: self.max_body,
            read_timeout: self.read_timeout,
            realm: self.realm.clone(),
            _claims: std::marker::PhantomData,
        }
    }
}

impl<C> fmt::Debug for ToolScopeLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolScopeLayer")
            .field("tools", &self.tools)
            .field("others", &self.others)
            .field("max_body", &self.max_body)
            .field("read_timeout", &self.read_timeout)
            .field("realm", &self.realm)
            .finish()
    }
}

impl<C: ScopedClaims + Send + Sync + 'static> Default for ToolScopeLayer<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: ScopedClaims + Send + Sync + 'static> ToolScopeLayer<C> {
    /// No tool needs a scope yet; bodies up to [`DEFAULT_MAX_BODY`], read within
    /// [`DEFAULT_READ_TIMEOUT`].
    pub fn new() -> Self {
        ToolScopeLayer {
            tools: Arc::new(Vec::new()),
            others: Arc::from([]),
            max_body: DEFAULT_MAX_BODY,
            read_timeout: DEFAULT_READ_TIMEOUT,
            realm: None,
            _claims: std::marker::PhantomData,
        }
    }

    /// The tool `name` needs every one of `scopes` (named again: replaced). An item
    /// with spaces is the scopes it lists: `["read admin"]` is `["read", "admin"]`.
    pub fn tool<T: Into<String>>(
        mut self,
        name: impl Into<String>,
        scopes: impl IntoIterator<Item = T>,
    ) -> Self {
        let (name, scopes) = (name.into(), collect(scopes));
        let tools = Arc::make_mut(&mut self.tools);
        match tools.iter_mut().find(|(n, _)| *n == name) {
            Some(tool) => tool.1 = scopes,
            None => tools.push((name, scopes)),
        }
        self
    }

    /// Every tool not named with [`tool`](Self::tool) needs every one of `scopes`
    /// (by default none; read as in [`tool`](Self::tool)).
    pub fn other_tools<T: Into<String>>(mut self, scopes: impl IntoIterator<Item = T>) -> Self {
        self.others = collect(scopes);
        self
    }

    /// The largest `POST` body read; a larger one is answered `413`.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How long reading a `POST` body may take; a slower one is answered `408`.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The realm named in challenges. By default the realm of the
    /// [`RequireBearerLayer`](crate::server::RequireBearerLayer) the request went
    /// through.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(Arc::from(realm.into()));
        self
    }

    /// The scopes `tool` needs.
    fn scopes_of(&self, tool: &str) -> &[String] {
        self.tools
            .iter()
            .find(|(name, _)| name == tool)
            .map_or(&self.others, |(_, scopes)| scopes)
    }

    /// Every scope this layer knows of: the tools', then the other tools'.
    fn known_scopes(&self) -> impl Iterator<Item = &str> {
        self.tools
            .iter()
            .flat_map(|(_, scopes)| scopes.iter())
            .chain(self.others.iter())
            .map(String::as_str)
    }
}

/// The scopes given, each once: an item with spaces in it (`"read admin"`, the form
/// of a `scope` value, RFC 6749 §3.3) is the scopes it lists, since no token holds
/// a scope with a space in it.
fn collect<T: Into<String>>(scopes: impl IntoIterator<Item = T>) -> Arc<[String]> {
    let mut all: Vec<String> = Vec::new();
    for item in scopes {
        for scope in item.into().split_ascii_whitespace() {
            if !all.iter().any(|s| s == scope) {
                all.push(scope.to_owned());
            }
        }
    }
    all.into()
}

impl<S, C> Layer<S> for ToolScopeLayer<C> {
    type Service = ToolScope<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ToolScope {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ToolScopeLayer`].
pub struct ToolScope<S, C> {
    inner: S,
    layer: ToolScopeLayer<C>,
}

impl<S: Clone, C> Clone for ToolScope<S, C> {
    fn clone(&self) -> Self {
        ToolScope {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for ToolScope<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolScope")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// The response future of [`ToolScope`].
pub type ToolScopeFuture<ResBody, E> =
    Pin<Box<dyn Future<Output = Result<Response<ToolScopeBody<ResBody>>, E>> + Send>>;

impl<S, C, B, ResBody> Service<Request<B>> for ToolScope<S, C>
where
    S: Service<Request<PeekedBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    C: ScopedClaims + Send + Sync + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: 'static,
{
    type Response = Response<ToolScopeBody<ResBody>>;
    type Error = S::Error;
    type Future = ToolScopeFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was not polled ready stays; the ready one answers.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            if parts.method != Method::POST {
                // No JSON-RPC message travels in another method's body.
                let req = Request::from_parts(parts, Either::Right(body));
                return inner.call(req).await.map(|r| r.map(Either::Left));
            }
            let bytes = match read(&parts, body, layer.max_body, layer.read_timeout).await {
                Ok(bytes) => bytes,
                Err(refusal) => return Ok(refusal.response()),
            };
            let tools = match tool_calls(&bytes) {
                Ok(tools) => tools,
                Err(refusal) => return Ok(refusal.response()),
            };
            let req = Request::from_parts(parts, ());
            if let Some(rejection) = judge(&layer, &req, &tools) {
                let refused: Response<Full<Bytes>> =
                    crate::server::refuse(&req, layer.realm.as_deref(), &rejection);
                return Ok(refused.map(Either::Right));
            }
            drop(tools);
            let (parts, ()) = req.into_parts();
            let req = Request::from_parts(parts, Either::Left(Full::new(bytes)));
            inner.call(req).await.map(|r| r.map(Either::Left))
        })
    }
}

/// The verdict on the tool calls of a request: `None` when the claims grant what
/// every tool needs (or no tool call needs anything).
fn judge<C: ScopedClaims + Send + Sync + 'static>(
    layer: &ToolScopeLayer<C>,
    req: &Request<()>,
    tools: &[Cow<'_, str>],
) -> Option<Rejection> {
    if tools.is_empty() {
        return None;
    }
    let claims = req.extensions().get::<Verified<C>>().map(|v| &v.0);
    // Every scope a refused tool needs.
    let mut needed: Vec<&str> = Vec::new();
    for tool in tools {
        let scopes = layer.scopes_of(tool);
        let lacking = match claims {
            None => !scopes.is_empty(),
            Some(claims) => scopes.iter().any(|s| !claims.has_scope(s)),
        };
        if lacking {
            needed.extend(scopes.iter().map(String::as_str));
        }
    }
    let verdict = match (needed.is_empty(), claims) {
        (true, _) => None,
        (false, None) => Some(Rejection::Missing),
        (false, Some(claims)) => {
            // What the tools need and what the token holds of the scopes known here,
            // each once, in the order configured (the bearer layer's first).
            let params = crate::server::realm_of(req.extensions());
            let bearer = params.scope.as_deref().unwrap_or("").split(' ');
            let mut scope: Vec<&str> = Vec::new();
            for s in bearer
                .chain(layer.known_scopes())
                .chain(needed.iter().copied())
            {
                let wanted = needed.contains(&s) || claims.has_scope(s);
                if !s.is_empty() && wanted && !scope.contains(&s) {
                    scope.push(s);
                }
            }
            Some(Rejection::InsufficientScope(scope.join(" ")))
        }
    };
    crate::metrics::scope_check(verdict.as_ref());
    verdict
}

/// A request refused before it reaches the MCP service: an HTTP status and a
/// JSON-RPC error (RFC: JSON-RPC 2.0 §5.1; the `id` is unknown, so `null`).
#[derive(Debug, PartialEq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: i32,
    message: &'static str,
}

impl Refusal {
    const fn new(status: StatusCode, code: i32, message: &'static str) -> Self {
        Refusal {
            status,
            code,
            message,
        }
    }

    fn response<B>(&self) -> Response<Either<B, Full<Bytes>>> {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": self.code, "message": self.message },
        });
        let mut res = Response::new(Either::Right(Full::from(body.to_string())));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

/// JSON-RPC's "Parse error".
const PARSE_ERROR: i32 = -32700;
/// JSON-RPC's "Invalid Request".
const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC's "Invalid params".
const INVALID_PARAMS: i32 = -32602;

/// Reads the whole body of a `POST`: at most `max` bytes, within `timeout`,
/// uncompressed.
async fn read<B>(
    parts: &http::request::Parts,
    body: B,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, Refusal>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let identity = |v: &HeaderValue| v.as_bytes().eq_ignore_ascii_case(b"identity");
    if !parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .all(identity)
    {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            "compressed request bodies are not accepted",
        ));
    }
    let too_large = Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        INVALID_REQUEST,
        "the request body is too large",
    );
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large);
    }
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_elapsed) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            INVALID_REQUEST,
            "the request body was not received in time",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large),
        Ok(Err(_)) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "the request body could not be read",
        )),
    }
}

/// One JSON-RPC message, as far as this layer reads it. Derived: a key named twice
/// is an error, not "the last one wins".
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// The parameters of `tools/call`, as far as this layer reads them.
#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// The tools a body calls: one message or a batch (each message's calls judged).
pub(crate) fn tool_calls(body: &[u8]) -> Result<Vec<Cow<'_, str>>, Refusal> {
    // JSON is UTF-8 (RFC 8259 §8.1), in the keys this layer skips too.
    let body = std::str::from_utf8(body).map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            PARSE_ERROR,
            "the request body is not UTF-8",
        )
    })?;
    let json_whitespace = [' ', '\t', '\n', '\r'];
    let messages: Vec<Message<'_>> =
        match body.trim_start_matches(json_whitespace).as_bytes().first() {
            Some(b'[') => serde_json::from_str(body).map_err(|e| malformed(body, e))?,
            _ => vec![serde_json::from_str(body).map_err(|e| malformed(body, e))?],
        };
    let mut tools = Vec::new();
    for message in messages {
        if message.method.as_deref() != Some("tools/call") {
            continue;
        }
        // By name only: serde would read `["echo"]` as a struct too.
        let params = message
            .params
            .filter(|p| p.get().starts_with('{'))
            .and_then(|p| serde_json::from_str::<CallParams<'_>>(p.get()).ok())
            .ok_or(Refusal::new(
                StatusCode::BAD_REQUEST,
                INVALID_PARAMS,
                "tools/call needs params with one tool name",
            ))?;
        tools.push(params.name);
    }
    Ok(tools)
}

/// The refusal of a body that does not parse as messages: not JSON at all, or JSON
/// that is no JSON-RPC message.
fn malformed(body: &str, _error: serde_json::Error) -> Refusal {
    match serde_json::from_str::<serde::de::IgnoredAny>(body) {
        Err(_) => Refusal::new(
            StatusCode::BAD_REQUEST,
            PARSE_ERROR,
            "the request body is not JSON",
        ),
        Ok(_) => Refusal::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "the request body is not a JSON-RPC message",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Claims;

    fn names(body: &str) -> Result<Vec<String>, i32> {
        tool_calls(body.as_bytes())
            .map(|t| t.into_iter().map(Cow::into_owned).collect())
            .map_err(|r| r.code)
    }

    #[test]
    fn reads_the_tool_of_a_call_and_nothing_of_other_messages() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
        assert_eq!(names(call), Ok(vec!["echo".to_owned()]));
        let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":[1,2]}"#;
        assert_eq!(names(list), Ok(vec![]));
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(names(note), Ok(vec![]));
        let response = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        assert_eq!(names(response), Ok(vec![]));
        // An escaped name is the name it decodes to, as the service reads it.
        let escaped = r#"{"method":"tools/call","params":{"name":"ech\u006f"}}"#;
        assert_eq!(names(escaped), Ok(vec!["echo".to_owned()]));
    }

    #[test]
    fn judges_every_call_of_a_batch() {
        let batch = r#" [{"method":"tools/list"},{"method":"tools/call","params":{"name":"a"}},
            {"method":"tools/call","params":{"name":"b"}}]"#;
        assert_eq!(names(batch), Ok(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn refuses_junk_with_the_json_rpc_error_it_is() {
        assert_eq!(names(""), Err(PARSE_ERROR));
        assert_eq!(names("{\"method\":"), Err(PARSE_ERROR));
        assert_eq!(names("\u{0}\u{ff}"), Err(PARSE_ERROR));
        // Not UTF-8, even in a key that is skipped.
        let latin1 = b"{\"method\":\"tools/list\",\"caf\xe9\":1}";
        assert_eq!(tool_calls(latin1).map_err(|r| r.code), Err(PARSE_ERROR));
        assert_eq!(names("42"), Err(INVALID_REQUEST));
        assert_eq!(names(r#"{"method":5}"#), Err(INVALID_REQUEST));
        assert_eq!(names(r#"[1]"#), Err(INVALID_REQUEST));
        assert_eq!(names(r#"{"method":"tools/call"}"#), Err(INVALID_PARAMS));
        assert_eq!(
            names(r#"{"method":"tools/call","params":{"name":7}}"#),
            Err(INVALID_PARAMS)
        );
        assert_eq!(
            names(r#"{"method":"tools/call","params":["echo"]}"#),
            Err(INVALID_PARAMS)
        );
    }

    #[test]
    fn deep_nesting_is_read_without_recursion() {
        // Far deeper than any recursion would survive; params are skipped, not built.
        let depth = 200_000;
        let deep = format!(
            r#"{{"method":"tools/list","params":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(names(&deep), Ok(vec![]));
        let call = format!(
            r#"{{"method":"tools/call","params":{{"name":"echo","arguments":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(names(&call), Ok(vec!["echo".to_owned()]));
        assert_eq!(names(&"[".repeat(depth)), Err(PARSE_ERROR));
    }

    #[test]
    fn a_key_named_twice_is_refused_not_read_one_way() {
        let name_twice = r#"{"method":"tools/call","params":{"name":"echo","name":"admin"}}"#;
        assert_eq!(names(name_twice), Err(INVALID_PARAMS));
        let method_twice = r#"{"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#;
        assert_eq!(names(method_twice), Err(INVALID_REQUEST));
        let params_twice =
            r#"{"method":"tools/call","params":{"name":"echo"},"params":{"name":"x"}}"#;
        assert_eq!(names(params_twice), Err(INVALID_REQUEST));
    }

    fn claims(scope: &str) -> Request<()> {
        let claims: Claims = serde_json::from_value(serde_json::json!({ "scope": scope })).unwrap();
        let mut req = Request::new(());
        req.extensions_mut().insert(Verified(claims));
        req
    }

    #[test]
    fn a_tool_needs_its_scopes_and_the_refusal_names_them_with_those_held() {
        let layer = ToolScopeLayer::<Claims>::new()
            .tool("echo", ["read"])
            .tool("stats", ["admin", "read"])
            .tool("write", ["write"]);
        let echo = [Cow::Borrowed("echo")];
        let stats = [Cow::Borrowed("stats")];
        assert_eq!(judge(&layer, &claims("read"), &echo), None);
        assert_eq!(
            judge(&layer, &claims("read"), &stats),
            Some(Rejection::InsufficientScope("read admin".into()))
        );
        assert_eq!(judge(&layer, &claims("read admin"), &stats), None);
        // Held scopes known here are kept; others (openid) are not this layer's.
        assert_eq!(
            judge(&layer, &claims("openid write"), &echo),
            Some(Rejection::InsufficientScope("read write".into()))
        );
        // A batch: the scopes of every refused tool, each once.
        let both = [Cow::Borrowed("echo"), Cow::Borrowed("stats")];
        assert_eq!(
            judge(&layer, &claims("other"), &both),
            Some(Rejection::InsufficientScope("read admin".into()))
        );
        // A tool named again is replaced.
        let layer = layer.tool("echo", ["admin"]);
        assert_eq!(
            judge(&layer, &claims("read"), &echo),
            Some(Rejection::InsufficientScope("admin read".into()))
        );
    }

    #[test]
    fn other_tools_need_the_default_scopes_and_anonymous_calls_a_token() {
        let open = ToolScopeLayer::<Claims>::new().tool("echo", ["read"]);
        let unknown = [Cow::Borrowed("new_tool")];
        assert_eq!(judge(&open, &claims(""), &unknown), None);
        let closed = open.other_tools(["admin"]);
        assert_eq!(
            judge(&closed, &claims("read"), &unknown),
            Some(Rejection::InsufficientScope("read admin".into()))
        );
        assert_eq!(
            judge(&closed, &claims(""), &unknown),
            Some(Rejection::InsufficientScope("admin".into()))
        );
        assert_eq!(
            judge(&closed, &Request::new(()), &unknown),
            Some(Rejection::Missing)
        );
        // No tool call, nothing to judge, with or without claims.
        assert_eq!(judge(&closed, &Request::new(()), &[]), None);
    }
}
