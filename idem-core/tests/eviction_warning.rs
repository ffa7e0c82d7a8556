//! A store too small for its traffic says so in the log: once when it starts evicting records
//! before their time to live, not once per eviction. Alone in its test binary, so that the
//! subscriber it installs sees every event of the process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use idem_core::store::RECORD_OVERHEAD;
use idem_core::{Begin, Engine, Fingerprint, MokaStore, Policy, Response, StoreKey};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Counts the warnings logged.
#[derive(Clone, Default)]
struct Warnings(Arc<AtomicU64>);

impl Subscriber for Warnings {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test]
async fn a_store_evicting_on_every_write_warns_once_not_per_eviction() {
    let warnings = Warnings::default();
    tracing::subscriber::set_global_default(warnings.clone()).expect("the only subscriber");
    let body = [b'x'; 64];
    let weight = RECORD_OVERHEAD + Response::new(201, [], &body).held_bytes();
    let store = MokaStore::builder().max_bytes(40 * weight as u64).build();
    let engine = Engine::new(store.clone());
    let fingerprint = Fingerprint::new("POST", "/v1/calls", "", b"{}");
    for i in 0u32..2_000 {
        let mut key = [0; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        let Ok(Begin::Execute(lease)) = engine
            .begin(&Policy::DEFAULT, StoreKey::from_bytes(key), fingerprint)
            .await
        else {
            panic!("key {i} is new");
        };
        lease.finish(Response::new(201, [], &body)).await.unwrap();
    }
    assert!(store.evicted() > 1_000, "{} evicted", store.evicted());
    assert_eq!(warnings.0.load(Ordering::SeqCst), 1);
}
