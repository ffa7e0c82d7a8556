//! Memory per stored record: 1,000,000 completed records of a 200-byte response in the
//! embedded store, and the resident bytes each costs beyond its response.
//!
//! `cargo bench -p idem-examples --bench memory`; the result is printed and written to
//! `target/bench/memory.md`.
#![forbid(unsafe_code)]

use std::time::Duration;

use idem_core::{Begin, Engine, Fingerprint, MokaStore, Policy, Response, StoreKey};

const RECORDS: u32 = 1_000_000;
const RESPONSE: usize = 200;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks for the benchmark names: there are none here.
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let store = MokaStore::builder().max_bytes(u64::MAX).build();
    let engine = Engine::new(store.clone());
    let policy = Policy::DEFAULT;
    let fp = Fingerprint::new("POST", "/v1/calls", "", b"{}");
    let body = [b'x'; RESPONSE];
    let before = resident_bytes();
    rt.block_on(async {
        for i in 0..RECORDS {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let Ok(Begin::Execute(lease)) =
                engine.begin(&policy, StoreKey::from_bytes(key), fp).await
            else {
                panic!("new key");
            };
            let response = Response::new(201, [("content-type", &b"application/json"[..])], &body);
            lease.finish(response).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let entries = rt.block_on(store.entry_count());
    let after = resident_bytes();
    let response_bytes = RESPONSE + "content-type".len() + "application/json".len();
    let per_record = (after.saturating_sub(before)) as f64 / f64::from(RECORDS);
    let overhead = per_record - response_bytes as f64;
    let table = format!(
        "| records | response bytes each | resident bytes per record | beyond the response | target |\n\
         |---|---|---|---|---|\n\
         | {entries} | {response_bytes} | {per_record:.0} | {overhead:.0} | <= 512 |\n"
    );
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("memory.md"), table);
}
