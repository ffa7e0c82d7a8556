//! Cost of a request's fingerprint in each form, per KiB of body: bytes (the default), JSON
//! (parsed, members sorted, numbers and strings read), JSON less ignored members, and form
//! pairs; and what a JSON fingerprint adds to a keyed request through the layer, against the
//! default on the same body.
//!
//! `cargo bench -p idem-examples --bench fingerprint`; the cost per KiB of each form is
//! printed and written to `target/bench/fingerprint.md`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use actix_web::dev::Service;
use actix_web::{test, web, App, HttpResponse};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use idem_actix::{idempotent, IdempotencyConfig, MokaStore};
use idem_core::{Body, Fingerprint, JsonBody};

/// Body sizes, in KiB.
const SIZES: [usize; 3] = [1, 16, 256];

/// Members left out in the "json ignoring" case.
const IGNORE: &[&str] = &["/sent_at", "/items/0/meta/trace_id"];

/// A JSON body of about `kib` KiB: an order of items, as APIs send them.
fn json_body(kib: usize) -> Vec<u8> {
    let mut items = String::new();
    let mut i = 0;
    while items.len() < kib * 1024 {
        if i > 0 {
            items.push(',');
        }
        write!(
            items,
            r#"{{"sku":"sku_{i:06}","name":"Item number {i}, in \"blue\"","quantity":{q},"price":{p}.50,"tags":["a","b"],"meta":{{"trace_id":"t{i}","added_at":"2024-05-01T10:00:00Z"}}}}"#,
            q = i % 7 + 1,
            p = i % 100,
        )
        .unwrap();
        i += 1;
    }
    format!(r#"{{"customer":"cus_42","sent_at":"2024-05-01T10:00:00Z","items":[{items}]}}"#)
        .into_bytes()
}

/// A form body of about `kib` KiB.
fn form_body(kib: usize) -> Vec<u8> {
    let mut body = String::from("customer=cus_42");
    let mut i = 0;
    while body.len() < kib * 1024 {
        write!(
            body,
            "&item_{i}=Item+number+{i}%2C+blue&qty_{i}={}",
            i % 7 + 1
        )
        .unwrap();
        i += 1;
    }
    body.into_bytes()
}

type NoHeaders = [(&'static str, [&'static [u8]; 0]); 0];

fn bytes(body: &[u8]) -> Fingerprint {
    Fingerprint::new("POST", "/v1/orders", "a=1&b=2", body)
}

fn json(body: &[u8], ignore: &[&str]) -> Fingerprint {
    let parsed = JsonBody::parse(body).expect("JSON");
    let body = Body::Json {
        body: &parsed,
        ignore,
    };
    Fingerprint::canonical("POST", "/v1/orders", "a=1&b=2", body, NoHeaders::default())
}

fn form(body: &[u8]) -> Fingerprint {
    Fingerprint::canonical(
        "POST",
        "/v1/orders",
        "a=1&b=2",
        Body::Form(body),
        NoHeaders::default(),
    )
}

/// The forms measured: a name, and the body it reads.
const FORMS: [(&str, bool); 4] = [
    ("bytes", true),
    ("json", true),
    ("json ignoring", true),
    ("form", false),
];

fn fingerprint(body: &[u8], form_name: &str) -> Fingerprint {
    match form_name {
        "bytes" => bytes(body),
        "json" => json(body, &[]),
        "json ignoring" => json(body, IGNORE),
        _ => form(body),
    }
}

fn forms(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for kib in SIZES {
        let (json_body, form_body) = (json_body(kib), form_body(kib));
        for (name, reads_json) in FORMS {
            let body = if reads_json { &json_body } else { &form_body };
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(BenchmarkId::new(name, kib), body, |b, body| {
                b.iter(|| fingerprint(black_box(body), name))
            });
        }
    }
    group.finish();
}

#[idempotent]
async fn as_bytes() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent(fingerprint = "json")]
async fn as_json() -> HttpResponse {
    HttpResponse::Created().finish()
}

/// A keyed request with a new key, through the layer on the embedded store: what the JSON
/// form adds to one, against the default, on the same 1 KiB body.
fn layer(c: &mut Criterion) {
    let rt = actix_web::rt::System::new();
    let app = rt.block_on(test::init_service(
        App::new()
            .app_data(IdempotencyConfig::new(MokaStore::new()))
            .route("/bytes", web::post().to(as_bytes))
            .route("/json", web::post().to(as_json)),
    ));
    let body = json_body(1);
    let mut next = 0_u64;
    let mut group = c.benchmark_group("request");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for path in ["/bytes", "/json"] {
        group.bench_function(format!("new key, 1 KiB, {}", &path[1..]), |b| {
            b.iter_custom(|n| {
                let requests: Vec<_> = (0..n)
                    .map(|_| {
                        next += 1;
                        test::TestRequest::post()
                            .uri(path)
                            .insert_header(("Authorization", "Bearer t"))
                            .insert_header(("Idempotency-Key", format!("k{next}")))
                            .set_payload(body.clone())
                            .to_request()
                    })
                    .collect();
                rt.block_on(async {
                    let start = Instant::now();
                    for req in requests {
                        let res = app.call(req).await.expect("answer");
                        assert_eq!(res.status(), 201);
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// The cost per KiB of each form, from criterion's estimates of this run.
fn summary() {
    let dir = idem_examples::bench::criterion_dir();
    let estimate = |group: &str, id: &str| -> Option<f64> {
        let path = dir.join(group).join(id).join("new/estimates.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    let mut table = String::from("| form | ");
    for kib in SIZES {
        write!(table, "{kib} KiB body | ").unwrap();
    }
    table.push_str("\n|---|");
    table.push_str(&"---|".repeat(SIZES.len()));
    table.push('\n');
    for (name, reads_json) in FORMS {
        write!(table, "| {name} |").unwrap();
        for kib in SIZES {
            let len = if reads_json {
                json_body(kib).len()
            } else {
                form_body(kib).len()
            };
            match estimate("fingerprint", &format!("{name}/{kib}")) {
                Some(ns) => write!(
                    table,
                    " {:.2} us ({:.0} ns/KiB) |",
                    ns / 1000.0,
                    ns / (len as f64 / 1024.0)
                )
                .unwrap(),
                None => table.push_str(" |"),
            }
        }
        table.push('\n');
    }
    if let (Some(b), Some(j)) = (
        estimate("request", "new key, 1 KiB, bytes"),
        estimate("request", "new key, 1 KiB, json"),
    ) {
        write!(
            table,
            "\nA keyed request with a new key and a 1 KiB JSON body, through the layer: {:.2} us with the default fingerprint, {:.2} us with `fingerprint = \"json\"` ({:+.2} us).\n",
            b / 1000.0,
            j / 1000.0,
            (j - b) / 1000.0
        )
        .unwrap();
    }
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("fingerprint.md"), table);
}

criterion_group!(benches, forms, layer);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
