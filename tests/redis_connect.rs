//! Connecting to Redis over TLS and to a cluster (`RedisConfig`): what is refused,
//! and why. The fleet behaviour over each deployment is in fleet_refresh.rs and
//! fleet_denylist.rs; the servers are those of tests/common/redis.rs.
#![cfg(feature = "redis")]

mod common;

use tower_bearer::redis::{RedisConfig, RedisStore};
use tower_bearer::Error;

#[tokio::test]
async fn certificates_with_a_plain_redis_url_are_a_configuration_error() {
    #[cfg(feature = "redis-tls")]
    {
        let config = RedisConfig::new("redis://127.0.0.1:1/")
            .ca_pem(b"-----BEGIN CERTIFICATE-----".to_vec());
        let error = RedisStore::connect_with(&config, "p").await.unwrap_err();
        assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    }
    let error = RedisStore::connect("not a url", "p").await.unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
}

/// Without the `redis-tls` feature a `rediss://` URL is refused at once, with a
/// reason, instead of talking plain TCP to a TLS port.
#[cfg(not(feature = "redis-tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_is_a_configuration_error() {
    let error = RedisStore::connect("rediss://127.0.0.1:1/", "p")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    // The same through a RedisConfig.
    let config = RedisConfig::new("rediss://127.0.0.1:1/");
    let error = RedisStore::connect_with(&config, "p").await.unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
}

#[cfg(feature = "redis-tls")]
mod tls {
    use super::*;
    use common::redis::Redis;

    fn read(var: &str) -> Vec<u8> {
        std::fs::read(std::env::var(var).unwrap()).unwrap()
    }

    /// The TLS server wants a client certificate signed by its CA and has a
    /// certificate from a private CA: each piece of `RedisConfig` is needed.
    #[tokio::test]
    async fn rediss_needs_the_servers_ca_and_the_client_certificate() {
        let Some(redis) = Redis::tls().await else {
            return;
        };
        let url = std::env::var("REDIS_TLS_URL").unwrap();
        let (ca, cert, key) = (
            read("REDIS_TLS_CA"),
            read("REDIS_TLS_CERT"),
            read("REDIS_TLS_KEY"),
        );

        // The Mozilla roots do not know the test CA.
        let error = RedisStore::connect(&url, "p").await.unwrap_err();
        assert!(matches!(error, Error::Store(_)), "{error:?}");
        // A trust anchor that did not sign the server's certificate (the client's).
        let wrong = RedisConfig::new(&url)
            .ca_pem(cert.clone())
            .client_cert(cert.clone(), key.clone());
        let error = RedisStore::connect_with(&wrong, "p").await.unwrap_err();
        assert!(matches!(error, Error::Store(_)), "{error:?}");
        // The right CA but no client certificate: the server hangs up.
        let anonymous = RedisConfig::new(&url).ca_pem(ca.clone());
        let refused = match RedisStore::connect_with(&anonymous, "p").await {
            Err(error) => matches!(error, Error::Store(_)),
            // Over TLS 1.3 the refusal may come with the first command.
            Ok(store) => store.version().await.is_err(),
        };
        assert!(refused, "a client without a certificate was served");

        let store = redis.store("tls-probe").await;
        assert_eq!(store.version().await.unwrap(), 0);
        // The key material is never printed.
        let debug = format!("{:?}", redis.config);
        assert!(
            !debug.contains("PRIVATE KEY") && !debug.contains("BEGIN"),
            "{debug}"
        );
    }
}

#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn a_cluster_is_found_from_one_live_node_among_dead_ones() {
    let Some(_) = common::redis::Redis::cluster().await else {
        return;
    };
    let urls = std::env::var("REDIS_CLUSTER_URLS").unwrap();
    let live = urls.split(',').next().unwrap().to_owned();
    let dead = format!("redis://127.0.0.1:{}/", common::server::free_port());
    let config = RedisConfig::cluster([dead, live]);
    let store = RedisStore::connect_with(&config, "cluster-probe")
        .await
        .unwrap();
    assert_eq!(store.version().await.unwrap(), 0);
    let error = RedisStore::connect_with(&RedisConfig::cluster(Vec::<String>::new()), "p")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
}
