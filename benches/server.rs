//! Server-side validation costs, group `server_validation`, all in one run so the
//! ratios are meaningful:
//!
//! - per algorithm (HS256, RS256, ES256, EdDSA): a request through
//!   `RequireBearer<JwtValidator>` vs a raw `jsonwebtoken::decode` of the same token
//!   (with the backend this build selected: aws-lc-rs, or RustCrypto under
//!   `--cfg tower_bearer_rust_crypto`) vs `jwt-authorizer`'s check (`check_auth`: its
//!   jsonwebtoken 9 on ring);
//! - a repeated RS256 token through `VerifiedCache` vs RS256 verification;
//! - `Authorization` header parsing alone.
//!
//! `cargo bench --bench server --features jwt`
//!
//! Instruction counts instead of times (steady on a loaded machine): with
//! `SERVER_CALLGRIND=<case>:<n>` the binary runs one case `n` times inside
//! `measured`, and nothing else, for
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*'`;
//! instructions per iteration are the collected total over `n`. Cases: the names
//! above (`raw_decode/HS256`, `layer/HS256`, `jwt_authorizer/HS256`, …, `jwt_verify/RS256`,
//! `verified_cache_hit/RS256`, `header_parse`).

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{header::AUTHORIZATION, HeaderMap, HeaderValue, Request, Response};
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
        },
    ]
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
        "raw_decode" | "layer" | "jwt_verify" | "jwt_authorizer" => {
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

criterion_group!(benches, bench);

fn main() {
    if let Ok(spec) = std::env::var("SERVER_CALLGRIND") {
        let (case, n) = spec.rsplit_once(':').expect("SERVER_CALLGRIND=<case>:<n>");
        callgrind(case, n.parse().expect("a number of iterations"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
