//! Server-side validation costs, group `server_validation`, all in one run so the
//! ratios are meaningful:
//!
//! - per algorithm (HS256, RS256, ES256, EdDSA): a request through
//!   `RequireBearer<JwtValidator>` vs a raw `jsonwebtoken::decode` of the same token
//!   (with the backend this build selected: aws-lc-rs, or RustCrypto under
//!   `--cfg tower_bearer_rust_crypto`) vs `jwt-authorizer`'s check (`check_auth`: its
//!   jsonwebtoken 9 on ring);
//! - for RS256, ES256 and EdDSA, the same token from the same `HeaderMap` through
//!   huskarl's resource-server validator (`huskarl-resource-server`'s
//!   `CustomValidator::validate_request`, on its own RustCrypto backend
//!   `huskarl-crypto-native`) and through ours (`headers/<alg>`: `bearer_token`, then
//!   `JwtValidator::check`): both take the request's headers and answer the claims;
//! - a repeated RS256 token through `VerifiedCache` vs RS256 verification;
//! - `Authorization` header parsing alone.
//!
//! `cargo bench --bench server --features jwt`; `-- huskarl_interleaved` runs huskarl
//! and ours in alternating rounds instead, and prints the ratios.
//!
//! Instruction counts instead of times (steady on a loaded machine): with
//! `SERVER_CALLGRIND=<case>:<n>` the binary runs one case `n` times inside
//! `measured`, and nothing else, for
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*'`;
//! instructions per iteration are the collected total over `n`. Cases: the names
//! above (`raw_decode/HS256`, `layer/HS256`, `jwt_authorizer/HS256`, …, `jwt_verify/RS256`,
//! `headers/ES256`, `huskarl/ES256`, `verified_cache_hit/RS256`, `header_parse`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{header::AUTHORIZATION, HeaderMap, HeaderValue, Request, Response};
use huskarl_resource_server::core::crypto::verifier::{
    JwsVerifier, JwsVerifierFactory, JwsVerifierPlatform,
};
use huskarl_resource_server::core::jwk::PublicJwk;
use huskarl_resource_server::core::platform::MaybeSendBoxFuture;
use huskarl_resource_server::core::{EndpointUrl, RetryAdvice};
use huskarl_resource_server::validator::custom::CustomValidator;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::json;
use tower::{Service, ServiceExt};
use tower_bearer::server::{
    header::bearer_token, Claims, JwtValidator, RequireBearerLayer, Validator, VerifiedCache,
};
use tower_layer::Layer;

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

struct Case {
    name: &'static str,
    token: String,
    validator: JwtValidator<Claims>,
    raw_key: DecodingKey,
    raw_validation: Validation,
    peer: jwt_authorizer::Authorizer<jwt_authorizer::RegisteredClaims>,
    /// huskarl's validator with the same public key (not for HS256).
    huskarl: Option<CustomValidator<PeerClaims>>,
    /// The request's headers: `Authorization: Bearer <token>`.
    headers: HeaderMap,
}

/// What huskarl reads beyond the registered claims it reads itself (`iss`, `sub`,
/// `aud`, `exp`, `iat`, `jti`, `cnf`): the one other claim of the bench's tokens,
/// as `Claims` reads it.
#[derive(Clone, serde::Deserialize)]
struct PeerClaims {
    #[allow(dead_code)] // read, as ours reads it, not looked at
    scope: Option<String>,
}

/// huskarl's verifier for one fixed public key (its `JwksSource` fetches a JWKS
/// over HTTP; this hands its platform the same key as a JWK instead).
struct StaticKey(PublicJwk);

impl JwsVerifierFactory for StaticKey {
    fn build(
        &self,
        _jwks_uri: Option<&EndpointUrl>,
        platform: Arc<dyn JwsVerifierPlatform>,
    ) -> MaybeSendBoxFuture<
        'static,
        Result<Arc<dyn JwsVerifier>, huskarl_resource_server::core::Error>,
    > {
        let jwk = self.0.clone();
        Box::pin(async move {
            platform
                .create_verifier_from_jwk(jwk)
                .await
                .map_err(|e| huskarl_resource_server::core::Error::new(RetryAdvice::No, e))
        })
    }
}

