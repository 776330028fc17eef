//! Enterprise client authentication against a loopback token server that checks
//! every assertion with a real verifier (`jsonwebtoken::decode` with the public key):
//! `private_key_jwt` and `client_secret_jwt` on every grant and on revocation.
#![cfg(feature = "jwt")]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine as _;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use sha2::Digest;
use tower_bearer::client::source::{
    token_type, ExchangeToken, JwtBearer, JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT,
};
use tower_bearer::client::{
    AssertionKey, ClientAssertion, Refreshing, Revocation, TokenEndpoint, TokenSource,
    TokenTypeHint, CLIENT_ASSERTION_TYPE,
};
use tower_bearer::Error;

use common::server::key;

type FormMap = HashMap<String, String>;

/// How the server checks a client's assertions.
#[derive(Clone)]
struct Registered {
    key: DecodingKey,
    alg: Algorithm,
}

/// A token server that accepts only clients that authenticate with a valid,
/// never-replayed assertion.
struct AssertionServer {
    addr: SocketAddr,
    clients: HashMap<String, Registered>,
    /// Every `jti` accepted: a replay is refused.
    jtis: Mutex<HashSet<String>>,
    /// The forms received (token and revocation), in order.
    forms: Mutex<Vec<(String, FormMap)>>,
    /// The verified assertions: header and claims.
    verified: Mutex<Vec<(jsonwebtoken::Header, serde_json::Value)>>,
    /// The token requests' fields in order, repeated names kept.
    pairs: Mutex<Vec<Vec<(String, String)>>>,
    /// Token exchange: subject tokens refused with `invalid_grant`.
    refused_subjects: Mutex<HashSet<String>>,
    /// Token exchange: every subject token is refused.
    refuse_all_subjects: AtomicBool,
}

impl AssertionServer {
    fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }
    fn revoke_url(&self) -> String {
        format!("http://{}/revoke", self.addr)
    }
    fn endpoint(&self, client_id: &str) -> TokenEndpoint {
        TokenEndpoint::new(&self.token_url())
            .unwrap()
            .client_id(client_id)
    }
    fn verified(&self) -> Vec<(jsonwebtoken::Header, serde_json::Value)> {
        self.verified.lock().unwrap().clone()
    }
    /// The fields named `name` of token request `i`, in order.
    fn fields(&self, i: usize, name: &str) -> Vec<String> {
        self.pairs.lock().unwrap()[i]
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn grants(&self) -> Vec<String> {
        self.forms()
            .iter()
            .map(|(_, f)| f.get("grant_type").cloned().unwrap_or_default())
            .collect()
    }
    fn forms(&self) -> Vec<(String, FormMap)> {
        self.forms.lock().unwrap().clone()
    }

    /// Checks the `assertion` of a JWT-bearer grant: signed by the service account's
    /// key, issued by it, for this token endpoint, with a scope.
    fn check_grant_assertion(&self, form: &FormMap) -> Result<(), &'static str> {
        let assertion = form.get("assertion").ok_or("no assertion")?;
        let key = DecodingKey::from_rsa_pem(&key("rsa.pub.pem")).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[self.token_url()]);
        v.set_issuer(&[SERVICE_ACCOUNT]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        v.leeway = 0;
        let data = decode::<serde_json::Value>(assertion, &key, &v)
            .map_err(|_| "the assertion does not verify")?;
        if data.claims["scope"].as_str().is_none() {
            return Err("no scope");
        }
        self.verified
            .lock()
            .unwrap()
            .push((data.header, data.claims));
        Ok(())
    }

    /// Checks the client authentication of `form` as RFC 7523 §3 asks.
    fn authenticate(&self, form: &FormMap) -> Result<(), &'static str> {
        if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE) {
            return Err("no client assertion");
        }
        let client_id = form.get("client_id").ok_or("no client_id")?;
        let client = self.clients.get(client_id).ok_or("unknown client")?;
        let assertion = form.get("client_assertion").ok_or("no client_assertion")?;
        let mut v = Validation::new(client.alg);
        v.set_audience(&[self.token_url()]);
        v.set_issuer(&[client_id]);
        v.sub = Some(client_id.clone());
        v.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
        v.leeway = 0;
        let data = decode::<serde_json::Value>(assertion, &client.key, &v)
            .map_err(|_| "the assertion does not verify")?;
        let claims = data.claims;
        let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
        if !matches!((iat, exp), (Some(iat), Some(exp)) if exp > iat && exp - iat <= 300) {
            return Err("the assertion lives too long");
        }
        let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
        if !self.jtis.lock().unwrap().insert(jti) {
            return Err("a replayed assertion");
        }
        self.verified.lock().unwrap().push((data.header, claims));
        Ok(())
    }
}

