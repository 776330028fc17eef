//! [`AuthorizedHttpClient`]: rmcp's Streamable HTTP client with an [`McpAuth`] on
//! every request (feature `rmcp`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use sse_stream::Sse;

use super::{McpAuth, Sent};

/// rmcp's [`StreamableHttpClient`] (by default its reqwest client) with an
/// [`McpAuth`]: every request carries the authorization's current token (whatever
/// token rmcp was given is replaced); a `401` (`AuthRequired`) makes the
/// authorization discover, register and authorize, then the request is sent once
/// more; a `403 insufficient_scope` (`InsufficientScope`) steps up, at most
/// [`McpAuth::max_step_ups`] times for one request. A failed authorization is the
/// request's error (`StreamableHttpError::Io`, its message the crate's `Error`).
///
/// ```no_run
/// use rmcp::transport::streamable_http_client::{
///     StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
/// };
/// use tower_bearer::mcp::{AuthorizedHttpClient, McpAuth, UserAgent};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let url = "https://mcp.example.com/mcp";
/// let auth = McpAuth::builder(url).user_agent(UserAgent::Browser).build()?;
/// let client = AuthorizedHttpClient::new(reqwest::Client::new(), auth);
/// let transport = StreamableHttpClientTransport::with_client(
///     client,
///     StreamableHttpClientTransportConfig::with_uri(url),
/// );
/// // `().serve(transport).await` (rmcp's client) then initializes and calls tools.
/// # let _ = transport; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AuthorizedHttpClient<C = reqwest::Client> {
    inner: C,
    auth: McpAuth,
}

impl<C> AuthorizedHttpClient<C> {
    /// `inner` with `auth` on every request.
    pub fn new(inner: C, auth: McpAuth) -> Self {
        AuthorizedHttpClient { inner, auth }
    }

    /// The authorization.
    pub fn auth(&self) -> &McpAuth {
        &self.auth
    }
}

/// An authorization failure as a transport error.
fn failed<E: std::error::Error + Send + Sync + 'static>(e: crate::Error) -> StreamableHttpError<E> {
    StreamableHttpError::Io(std::io::Error::other(e))
}

impl<C: StreamableHttpClient + Sync> AuthorizedHttpClient<C> {
    /// Sends with the current token; on `401` authorizes and sends once more; on
    /// `403 insufficient_scope` steps up, within the limit.
    async fn send<T, F, Fut>(&self, send: F) -> Result<T, StreamableHttpError<C::Error>>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: Future<Output = Result<T, StreamableHttpError<C::Error>>>,
    {
        let mut reauthorized = false;
        let mut step_ups = 0;
        loop {
            let sent: Sent = self.auth.credential().await.map_err(failed)?;
            match send(sent.token().map(str::to_owned)).await {
                Err(StreamableHttpError::AuthRequired(e)) if !reauthorized => {
                    reauthorized = true;
                    self.auth
                        .on_unauthorized(&sent, &e.www_authenticate_header)
                        .await
                        .map_err(failed)?;
                }
                Err(StreamableHttpError::InsufficientScope(e))
                    if step_ups < self.auth.max_step_ups() =>
                {
                    step_ups += 1;
                    self.auth
                        .on_insufficient_scope(&sent, &e.www_authenticate_header)
                        .await
                        .map_err(failed)?;
                }
                other => return other,
            }
        }
    }
}

impl<C: StreamableHttpClient + Sync> StreamableHttpClient for AuthorizedHttpClient<C> {
    type Error = C::Error;

    fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<Output = Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>>>
           + Send
           + '_ {
        self.send(move |token| {
            self.inner.post_message(
                Arc::clone(&uri),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
    }

    fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> impl Future<Output = Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>>>
           + Send
           + '_ {
        self.send(move |token| {
            self.inner.post_message_with_max_sse_event_size(
                Arc::clone(&uri),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
    }

    fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> impl Future<Output = Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>>>
           + Send
           + '_ {
        self.send(move |token| {
            self.inner.post_message_with_response_limits(
                Arc::clone(&uri),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
                limits,
            )
        })
    }

    fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<Output = Result<(), StreamableHttpError<Self::Error>>> + Send + '_ {
        self.send(move |token| {
            self.inner.delete_session(
                Arc::clone(&uri),
                Arc::clone(&session_id),
                token,
                custom_headers.clone(),
            )
        })
    }

    fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<
        Output = Result<
            BoxStream<'static, Result<Sse, SseError>>,
            StreamableHttpError<Self::Error>,
        >,
    > + Send
           + '_ {
        self.send(move |token| {
            self.inner.get_stream(
                Arc::clone(&uri),
                session_id.clone(),
                last_event_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
    }

    fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> impl Future<
        Output = Result<
            BoxStream<'static, Result<Sse, SseError>>,
            StreamableHttpError<Self::Error>,
        >,
    > + Send
           + '_ {
        self.send(move |token| {
            self.inner.get_stream_with_max_sse_event_size(
                Arc::clone(&uri),
                session_id.clone(),
                last_event_id.clone(),
                token,
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
    }
}
