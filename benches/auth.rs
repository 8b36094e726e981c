//! Per-request cost of authentication: JWT verification (HS256, RS256 cold and cached, ES256)
//! and an API-key lookup among 10,000 keys. Run with `cargo bench --bench auth`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header};
use std::sync::Arc;
use ultra_gateway::auth::api_key::{sha256, ApiKey, ApiKeys};
use ultra_gateway::auth::jwt::{JwtSettings, JwtVerifier};
use ultra_gateway::auth::keys::{from_pem, VerifyKey};

const SECRET: &str = "benchmark-hmac-secret-0123456789abcdef";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn verifier(algorithms: Vec<Algorithm>, keys: Vec<VerifyKey>, cache_entries: usize) -> JwtVerifier {
    JwtVerifier::new(JwtSettings {
        algorithms,
        keys: keys.into_iter().map(Arc::new).collect(),
        jwks_url: None,
        issuer: vec!["https://idp.bench".into()],
        audience: vec!["ultra".into()],
        leeway: 30,
        subject_claim: "sub".into(),
        roles_claim: "roles".into(),
        cache_entries,
    })
}

fn token(alg: Algorithm, key: &EncodingKey, n: u64) -> String {
    let now = ultra_gateway::time::unix_now();
    let claims = serde_json::json!({
        "sub": format!("user-{n}"), "roles": ["user"], "iss": "https://idp.bench", "aud": "ultra",
        "exp": now + 3600, "iat": now,
    });
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let hs = verifier(
        vec![Algorithm::HS256],
        vec![VerifyKey::configured(
            AlgorithmFamily::Hmac,
            DecodingKey::from_secret(SECRET.as_bytes()),
        )],
        10_000,
    );
    let hs_token = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        0,
    );
    c.bench_function("jwt_verify_hs256_cached", |b| {
        b.iter(|| rt.block_on(hs.verify(black_box(&hs_token))).unwrap())
    });
    let hs_cold = verifier(
        vec![Algorithm::HS256],
        vec![VerifyKey::configured(
            AlgorithmFamily::Hmac,
            DecodingKey::from_secret(SECRET.as_bytes()),
        )],
        1,
    );
    let hs_tokens: Vec<String> = (0..256)
        .map(|n| {
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                n,
            )
        })
        .collect();
    let mut i = 0;
    c.bench_function("jwt_verify_hs256_cold", |b| {
        b.iter(|| {
            i = (i + 1) % hs_tokens.len();
            rt.block_on(hs_cold.verify(black_box(&hs_tokens[i])))
                .unwrap()
        })
    });

    let rsa_enc = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap();
    let rsa_key = from_pem(&fixture("rsa_public.pem")).unwrap();
    // Cold: a tiny cache and many distinct tokens, so each call checks a signature.
    let rs_cold = verifier(vec![Algorithm::RS256], vec![rsa_key.clone()], 1);
    let rs_tokens: Vec<String> = (0..256)
        .map(|n| token(Algorithm::RS256, &rsa_enc, n))
        .collect();
    let mut i = 0;
    c.bench_function("jwt_verify_rs256_cold", |b| {
        b.iter(|| {
            i = (i + 1) % rs_tokens.len();
            rt.block_on(rs_cold.verify(black_box(&rs_tokens[i])))
                .unwrap()
        })
    });
    let rs_cached = verifier(vec![Algorithm::RS256], vec![rsa_key], 10_000);
    rt.block_on(rs_cached.verify(&rs_tokens[0])).unwrap();
    c.bench_function("jwt_verify_rs256_cached", |b| {
        b.iter(|| {
            rt.block_on(rs_cached.verify(black_box(&rs_tokens[0])))
                .unwrap()
        })
    });

    let ec_enc = EncodingKey::from_ec_pem(&fixture("ec_private.pem")).unwrap();
    let es_cold = verifier(
        vec![Algorithm::ES256],
        vec![from_pem(&fixture("ec_public.pem")).unwrap()],
        1,
    );
    let es_tokens: Vec<String> = (0..256)
        .map(|n| token(Algorithm::ES256, &ec_enc, n))
        .collect();
    let mut j = 0;
    c.bench_function("jwt_verify_es256_cold", |b| {
        b.iter(|| {
            j = (j + 1) % es_tokens.len();
            rt.block_on(es_cold.verify(black_box(&es_tokens[j])))
                .unwrap()
        })
    });

    for n in [10usize, 10_000] {
        let keys = ApiKeys::new((0..n).map(|k| ApiKey {
            roles: 1,
            ..ApiKey::new(
                &format!("k{k}"),
                sha256(format!("uk_bench_key_{k}").as_bytes()),
            )
        }));
        let present = format!("uk_bench_key_{}", n / 2);
        c.bench_function(&format!("api_key_lookup_{n}_keys"), |b| {
            b.iter(|| keys.check(black_box(&present), 0).unwrap().roles)
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