fn invalid_client(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "invalid_client", "error_description": why})),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<AssertionServer>>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let form: FormMap = pairs.iter().cloned().collect();
    s.forms.lock().unwrap().push(("token".into(), form.clone()));
    s.pairs.lock().unwrap().push(pairs);
    let grant = form.get("grant_type").map(String::as_str);
    if grant == Some(JWT_BEARER_GRANT) {
        // The grant itself is the authentication (RFC 7523 §2.1).
        if let Err(why) = s.check_grant_assertion(&form) {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "invalid_grant", "error_description": why})),
            )
                .into_response();
        }
    } else if let Err(why) = s.authenticate(&form) {
        return invalid_client(why);
    }
    if grant == Some(TOKEN_EXCHANGE_GRANT) {
        let subject = form.get("subject_token").cloned().unwrap_or_default();
        let refused = s.refuse_all_subjects.load(Ordering::SeqCst)
            || s.refused_subjects.lock().unwrap().contains(&subject)
            || !form.contains_key("subject_token_type")
            || form.contains_key("actor_token") != form.contains_key("actor_token_type");
        if refused {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "invalid_grant"})),
            )
                .into_response();
        }
    }
    let n = s.forms.lock().unwrap().len();
    let mut body = serde_json::json!({
        "access_token": format!("at-{n}"),
        "token_type": "Bearer",
        "expires_in": 3600,
    });
    if form.get("grant_type").map(String::as_str) == Some("password") {
        body["refresh_token"] = format!("rt-{n}").into();
    }
    Json(body).into_response()
}

async fn revoke(State(s): State<Arc<AssertionServer>>, Form(form): Form<FormMap>) -> Response {
    s.forms
        .lock()
        .unwrap()
        .push(("revoke".into(), form.clone()));
    match s.authenticate(&form) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(why) => invalid_client(why),
    }
}

/// Registered clients: one per key type, plus `hs` with the secret
/// `hs-secret-0123456789abcdef0123456789`.
async fn start() -> Arc<AssertionServer> {
    let pem = |name: &str| key(name);
    let mut clients = HashMap::new();
    let mut add = |id: &str, key: DecodingKey, alg| {
        clients.insert(id.to_owned(), Registered { key, alg });
    };
    add(
        "rs256",
        DecodingKey::from_rsa_pem(&pem("rsa.pub.pem")).unwrap(),
        Algorithm::RS256,
    );
    add(
        "ps256",
        DecodingKey::from_rsa_pem(&pem("rsa.pub.pem")).unwrap(),
        Algorithm::PS256,
    );
    add(
        "es256",
        DecodingKey::from_ec_pem(&pem("ec256.pub.pem")).unwrap(),
        Algorithm::ES256,
    );
    add(
        "eddsa",
        DecodingKey::from_ed_pem(&pem("ed25519.pub.pem")).unwrap(),
        Algorithm::EdDSA,
    );
    add(
        "hs",
        DecodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::HS256,
    );
    // The listener's address is part of the audience: bind first, then serve.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Arc::new(AssertionServer {
        addr: listener.local_addr().unwrap(),
        clients,
        jtis: Mutex::new(HashSet::new()),
        forms: Mutex::new(Vec::new()),
        verified: Mutex::new(Vec::new()),
        pairs: Mutex::new(Vec::new()),
        refused_subjects: Mutex::new(HashSet::new()),
        refuse_all_subjects: AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .with_state(Arc::clone(&server));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    server
}

const SERVICE_ACCOUNT: &str = "robot@project.iam.gserviceaccount.com";

/// A Google service-account key file for `token_uri`, with the private key `file`.
fn service_account_json(token_uri: &str, file: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": "project",
        "private_key_id": "0123abcd",
        "private_key": String::from_utf8(key(file)).unwrap(),
        "client_email": SERVICE_ACCOUNT,
        "client_id": "1234567890",
        "token_uri": token_uri,
    })
    .to_string()
}