/// huskarl's validator for tokens signed by `key` with `alg`, with the checks
/// `JwtValidator` makes by default: the signature, `exp` required, `nbf`; `iss` and
/// `sub` only required present (huskarl's defaults, which the tokens meet), no
/// audience, `iat` and `jti` not required (the tokens carry neither).
fn huskarl(alg: Algorithm, key: &EncodingKey) -> CustomValidator<PeerClaims> {
    let jwk: PublicJwk = serde_json::from_value(
        serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap(),
    )
    .unwrap();
    let name = serde_json::to_value(alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let build = CustomValidator::builder()
        .with_claims::<PeerClaims>()
        .require_iat(false)
        .require_jti(false)
        .allowed_signing_algorithms(vec![name])
        .jws_verifier_factory(StaticKey(jwk))
        .build();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(build)
        .unwrap()
}

/// One check through huskarl's validator (a static key: ready at once).
fn huskarl_check(case: &Case) -> PeerClaims {
    static URI: std::sync::OnceLock<http::Uri> = std::sync::OnceLock::new();
    let uri = URI.get_or_init(|| http::Uri::from_static("http://api.test/items"));
    case.huskarl
        .as_ref()
        .expect("no huskarl case for this algorithm")
        .validate_request(&case.headers, &http::Method::GET, uri, None)
        .now_or_never()
        .expect("a static key needs no I/O")
        .outcome
        .unwrap()
        .expect("a token was sent")
        .claims
}

/// Both refuse the token with another signature (so neither case measures a check
/// that accepts anything).
fn assert_both_refuse_a_forgery(case: &Case) {
    let (signed, signature) = case.token.rsplit_once('.').unwrap();
    let other = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{other}{}", &signature[1..]);
    assert!(case.validator.check(&forged).is_err());
    let uri = http::Uri::from_static("http://api.test/items");
    let outcome = case
        .huskarl
        .as_ref()
        .unwrap()
        .validate_request(&headers(&forged), &http::Method::GET, &uri, None)
        .now_or_never()
        .unwrap()
        .outcome;
    assert!(outcome.is_err(), "huskarl accepted a forged signature");
}

/// One check through ours from the same headers.
fn headers_check(case: &Case) -> Claims {
    let token = bearer_token(&case.headers, 8 * 1024).unwrap();
    case.validator.check(token).unwrap()
}

fn headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    headers
}

/// jwt-authorizer with the same key and the same checks (`exp` required, `nbf`).
fn peer(
    builder: jwt_authorizer::AuthorizerBuilder<jwt_authorizer::RegisteredClaims>,
) -> jwt_authorizer::Authorizer<jwt_authorizer::RegisteredClaims> {
    let builder = builder.validation(jwt_authorizer::Validation::new().nbf(true));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(builder.build())
        .unwrap()
}

/// One check through jwt-authorizer (no I/O for a static key: ready at once).
fn peer_check(case: &Case) -> jwt_authorizer::RegisteredClaims {
    case.peer
        .check_auth(&case.token)
        .now_or_never()
        .expect("a static key needs no I/O")
        .unwrap()
        .claims
}

