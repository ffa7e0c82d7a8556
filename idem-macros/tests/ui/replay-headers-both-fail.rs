use idem_macros::idempotent;

#[idempotent(replay_headers = ["Location"], replay_drop_headers = ["X-Trace-Id"])]
async fn handler() {}

fn main() {}