const HS_SECRET: &str = "hs-secret-0123456789abcdef0123456789";

fn assertion_key(alg: Algorithm, file: &str) -> AssertionKey {
    AssertionKey::from_pem(alg, &key(file)).unwrap()
}

/// `private_key_jwt` with RS256, PS256, ES256 and EdDSA keys, through the
/// client-credentials, password and refresh-token grants and a `Refreshing` cache:
/// every request carries a new assertion that the server verifies with the public
/// key (`aud` the token endpoint, `iss` = `sub` = the client id, a fresh `jti`, a
/// short life), and the `kid` header as configured.
#[tokio::test]
async fn private_key_jwt_with_every_key_type_on_every_grant() {
    let s = start().await;
    let keys = [
        ("rs256", Algorithm::RS256, "rsa.key"),
        ("ps256", Algorithm::PS256, "rsa.key"),
        ("es256", Algorithm::ES256, "ec256.key"),
        ("eddsa", Algorithm::EdDSA, "ed25519.key"),
    ];
    for (client, alg, file) in keys {
        let before = s.verified().len();
        let endpoint = s.endpoint(client).auth_method(ClientAssertion::private_key(
            assertion_key(alg, file).key_id(format!("kid-{client}")),
        ));
        let cache = Refreshing::new(endpoint.client_credentials().scope("read"));
        let first = cache.token().await.unwrap();
        assert!(first.access_token().expose_secret().starts_with("at-"));
        let token = endpoint.password("alice", "pw").fetch(None).await.unwrap();
        let refreshed = endpoint
            .refresh_token("rt-0")
            .fetch(Some(&token))
            .await
            .unwrap();
        assert!(refreshed.access_token().expose_secret().starts_with("at-"));

        let verified = &s.verified()[before..];
        assert_eq!(
            verified.len(),
            3,
            "{client}: three requests, three assertions"
        );
        for (header, claims) in verified {
            assert_eq!(header.alg, alg);
            assert_eq!(
                header.kid.as_deref(),
                Some(format!("kid-{client}").as_str())
            );
            assert_eq!(claims["iss"], client);
            assert_eq!(claims["aud"], s.token_url());
            let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
            assert_eq!(lifetime, 60, "the default assertion lifetime");
        }
    }
    let grants: Vec<_> = s
        .forms()
        .iter()
        .map(|(_, f)| f["grant_type"].clone())
        .collect();
    assert_eq!(grants.len(), 12);
    assert!(s
        .forms()
        .iter()
        .all(|(_, f)| !f.contains_key("client_secret")));
}

/// The server really verifies: an assertion signed with another RSA key, or by a
/// client registered for another algorithm, is refused with `invalid_client`; a
/// replayed assertion (the same `jti`) would be too, and none is ever sent twice.
#[tokio::test]
async fn a_wrong_key_is_refused_by_the_verifier() {
    let s = start().await;
    let wrong = s
        .endpoint("rs256")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::RS256,
            "rsa2.key",
        )));
    let err = wrong.client_credentials().fetch(None).await.unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"), "{err}");
    // ES256 client signing with RS256: refused too.
    let other_alg = s
        .endpoint("es256")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::RS256,
            "rsa.key",
        )));
    let err = other_alg
        .client_credentials()
        .fetch(None)
        .await
        .unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"), "{err}");
    assert!(s.verified().is_empty());

    let good = s
        .endpoint("es256")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::ES256,
            "ec256.key",
        )));
    for _ in 0..5 {
        good.client_credentials().fetch(None).await.unwrap();
    }
    let jtis: HashSet<_> = s
        .verified()
        .iter()
        .map(|(_, c)| c["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jtis.len(), 5, "a fresh jti per request");
}

/// `client_secret_jwt`: HS256 keyed with the client secret; the secret itself is
/// never sent. A wrong secret is refused by the server; no secret at all is a
/// configuration error before any request.
#[tokio::test]
async fn client_secret_jwt_signs_with_the_secret() {
    let s = start().await;
    let endpoint = s
        .endpoint("hs")
        .client_secret(HS_SECRET)
        .auth_method(ClientAssertion::client_secret());
    endpoint.client_credentials().fetch(None).await.unwrap();
    let (header, _) = &s.verified()[0];
    assert_eq!(header.alg, Algorithm::HS256);
    let (_, form) = &s.forms()[0];
    assert!(!form.values().any(|v| v.contains(HS_SECRET)), "{form:?}");
    assert!(!form.contains_key("client_secret"));

    let wrong = s
        .endpoint("hs")
        .client_secret("another-secret-0123456789abcdef")
        .auth_method(ClientAssertion::client_secret());
    let err = wrong.client_credentials().fetch(None).await.unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"), "{err}");

    let requests = s.forms().len();
    let no_secret = s
        .endpoint("hs")
        .auth_method(ClientAssertion::client_secret());
    let err = no_secret
        .client_credentials()
        .fetch(None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    let no_id =
        TokenEndpoint::new(&s.token_url())
            .unwrap()
            .auth_method(ClientAssertion::private_key(assertion_key(
                Algorithm::ES256,
                "ec256.key",
            )));
    let err = no_id.client_credentials().fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    assert_eq!(s.forms().len(), requests, "nothing was sent");
}

/// Revocation (RFC 7009) authenticates with a new assertion too, whose audience is
/// still the token endpoint.
#[tokio::test]
async fn revocation_authenticates_with_an_assertion() {
    let s = start().await;
    let endpoint = s
        .endpoint("eddsa")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::EdDSA,
            "ed25519.key",
        )));
    let revocation = Revocation::new(&endpoint, &s.revoke_url()).unwrap();
    revocation
        .revoke("rt-1", Some(TokenTypeHint::RefreshToken))
        .await
        .unwrap();
    let forms = s.forms();
    assert_eq!(forms[0].0, "revoke");
    assert_eq!(forms[0].1["token"], "rt-1");
    assert_eq!(s.verified().len(), 1);
    assert_eq!(s.verified()[0].1["aud"], s.token_url());
}

