//! The README's transactional handler: a charge and the record of its answer commit together.
use actix_web::{post, web, App, HttpResponse, HttpServer};
use idem_actix::{idempotent, IdempotencyConfig, PostgresStore, Transaction};
use serde::Deserialize;

#[derive(Deserialize)]
struct NewCharge {
    amount: i64,
}

#[post("/v1/charges")]
#[idempotent(required, ttl = "24h")]
async fn charge(
    mut tx: Transaction,
    body: web::Json<NewCharge>,
) -> Result<HttpResponse, actix_web::Error> {
    // Written in the transaction that records this key: the charge and the answer below
    // commit together, or neither does (a 5xx, answered or as an error, or a panic rolls
    // both back; an error of status 4xx is recorded, and commits them).
    let id: i64 = sqlx::query_scalar("INSERT INTO charges (amount) VALUES ($1) RETURNING id")
        .bind(body.amount)
        .fetch_one(&mut *tx)
        .await
        .map_err(actix_web::error::ErrorServiceUnavailable)?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "id": id })))
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = PostgresStore::new("postgres://app@127.0.0.1/app")?;
    store.migrate().await?; // the records' table
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS charges (id bigserial PRIMARY KEY, amount bigint)")
        .execute(store.pool())
        .await?;
    // Handlers here take a Transaction: a store that lends none fails start-up, not requests.
    let idem = IdempotencyConfig::new(store).require_transactions()?;
    HttpServer::new(move || App::new().app_data(idem.clone()).service(charge))
        .bind(("127.0.0.1", 8080))?
        .run()
        .await?;
    Ok(())
}