fn cases() -> Vec<Case> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        json!({ "sub": "bench", "iss": "https://idp.example.com", "exp": exp, "scope": "read" });
    let secret = b"a-benchmark-secret-of-32-bytes!!";
    let mint =
        |alg, key: &EncodingKey| jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap();
    let raw_validation = |alg| {
        // The same checks JwtValidator makes by default.
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        v.validate_nbf = true;
        v
    };
    vec![
        Case {
            name: "HS256",
            token: mint(Algorithm::HS256, &EncodingKey::from_secret(secret)),
            validator: JwtValidator::hmac(secret),
            raw_key: DecodingKey::from_secret(secret),
            raw_validation: raw_validation(Algorithm::HS256),
            peer: peer(jwt_authorizer::JwtAuthorizer::from_secret(
                std::str::from_utf8(secret).unwrap(),
            )),
            huskarl: None,
            headers: HeaderMap::new(),
        },
        Case {
            name: "RS256",
            token: mint(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&key("rsa.key")).unwrap(),
            ),
            validator: JwtValidator::rsa_pem(&key("rsa.pub.pem")).unwrap(),
            raw_key: DecodingKey::from_rsa_pem(&key("rsa.pub.pem")).unwrap(),
            raw_validation: raw_validation(Algorithm::RS256),
            peer: peer(jwt_authorizer::JwtAuthorizer::from_rsa_pem_text(
                &String::from_utf8(key("rsa.pub.pem")).unwrap(),
            )),
            huskarl: Some(huskarl(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&key("rsa.key")).unwrap(),
            )),
            headers: HeaderMap::new(),
        },
        Case {
            name: "ES256",
            token: mint(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&key("ec256.key")).unwrap(),
            ),
            validator: JwtValidator::ec_pem(&key("ec256.pub.pem")).unwrap(),
            raw_key: DecodingKey::from_ec_pem(&key("ec256.pub.pem")).unwrap(),
            raw_validation: raw_validation(Algorithm::ES256),
            peer: peer(jwt_authorizer::JwtAuthorizer::from_ec_pem_text(
                &String::from_utf8(key("ec256.pub.pem")).unwrap(),
            )),
            huskarl: Some(huskarl(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&key("ec256.key")).unwrap(),
            )),
            headers: HeaderMap::new(),
        },
        Case {
            name: "EdDSA",
            token: mint(
                Algorithm::EdDSA,
                &EncodingKey::from_ed_pem(&key("ed25519.key")).unwrap(),
            ),
            validator: JwtValidator::ed_pem(&key("ed25519.pub.pem")).unwrap(),
            raw_key: DecodingKey::from_ed_pem(&key("ed25519.pub.pem")).unwrap(),
            raw_validation: raw_validation(Algorithm::EdDSA),
            peer: peer(jwt_authorizer::JwtAuthorizer::from_ed_pem_text(
                &String::from_utf8(key("ed25519.pub.pem")).unwrap(),
            )),
            huskarl: Some(huskarl(
                Algorithm::EdDSA,
                &EncodingKey::from_ed_pem(&key("ed25519.key")).unwrap(),
            )),
            headers: HeaderMap::new(),
        },
    ]
    .into_iter()
    .map(|mut case| {
        case.headers = headers(&case.token);
        case
    })
    .collect()
}

fn request(token: &str) -> Request<()> {
    Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_validation");
    let mut rs256 = None;
    for case in cases() {
        // Sanity: both paths accept the token.
        jsonwebtoken::decode::<Claims>(&case.token, &case.raw_key, &case.raw_validation).unwrap();
        let inner =
            tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
        let mut service = RequireBearerLayer::new(case.validator.clone()).layer(inner);
        let ok = service
            .ready()
            .now_or_never()
            .unwrap()
            .unwrap()
            .call(request(&case.token));
        assert_eq!(ok.now_or_never().unwrap().unwrap().status(), 200);

        group.bench_function(format!("raw_decode/{}", case.name), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Claims>(
                    std::hint::black_box(&case.token),
                    &case.raw_key,
                    &case.raw_validation,
                )
                .unwrap()
            })
        });
        peer_check(&case);
        group.bench_function(format!("jwt_authorizer/{}", case.name), |b| {
            b.iter(|| peer_check(std::hint::black_box(&case)))
        });
        if case.huskarl.is_some() {
            // Sanity: huskarl and ours accept the token from the same headers, and
            // refuse it with another signature.
            huskarl_check(&case);
            headers_check(&case);
            assert_both_refuse_a_forgery(&case);
            group.bench_function(format!("huskarl/{}", case.name), |b| {
                b.iter(|| huskarl_check(std::hint::black_box(&case)))
            });
            group.bench_function(format!("headers/{}", case.name), |b| {
                b.iter(|| headers_check(std::hint::black_box(&case)))
            });
        }
        group.bench_function(format!("layer/{}", case.name), |b| {
            b.iter_batched(
                || request(&case.token),
                |req| service.call(req).now_or_never().unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
        if case.name == "RS256" {
            rs256 = Some(case);
        }
    }

    let rs256 = rs256.unwrap();
    let cached = VerifiedCache::new(rs256.validator.clone());
    group.bench_function("jwt_verify/RS256", |b| {
        b.iter(|| {
            rs256
                .validator
                .check(std::hint::black_box(&rs256.token))
                .unwrap()
        })
    });
    group.bench_function("verified_cache_hit/RS256", |b| {
        b.iter(|| {
            cached
                .validate(std::hint::black_box(&rs256.token))
                .now_or_pending()
                .ok()
                .unwrap()
                .unwrap()
        })
    });

    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {}", rs256.token)).unwrap(),
    );
    group.bench_function("header_parse", |b| {
        b.iter(|| {
            bearer_token(std::hint::black_box(&headers), 8 * 1024)
                .unwrap()
                .len()
        })
    });
    group.finish();
}