/// The header and audience options: `x5t#S256` from a certificate (Entra ID's
/// certificate credentials), a fixed `aud`, a shorter lifetime. The server, which
/// wants the token endpoint as audience, refuses the fixed one.
#[tokio::test]
async fn certificate_thumbprint_audience_and_lifetime() {
    let s = start().await;
    let certificate = b"a DER certificate, as far as the header cares";
    let endpoint = s.endpoint("rs256").auth_method(
        ClientAssertion::private_key(
            assertion_key(Algorithm::RS256, "rsa.key").certificate_der(certificate),
        )
        .lifetime(Duration::from_secs(30)),
    );
    endpoint.client_credentials().fetch(None).await.unwrap();
    let (header, claims) = &s.verified()[0];
    let thumbprint =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(certificate));
    assert_eq!(header.x5t_s256.as_deref(), Some(thumbprint.as_str()));
    assert_eq!(header.kid, None);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        30
    );

    let issuer_aud = s.endpoint("rs256").auth_method(
        ClientAssertion::private_key(assertion_key(Algorithm::RS256, "rsa.key"))
            .audience("https://issuer.example"),
    );
    let err = issuer_aud
        .client_credentials()
        .fetch(None)
        .await
        .unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"), "{err}");
    let (_, form) = s.forms().last().cloned().unwrap();
    let sent = decode_header(&form["client_assertion"]).unwrap();
    assert_eq!(sent.alg, Algorithm::RS256);
    let payload = form["client_assertion"].split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "https://issuer.example");
    // Not discovered: the issuer is unknown, so nothing is sent.
    let requests = s.forms().len();
    let unknown = s.endpoint("rs256").auth_method(
        ClientAssertion::private_key(assertion_key(Algorithm::RS256, "rsa.key")).audience_issuer(),
    );
    let err = unknown.client_credentials().fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    assert_eq!(s.forms().len(), requests);
}

