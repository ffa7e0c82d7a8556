use idem_macros::idempotent;

// A flag takes no string: a cookie is replayed or not, for every response of the endpoint.
#[idempotent(replay_set_cookie = "session")]
async fn handler() {}

fn main() {}