/// Calls `f` `n` times; the only code collected in a callgrind run.
#[inline(never)]
fn measured<T>(n: usize, mut f: impl FnMut() -> T) {
    for _ in 0..n {
        std::hint::black_box(f());
    }
}

/// One case, `n` times, for callgrind (see the module documentation).
fn callgrind(case_name: &str, n: usize) {
    let (kind, alg) = case_name.split_once('/').unwrap_or((case_name, ""));
    let mut all = cases();
    let rs256 = all.iter().position(|c| c.name == "RS256").unwrap();
    match kind {
        "raw_decode" | "layer" | "jwt_verify" | "jwt_authorizer" | "huskarl" | "headers" => {
            let case = all
                .iter()
                .find(|c| c.name == alg)
                .expect("unknown algorithm");
            match kind {
                "raw_decode" => measured(n, || {
                    jsonwebtoken::decode::<Claims>(&case.token, &case.raw_key, &case.raw_validation)
                        .unwrap()
                }),
                "jwt_verify" => measured(n, || case.validator.check(&case.token).unwrap()),
                "huskarl" => {
                    huskarl_check(case);
                    measured(n, || huskarl_check(case))
                }
                "headers" => {
                    headers_check(case);
                    measured(n, || headers_check(case))
                }
                "jwt_authorizer" => {
                    peer_check(case);
                    measured(n, || peer_check(case))
                }
                _ => {
                    let inner = tower::service_fn(|_req: Request<()>| async {
                        Ok::<_, Infallible>(Response::new(()))
                    });
                    let mut service = RequireBearerLayer::new(case.validator.clone()).layer(inner);
                    let mut requests: Vec<_> = (0..n).map(|_| request(&case.token)).collect();
                    measured(n, || {
                        let response = service
                            .call(requests.pop().unwrap())
                            .now_or_never()
                            .unwrap()
                            .unwrap();
                        assert_eq!(response.status(), 200);
                        response
                    });
                }
            }
        }
        "identity" | "layer_cached" => {
            let case = all
                .iter()
                .find(|c| c.name == alg)
                .expect("unknown algorithm");
            let inner = tower::service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(()))
            });
            let mut requests: Vec<_> = (0..n.max(1) + 1).map(|_| request(&case.token)).collect();
            let mut run = |service: &mut dyn FnMut(Request<()>) -> Response<()>| {
                // The first request fills the cache (or warms the identity's path).
                assert_eq!(service(requests.pop().unwrap()).status(), 200);
                measured(n, || {
                    let response = service(requests.pop().unwrap());
                    assert_eq!(response.status(), 200);
                    response
                });
            };
            if kind == "identity" {
                let mut service =
                    tower::util::MapRequestLayer::new(|r: Request<()>| r).layer(inner);
                run(&mut |r| service.call(r).now_or_never().unwrap().unwrap());
            } else {
                let cached = VerifiedCache::new(case.validator.clone());
                let mut service = RequireBearerLayer::new(cached).layer(inner);
                run(&mut |r| service.call(r).now_or_never().unwrap().unwrap());
            }
        }
        "essential" => essential::uncached(&all[0].token, n),
        "essential_cached" => essential::cache_hit(&all[0].token, n),
        "verified_cache_hit" => {
            let case = all.swap_remove(rs256);
            let cached = VerifiedCache::new(case.validator);
            cached
                .validate(&case.token)
                .now_or_pending()
                .ok()
                .unwrap()
                .unwrap();
            measured(n, || {
                cached
                    .validate(&case.token)
                    .now_or_pending()
                    .ok()
                    .unwrap()
                    .unwrap()
            });
        }
        "header_parse" => {
            let mut headers = HeaderMap::new();
            headers.insert(
                AUTHORIZATION,
                HeaderValue::try_from(format!("Bearer {}", all[rs256].token)).unwrap(),
            );
            measured(n, || bearer_token(&headers, 8 * 1024).unwrap().len());
        }
        _ => panic!("unknown case {case_name}"),
    }
}

