//! [`RedisConfig`] and [`RedisConnection`]: one server (`redis://`, `rediss://`) or a
//! Redis Cluster, behind one connection type, so the store, the lock and the
//! denylist have a single code path.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::redis_error;
use crate::Error;

/// Connection and command timeouts: a command that fails returns [`Error::Store`],
/// the next one reconnects.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to reach Redis: one server, or the seed nodes of a Redis Cluster,
/// over plain TCP or TLS. Give it to [`RedisStore::connect_with`](super::RedisStore::connect_with)
/// or [`RedisDenylist::connect_with`](super::RedisDenylist::connect_with).
///
/// - `redis://host:port/db`: plain TCP.
/// - `rediss://host:port/db` (feature `redis-tls`): TLS through rustls. The server's
///   certificate is checked against the Mozilla roots (`webpki-roots`), or only
///   against [`ca_pem`](Self::ca_pem) when given; [`client_cert`](Self::client_cert)
///   adds a client certificate for servers that ask for one (`tls-auth-clients`).
/// - [`RedisConfig::cluster`] (feature `redis-cluster`): a Redis Cluster, found from
///   any of its nodes (`redis://` or `rediss://`).
///
/// ```no_run
/// # #[cfg(all(feature = "redis-tls", feature = "redis-cluster"))]
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// use tower_bearer::redis::{RedisConfig, RedisStore};
///
/// let ca = std::fs::read("/etc/redis/ca.pem").expect("the CA");
/// let config = RedisConfig::cluster(["rediss://10.0.0.1:6379/", "rediss://10.0.0.2:6379/"])
///     .ca_pem(ca);
/// let store = RedisStore::connect_with(&config, "billing-api").await?;
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    urls: Vec<String>,
    cluster: bool,
    #[cfg(feature = "redis-tls")]
    tls: Option<redis::TlsCertificates>,
}

impl RedisConfig {
    /// One Redis server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            urls: vec![url.into()],
            cluster: false,
            #[cfg(feature = "redis-tls")]
            tls: None,
        }
    }

    /// A Redis Cluster, found from any of the nodes at `urls` (one is enough; more
    /// let the client start while some are down).
    ///
    /// Each profile's keys carry the profile as a hash tag (`{profile}`), so the
    /// scripts that read and write the token and the lock run on one node. Writes
    /// are published with `PUBLISH`, which a cluster forwards to every node: waiting
    /// replicas subscribe on one node at a time (the next one after a failure), and
    /// poll Redis while they have no subscription.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            cluster: true,
            #[cfg(feature = "redis-tls")]
            tls: None,
        }
    }

    /// Trusts only the CA certificate(s) in `pem` for the server's certificate
    /// (instead of the Mozilla roots): a managed Redis with a private CA, or your own.
    /// Needs `rediss://` URLs.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_mut().root_cert = Some(pem.into());
        self
    }

    /// Presents the client certificate chain `cert_pem` with its private key `key_pem`
    /// (mutual TLS). Needs `rediss://` URLs.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    #[must_use]
    pub fn client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_mut().client_tls = Some(redis::ClientTlsConfig {
            client_cert: cert_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }

    #[cfg(feature = "redis-tls")]
    fn tls_mut(&mut self) -> &mut redis::TlsCertificates {
        self.tls.get_or_insert(redis::TlsCertificates {
            client_tls: None,
            root_cert: None,
        })
    }

    /// Connects: one multiplexed connection that reconnects by itself (a cluster
    /// connection follows the cluster's slots), with 2 s connection and command
    /// timeouts. Share it with [`RedisStore::with_connection`](super::RedisStore::with_connection)
    /// and [`RedisDenylist::with_connection`](super::RedisDenylist::with_connection).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a bad URL (or `rediss://` without the `redis-tls`
    /// feature, or certificates with a `redis://` URL), [`Error::Store`] when Redis
    /// cannot be reached now.
    pub async fn connect(&self) -> Result<RedisConnection, Error> {
        #[cfg(feature = "redis-cluster")]
        if self.cluster {
            return self.connect_cluster().await;
        }
        let client = self.clients()?.into_iter().next().ok_or_else(no_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| redis_error("connect", e))?;
        Ok(RedisConnection(Inner::Single(conn)))
    }

    #[cfg(feature = "redis-cluster")]
    async fn connect_cluster(&self) -> Result<RedisConnection, Error> {
        if self.urls.is_empty() {
            return Err(no_url());
        }
        self.before_tls();
        let builder =
            redis::cluster::ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                .retries(3);
        #[cfg(feature = "redis-tls")]
        let builder = match &self.tls {
            Some(certs) => builder.certs(certs.clone()),
            None => builder,
        };
        let client = builder.build().map_err(bad_config)?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| redis_error("connect to the cluster", e))?;
        Ok(RedisConnection(Inner::Cluster(conn)))
    }

    /// One client per URL, for connections of their own (the subscriptions that wake
    /// waiting replicas): the server, or each seed node of a cluster.
    pub(super) fn clients(&self) -> Result<Vec<redis::Client>, Error> {
        self.before_tls();
        self.urls
            .iter()
            .map(|url| {
                #[cfg(feature = "redis-tls")]
                if let Some(certs) = &self.tls {
                    return redis::Client::build_with_tls(url.as_str(), certs.clone())
                        .map_err(bad_config);
                }
                redis::Client::open(url.as_str()).map_err(bad_config)
            })
            .collect()
    }

    /// rustls needs a process-wide crypto provider: this crate's (aws-lc-rs, or ring
    /// with `--cfg tower_bearer_rust_crypto`) unless the application installed one. Without it a build with two providers would panic.
    fn before_tls(&self) {
        #[cfg(feature = "redis-tls")]
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err: another thread installed one meanwhile, which serves as well.
            let _ = crate::crypto::tls_provider().install_default();
        }
    }
}

fn bad_config(e: redis::RedisError) -> Error {
    Error::Configuration(format!("bad Redis configuration: {e}"))
}

fn no_url() -> Error {
    Error::Configuration("no Redis URL".into())
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password: hosts only.
        let hosts: Vec<&str> = self
            .urls
            .iter()
            .map(|u| u.rsplit_once('@').map_or(u.as_str(), |(_, host)| host))
            .collect();
        let mut d = f.debug_struct("RedisConfig");
        d.field("hosts", &hosts).field("cluster", &self.cluster);
        #[cfg(feature = "redis-tls")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

/// A connection to one Redis server or to a Redis Cluster, made by
/// [`RedisConfig::connect`] or from a connection you made yourself (`From` a
/// [`ConnectionManager`], or with the `redis-cluster` feature a
/// `redis::cluster_async::ClusterConnection`). Cloning is cheap: clones share the
/// multiplexed connection.
#[derive(Clone)]
pub struct RedisConnection(Inner);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl From<ConnectionManager> for RedisConnection {
    fn from(conn: ConnectionManager) -> Self {
        RedisConnection(Inner::Single(conn))
    }
}

#[cfg(feature = "redis-cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
impl From<redis::cluster_async::ClusterConnection> for RedisConnection {
    fn from(conn: redis::cluster_async::ClusterConnection) -> Self {
        RedisConnection(Inner::Cluster(conn))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Single(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Inner::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Inner::Cluster(_) => "cluster",
        };
        f.debug_tuple("RedisConnection").field(&kind).finish()
    }
}