/// The JWT-bearer grant from a Google service-account key: through a `Refreshing`
/// cache, an assertion the server verifies with the public key (`iss` the
/// `client_email`, `aud` the `token_uri`, `sub`, `scope`, `kid` the
/// `private_key_id`), a new one per token; `resource` sent as a form field.
#[tokio::test]
async fn jwt_bearer_grant_from_a_service_account_key() {
    let s = start().await;
    let json = service_account_json(&s.token_url(), "rsa.key");
    let grant = JwtBearer::from_service_account_json(&json)
        .unwrap()
        .subject("alice@example.com")
        .scope("https://www.googleapis.com/auth/cloud-platform")
        .resource("https://api.example.com");
    assert!(!format!("{grant:?}").contains("PRIVATE KEY"));
    let authorizer = Refreshing::new(grant.clone());
    let token = authorizer.token().await.unwrap();
    assert!(token.access_token().expose_secret().starts_with("at-"));
    grant.fetch(Some(&token)).await.unwrap();

    let verified = s.verified();
    assert_eq!(verified.len(), 2);
    for (header, claims) in &verified {
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("0123abcd"));
        assert_eq!(claims["iss"], SERVICE_ACCOUNT);
        assert_eq!(claims["sub"], "alice@example.com");
        assert_eq!(claims["aud"], s.token_url());
        assert_eq!(
            claims["scope"],
            "https://www.googleapis.com/auth/cloud-platform"
        );
    }
    assert_ne!(verified[0].1["jti"], verified[1].1["jti"]);
    let (_, form) = &s.forms()[0];
    assert_eq!(form["grant_type"], JWT_BEARER_GRANT);
    assert_eq!(form["resource"], "https://api.example.com");
    assert!(!form.contains_key("client_assertion"));

    // From a file too.
    let dir = std::env::temp_dir().join(format!("tb-enterprise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sa.json");
    std::fs::write(&path, &json).unwrap();
    let from_file = JwtBearer::from_service_account_file(&path)
        .unwrap()
        .scope("x");
    from_file.fetch(None).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A service-account key the server does not trust is refused (`invalid_grant`
/// from the verifier), and hostile key files are configuration errors that never
/// quote the file.
#[tokio::test]
async fn jwt_bearer_refusals_and_hostile_key_files() {
    let s = start().await;
    let other =
        JwtBearer::from_service_account_json(&service_account_json(&s.token_url(), "rsa2.key"))
            .unwrap()
            .scope("x");
    let err = other.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
    let no_scope =
        JwtBearer::from_service_account_json(&service_account_json(&s.token_url(), "rsa.key"))
            .unwrap();
    assert_eq!(
        no_scope.fetch(None).await.unwrap_err().oauth_code(),
        Some("invalid_grant")
    );
    assert!(s.verified().is_empty());

    let good: serde_json::Value =
        serde_json::from_str(&service_account_json(&s.token_url(), "rsa.key")).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[field] = value;
        v.to_string()
    };
    let secret_marker = "MARKER-not-a-key-MARKER";
    let cases = [
        "not json at all".to_owned(),
        "[]".to_owned(),
        with("type", "authorized_user".into()),
        with("private_key", serde_json::Value::Null),
        with("client_email", serde_json::Value::Null),
        with("private_key", secret_marker.into()),
        with("private_key", 5.into()),
        with(
            "private_key",
            String::from_utf8(key("ec256.key")).unwrap().into(),
        ),
        with("token_uri", "http://idp.example.com/token".into()),
        with("token_uri", "not a url".into()),
    ];
    for case in cases {
        let err = JwtBearer::from_service_account_json(&case).unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{err}");
        let message = err.to_string();
        assert!(!message.contains(secret_marker), "{message}");
        assert!(!message.contains("PRIVATE KEY"), "{message}");
    }
    let err = JwtBearer::from_service_account_file("/nonexistent/sa.json").unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
}

fn es256_endpoint(s: &AssertionServer) -> TokenEndpoint {
    s.endpoint("es256")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::ES256,
            "ec256.key",
        )))
}

/// Token exchange (RFC 8693) of the token a `Refreshing` cache holds, with an actor
/// token, two audiences, a resource, a scope and a requested token type, cached
/// by a second `Refreshing`; the client authenticates with `private_key_jwt`.
#[tokio::test]
async fn token_exchange_of_a_cached_token() {
    let s = start().await;
    let endpoint = es256_endpoint(&s);
    let user = Refreshing::new(endpoint.client_credentials());
    let exchange = endpoint
        .token_exchange(ExchangeToken::from_authorizer(
            user.clone(),
            token_type::ACCESS_TOKEN,
        ))
        .actor(ExchangeToken::fixed("actor-jwt", token_type::JWT))
        .audience("orders")
        .audience("billing")
        .resource("https://orders.example.com")
        .scope("orders:read")
        .requested_token_type(token_type::ACCESS_TOKEN);
    assert!(!format!("{exchange:?}").contains("actor-jwt"));
    let backend = Refreshing::new(exchange);
    let exchanged = backend.token().await.unwrap();
    let subject = user.token().await.unwrap();
    assert_ne!(
        exchanged.access_token().expose_secret(),
        subject.access_token().expose_secret()
    );
    // Cached: a second caller makes no request.
    backend.token().await.unwrap();
    assert_eq!(s.grants(), ["client_credentials", TOKEN_EXCHANGE_GRANT]);
    let (_, form) = &s.forms()[1];
    assert_eq!(
        form["subject_token"],
        subject.access_token().expose_secret()
    );
    assert_eq!(form["subject_token_type"], token_type::ACCESS_TOKEN);
    assert_eq!(form["actor_token"], "actor-jwt");
    assert_eq!(form["actor_token_type"], token_type::JWT);
    assert_eq!(form["scope"], "orders:read");
    assert_eq!(form["requested_token_type"], token_type::ACCESS_TOKEN);
    assert_eq!(s.fields(1, "audience"), ["orders", "billing"]);
    assert_eq!(s.fields(1, "resource"), ["https://orders.example.com"]);
    assert_eq!(s.verified().len(), 2, "both requests authenticated");
}