/// The parts of a request no validator of an HS256 token can skip, measured alone, so
/// that what the layer adds is a ratio of them that holds on any machine
/// (`benches/essential.sh`).
mod essential {
    use super::{measured, Claims};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    /// Uncached: the signature and the payload out of base64url, the HMAC over the
    /// signing input, the claims read into `Claims`.
    pub fn uncached(token: &str, n: usize) {
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            b"a-benchmark-secret-of-32-bytes!!",
        );
        let once = || {
            let (signed, signature) = token.rsplit_once('.').unwrap();
            let payload = signed.split_once('.').unwrap().1;
            let mut tag = [0u8; 64];
            let tag_len = URL_SAFE_NO_PAD.decode_slice(signature, &mut tag).unwrap();
            aws_lc_rs::hmac::verify(&key, signed.as_bytes(), &tag[..tag_len]).unwrap();
            let mut json = [0u8; 1024];
            let json_len = URL_SAFE_NO_PAD.decode_slice(payload, &mut json).unwrap();
            serde_json::from_slice::<Claims>(&json[..json_len]).unwrap()
        };
        once();
        measured(n, once);
    }

    /// A cache hit: the token's SHA-256 (the key) and the look-up in a quick_cache of
    /// the same kind `VerifiedCache` keeps, with the token's entry in it.
    pub fn cache_hit(token: &str, n: usize) {
        let cache = quick_cache::sync::Cache::<[u8; 32], (std::sync::Arc<Claims>, ())>::new(10_000);
        let digest = |t: &str| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
            <[u8; 32]>::try_from(d.as_ref()).unwrap()
        };
        cache.insert(digest(token), (std::sync::Arc::new(Claims::default()), ()));
        measured(n, || cache.get(&digest(token)).unwrap());
    }
}

criterion_group!(benches, bench);

/// huskarl and ours in alternating rounds (criterion measures one case after the
/// other, and this machine's load moves between them): per algorithm, 41 rounds of
/// 50 checks each, the median of huskarl's time over ours, and the quartiles.
fn huskarl_interleaved() {
    for case in cases().iter().filter(|c| c.huskarl.is_some()) {
        huskarl_check(case);
        headers_check(case);
        assert_both_refuse_a_forgery(case);
        let mut ratios = Vec::new();
        for _ in 0..41 {
            let time = |f: &dyn Fn()| {
                let start = std::time::Instant::now();
                for _ in 0..50 {
                    f();
                }
                start.elapsed().as_secs_f64()
            };
            let ours = time(&|| {
                std::hint::black_box(headers_check(std::hint::black_box(case)));
            });
            let theirs = time(&|| {
                std::hint::black_box(huskarl_check(std::hint::black_box(case)));
            });
            ratios.push(theirs / ours);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "huskarl_interleaved {}: huskarl / ours {:.3}x (median of 41 rounds; quartiles {:.3}x and {:.3}x)",
            case.name, ratios[20], ratios[10], ratios[30]
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var("SERVER_CALLGRIND") {
        let (case, n) = spec.rsplit_once(':').expect("SERVER_CALLGRIND=<case>:<n>");
        callgrind(case, n.parse().expect("a number of iterations"));
        return;
    }
    // `cargo bench --bench server -- huskarl_interleaved`: that part alone.
    if std::env::args().any(|a| a == "huskarl_interleaved") {
        huskarl_interleaved();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
