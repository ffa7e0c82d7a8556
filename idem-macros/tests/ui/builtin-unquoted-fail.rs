extern crate idem as idem_actix;

use idem_actix::idempotent;

// A built-in value written without quotes reads as a function's name; the attribute says
// which was meant, where rustc would only say that no such value is in scope.
#[idempotent(scope = api_key)]
async fn scoped() -> &'static str {
    "created"
}

#[idempotent(fingerprint = json)]
async fn fingerprinted() -> &'static str {
    "created"
}

// A function of that name is still reached through its path.
fn global(_: &actix_web::HttpRequest) -> Option<String> {
    None
}

#[idempotent(scope = self::global)]
async fn own_function() -> &'static str {
    "created"
}

fn main() {}