/// A refused subject token: a fixed one ends in `invalid_grant` after one request;
/// one from a cache is reported rejected to it, which fetches a new one, and the
/// exchange succeeds on the second try; refused twice, the error is not
/// `invalid_grant` (the exchange owns no grant to declare dead).
#[tokio::test]
async fn token_exchange_when_the_subject_is_refused() {
    let s = start().await;
    let endpoint = es256_endpoint(&s);
    let fixed = endpoint.token_exchange(ExchangeToken::fixed("stale", token_type::ACCESS_TOKEN));
    s.refused_subjects.lock().unwrap().insert("stale".into());
    let err = fixed.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
    assert_eq!(s.grants().len(), 1);

    let user = Refreshing::new(endpoint.client_credentials());
    let first = user.token().await.unwrap();
    s.refused_subjects
        .lock()
        .unwrap()
        .insert(first.access_token().expose_secret().to_owned());
    let exchange = endpoint.token_exchange(ExchangeToken::from_authorizer(
        user.clone(),
        token_type::ACCESS_TOKEN,
    ));
    exchange.fetch(None).await.unwrap();
    let second = user.token().await.unwrap();
    assert_ne!(
        first.access_token().expose_secret(),
        second.access_token().expose_secret(),
        "the cache dropped the refused token"
    );
    assert_eq!(
        s.grants()[1..],
        [
            "client_credentials",
            TOKEN_EXCHANGE_GRANT,
            "client_credentials",
            TOKEN_EXCHANGE_GRANT
        ]
    );

    s.refuse_all_subjects.store(true, Ordering::SeqCst);
    let err = exchange.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::TokenEndpoint(_)), "{err}");
    assert_eq!(err.oauth_code(), Some("invalid_grant"));
}

/// Resource indicators (RFC 8707) on every grant over a token endpoint: each
/// `resource` call adds one `resource` field, in order.
#[tokio::test]
async fn resource_indicators_on_every_grant() {
    use tower_bearer::client::source::PasswordPrompt;
    use tower_bearer::SecretString;
    let s = start().await;
    let endpoint = es256_endpoint(&s);
    let (a, b) = ("https://a.example.com", "https://b.example.com");
    endpoint
        .client_credentials()
        .resource(a)
        .resource(b)
        .fetch(None)
        .await
        .unwrap();
    let token = endpoint
        .password("alice", "pw")
        .resource(a)
        .fetch(None)
        .await
        .unwrap();
    endpoint
        .refresh_token("rt-0")
        .resource(b)
        .fetch(Some(&token))
        .await
        .unwrap();
    PasswordPrompt::new(endpoint.clone(), "alice")
        .ask(|_| Ok(Some(SecretString::from("pw"))))
        .resource(a)
        .fetch(None)
        .await
        .unwrap();
    endpoint.client_credentials().fetch(None).await.unwrap();
    assert_eq!(
        s.grants(),
        [
            "client_credentials",
            "password",
            "refresh_token",
            "password",
            "client_credentials"
        ]
    );
    assert_eq!(s.fields(0, "resource"), [a, b]);
    assert_eq!(s.fields(1, "resource"), [a]);
    assert_eq!(s.fields(2, "resource"), [b]);
    assert_eq!(s.fields(3, "resource"), [a]);
    assert!(s.fields(4, "resource").is_empty());
}
