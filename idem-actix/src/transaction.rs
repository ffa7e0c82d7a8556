//! The handler's share of its key's Postgres transaction: the [`Transaction`] extractor, lent
//! by the layer for the handler's run, and the commit of the record with the handler's writes.
//!
//! The layer lends a keyed run a [`Loan`]; the extractor opens the claim's transaction on it
//! when the handler asks, and the [`Transaction`] comes back to the loan when the handler
//! drops it. After the run, the layer [closes](Loan::close) the loan: a transaction that came
//! back is committed with the record (or rolled back), and nothing else changes for a handler
//! that took none.

#[cfg(not(feature = "postgres"))]
pub(crate) use self::disabled::handlers_fault;
#[cfg(not(feature = "postgres"))]
pub(crate) use self::disabled::{Loan, Offer};
#[cfg(feature = "postgres")]
pub use self::enabled::Transaction;
#[cfg(feature = "postgres")]
pub(crate) use self::enabled::{handlers_fault, Loan, Offer};

#[cfg(feature = "postgres")]
mod enabled {
    use std::cell::Cell;
    use std::future::{ready, Future};
    use std::ops::{Deref, DerefMut};
    use std::pin::Pin;
    use std::rc::Rc;

    use actix_web::dev::Payload;
    use actix_web::error::InternalError;
    use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse};
    use idem_core::store::{ClaimTransaction, TransactionEnded};
    use idem_core::{ErrorFormat, IdempotencyError, Lease, Outcome, Policy, Response, StoreError};
    use sqlx::PgConnection;

    use crate::config::IdempotencyConfig;
    use crate::extract::NoIdempotencyKey;
    use crate::outage::warn_when_due;
    use crate::render::error_response;
    use crate::request_id::RequestId;

    /// Postgres's `in_failed_sql_transaction`: a statement of the transaction failed before.
    const IN_FAILED_TRANSACTION: &str = "25P02";

    /// Postgres's `serialization_failure`: at REPEATABLE READ or SERIALIZABLE, a row changed
    /// since the transaction's snapshot (its claim's, by a renewal).
    const SERIALIZATION_FAILURE: &str = "40001";

    /// Postgres's `insufficient_privilege`: a role without the right (one the handler
    /// switched to, writing the record).
    const INSUFFICIENT_PRIVILEGE: &str = "42501";

    /// Postgres's `read_only_sql_transaction`: a server that takes no writes, or a
    /// transaction made read-only.
    const READ_ONLY_TRANSACTION: &str = "25006";

    /// The transaction in which this request's idempotency record will be written: do the
    /// operation's writes in it, and they commit together with the record, or not at all.
    ///
    /// Take it as an extractor in an `#[idempotent]` handler, or in a handler under the
    /// [`Idempotency`](crate::Idempotency) middleware, on an app whose
    /// [`IdempotencyConfig`] was built on a [`PostgresStore`](crate::PostgresStore). It dereferences to the open
    /// transaction's [`PgConnection`]: run your statements on `&mut *tx`.
    ///
    /// ```no_run
    /// use actix_web::{post, HttpResponse};
    /// use idem_actix::{idempotent, Transaction};
    ///
    /// #[post("/v1/charges")]
    /// #[idempotent(required)]
    /// async fn charge(mut tx: Transaction) -> Result<HttpResponse, actix_web::Error> {
    ///     sqlx::query("INSERT INTO charges (amount) VALUES (100)")
    ///         .execute(&mut *tx)
    ///         .await
    ///         .map_err(actix_web::error::ErrorServiceUnavailable)?;
    ///     // The charge and the record of this answer commit together.
    ///     Ok(HttpResponse::Created().finish())
    /// }
    /// ```
    ///
    /// What becomes of the writes:
    /// - The handler answers a response the endpoint records (every status but 5xx, or 2xx
    ///   only under `cache = "2xx"`): the layer writes the record in this transaction, last,
    ///   and commits. Retries replay the answer; the writes are there. The status decides,
    ///   whether the handler returned a response or an error: an `Err` of status 4xx after
    ///   writing commits the writes with the record of that 4xx (under `cache = "2xx"` it
    ///   rolls them back).
    /// - It answers one the endpoint does not record (a 5xx, as a response or an error), or
    ///   panics: the transaction is rolled back and the key released, so a retry runs again.
    ///   A process that dies meanwhile leaves nothing either: Postgres aborts the transaction
    ///   of a connection that closed.
    /// - The commit fails: the key is released, and the client gets 503
    ///   `idempotency_store_unavailable` with `Retry-After` instead of the handler's answer.
    ///   Nothing is written, unless only the commit's answer was lost (the connection broke
    ///   during `COMMIT`, or it outlasted the store's command timeout) and the commit landed:
    ///   then the writes and the record are both there, and the retry replays the handler's
    ///   answer. If the key's lease lapsed and another request holds it now, nothing is
    ///   written, and the client gets 409 `idempotency_conflict`: that request runs it. If
    ///   it lapsed and nobody holds it (the store's purge deleted the claim, unrenewed
    ///   through an outage longer than the lease), nothing is written either, and the
    ///   client gets 503 `idempotency_store_unavailable` with `Retry-After`: its retry runs.
    /// - A statement of the handler failed (which aborts a Postgres transaction) and the
    ///   handler answered an error status anyway: nothing is written, and its answer goes out
    ///   unrecorded. If it answered a success regardless, the client gets 500
    ///   `idempotency_transaction_unavailable` instead, and the log says why: nothing it
    ///   claimed to do was written.
    /// - The handler ended the transaction itself (`COMMIT` or `ROLLBACK` on its connection,
    ///   perhaps with a `BEGIN` of its own after): the record cannot commit with its writes.
    ///   Nothing is recorded, what is still open is rolled back, the key is released, and the
    ///   client gets 500 `idempotency_transaction_unavailable`; the log says why. What the
    ///   handler committed itself stands, so a retry runs again: do not end it yourself.
    ///
    /// A duplicate that comes while the handler runs gets 409 with `Retry-After` at once (or
    /// waits, under `in_flight = "wait"`): the claim is committed before the handler runs, and
    /// the transaction holds no lock on it.
    ///
    /// The transaction is opened when the handler takes it (one `BEGIN`, on a connection of
    /// the store's pool that it holds until the commit); handlers that do not take one cost
    /// nothing more. Keep it within the handler: do not send it to another task, and do not
    /// end it yourself (`COMMIT`, `ROLLBACK`; see above).
    ///
    /// # On an app whose store lends none
    /// Only a [`PostgresStore`](crate::PostgresStore) given to [`IdempotencyConfig::new`]
    /// lends transactions. No compile error can say that an app's store lends none (actix-web
    /// looks an app's data up per request, and an extractor of the app's own may take a
    /// `Transaction` only on some requests), and actix-web registers a route without running
    /// anything of its handler's before its first request, so no start-up check can find the
    /// handlers that take one either. An app whose handlers take one checks its settings
    /// where it builds them, with [`IdempotencyConfig::require_transactions`], which fails
    /// start-up with [`PolicyError::NoTransactions`](crate::PolicyError::NoTransactions):
    ///
    /// ```no_run
    /// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    /// use idem_actix::{IdempotencyConfig, PostgresStore};
    ///
    /// let store = PostgresStore::new("postgres://app@127.0.0.1:5432/app")?;
    /// let idem = IdempotencyConfig::new(store).require_transactions()?;
    /// # let _ = idem; Ok(()) }
    /// ```
    ///
    /// A handler that takes one where none can be lent still does not run: it answers 500
    /// `idempotency_transaction_unavailable`, and the log says why.
    ///
    /// # Errors
    /// The extractor answers, without running the handler, in the endpoint's error format
    /// (or the app's [renderer](IdempotencyConfig::with_error_renderer)):
    /// - 400 `idempotency_key_missing` when the request has no key, so there is no record to
    ///   commit with: make the endpoint `required`;
    /// - 503 `idempotency_store_unavailable` with `Retry-After` when the transaction cannot be
    ///   opened, or the store failed and the endpoint runs unprotected (`fail_open`);
    /// - 500 `idempotency_transaction_unavailable`
    ///   ([`codes::TRANSACTION_UNAVAILABLE`](crate::codes::TRANSACTION_UNAVAILABLE)), with
    ///   `Cache-Control: no-store`, logged with the reason, when the app's store is not a
    ///   [`PostgresStore`](crate::PostgresStore) given to [`IdempotencyConfig::new`] (or the
    ///   app registered no [`IdempotencyConfig`]), when the handler is under no idempotency
    ///   layer, when the layer that claimed its key uses another [`IdempotencyConfig`] (an
    ///   [`Idempotency`](crate::Idempotency) middleware reads its app's before routing, not a
    ///   scope's inside it), when it takes two transactions (or takes one after its run, from
    ///   a request it kept), or (after its run) when it kept its transaction beyond its run,
    ///   or answered a success over a statement of it that failed: nothing is then committed,
    ///   and the key is released;
    /// - 500 `idempotency_layer_missing` when the request carries a key on a method that the
    ///   [`Idempotency`](crate::Idempotency) middleware around the handler leaves alone (see
    ///   `Idempotency::with_methods`).
    pub struct Transaction {
        tx: Option<ClaimTransaction>,
        loan: Rc<Lent>,
    }

    impl std::fmt::Debug for Transaction {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Transaction")
                .field("key", &self.loan.key)
                .finish_non_exhaustive()
        }
    }

    impl Transaction {
        /// The open transaction's connection: the operation's writes go here.
        pub fn connection(&mut self) -> &mut PgConnection {
            self
        }
    }

    impl Deref for Transaction {
        type Target = PgConnection;

        fn deref(&self) -> &PgConnection {
            self.tx
                .as_ref()
                .expect("a transaction is held until it is dropped")
        }
    }

    impl DerefMut for Transaction {
        fn deref_mut(&mut self) -> &mut PgConnection {
            self.tx
                .as_mut()
                .expect("a transaction is held until it is dropped")
        }
    }

    impl Drop for Transaction {
        fn drop(&mut self) {
            if let Some(tx) = self.tx.take() {
                self.loan.give_back(tx);
            }
        }
    }

    impl FromRequest for Transaction {
        type Error = actix_web::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

        fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
            let loan = req
                .extensions()
                .get::<Loan>()
                .map(|loan| Rc::clone(&loan.0));
            match loan {
                Some(loan) => Box::pin(loan.open(RequestId::of(req))),
                None => Box::pin(ready(Err(unlent(req)))),
            }
        }
    }

    /// The extractor's answer on a request the layer lent no transaction, in the endpoint's
    /// error format (under a layer), or the app's.
    fn unlent(req: &HttpRequest) -> actix_web::Error {
        let config = IdempotencyConfig::of(req);
        let request_id = RequestId::of(req);
        let layered = crate::handler::taken(req);
        let format = crate::handler::admitted_format(req);
        // The layer's store, not the handler's scope's, lends the transaction.
        let lends = crate::handler::admitted_lends(req);
        let rendered = |error: IdempotencyError| {
            let res = error_response(&error, &request_id, format, config.renderer());
            InternalError::from_response(error, res).into()
        };
        if layered && crate::handler::unprotected(req) && lends {
            // Every request of the outage is refused so: warned of as it starts, as the
            // outage is (see `Outage`).
            let message = "the idempotency store failed and the endpoint fails open: no transaction to lend its handler";
            warn_when_due!(config.outage().unlent, message, %request_id);
            let error = StoreError::Unavailable(
                "no claim, so no transaction, while the store fails".into(),
            );
            return rendered(IdempotencyError::StoreUnavailable(error));
        }
        let reason = if layered && !lends && config.transactions().is_some() {
            // The handler's scope is on a Postgres store, but the layer claims on another.
            "a handler takes a Transaction, but the idempotency layer that claimed its key uses another IdempotencyConfig, whose store is not Postgres (an Idempotency middleware reads its app's settings before routing, so not those a scope inside it registers): give the middleware the IdempotencyConfig of the PostgresStore, registered on the app or on the scope it wraps"
        } else if layered && !IdempotencyConfig::registered(req) {
            "a handler takes a Transaction, but its app registered no IdempotencyConfig, so the embedded store serves it: register IdempotencyConfig::new(PostgresStore) with App::app_data"
        } else if layered {
            "a handler takes a Transaction, but the app's idempotency store is not Postgres: build its IdempotencyConfig with IdempotencyConfig::new(PostgresStore), and check it at start-up with require_transactions"
        } else {
            // Not claimed: passed on by a layer for want of its endpoint's key (which answers
            // for the endpoint, see `Endpoint::keyless`), or under no layer (logged).
            let missing = NoIdempotencyKey::of(req, "a Transaction");
            return match missing.unserved() {
                true => Unclaimed(missing).into(),
                false => missing.into(),
            };
        };
        // A fault of the server's, the same for every request to the route: named once.
        if config.outage().unlendable.first(crate::extract::route(req)) {
            tracing::error!(%request_id, "{reason}");
        } else {
            tracing::debug!(%request_id, "{reason}");
        }
        rendered(IdempotencyError::TransactionUnavailable { reason })
    }

    /// The 500 of a Transaction a run cannot have (a handler's fault, met at run time), with
    /// `reason` in the log.
    fn unavailable(request_id: &RequestId, reason: &'static str) -> IdempotencyError {
        tracing::error!(%request_id, "{reason}");
        IdempotencyError::TransactionUnavailable { reason }
    }

    /// A `Transaction` asked for on a request that carries the application's key header, to a
    /// handler under no idempotency layer: a fault of the server's, 500, logged when found.
    struct Unclaimed(NoIdempotencyKey);

    impl Unclaimed {
        const REASON: &'static str = "the handler is under no idempotency layer";
    }

    impl std::fmt::Debug for Unclaimed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Unclaimed").finish_non_exhaustive()
        }
    }

    impl std::fmt::Display for Unclaimed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(Self::REASON)
        }
    }

    impl actix_web::ResponseError for Unclaimed {
        fn status_code(&self) -> actix_web::http::StatusCode {
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR
        }

        fn error_response(&self) -> HttpResponse {
            let reason = Self::REASON;
            self.0
                .render(&IdempotencyError::TransactionUnavailable { reason }, None)
        }
    }

    /// What a keyed run needs to lend its handler a transaction: the app's settings, whose
    /// store is Postgres, and how the endpoint renders the layer's errors.
    pub(crate) struct Offer {
        config: IdempotencyConfig,
        format: Option<ErrorFormat>,
    }

    impl Offer {
        /// The offer of an app whose store can lend transactions.
        pub(crate) fn of(config: IdempotencyConfig, policy: &Policy) -> Option<Self> {
            config.transactions()?;
            Some(Self {
                config,
                format: policy.error_format,
            })
        }

        /// Lends `lease`'s transaction to the handler of `req`, for the extractor to open.
        pub(crate) fn lend(self, req: &HttpRequest, lease: &Lease) -> Loan {
            let lent = Rc::new(Lent {
                key: lease.key(),
                token: lease.token(),
                config: self.config,
                format: self.format,
                state: Cell::new(State::Idle),
            });
            req.extensions_mut().insert(Loan(Rc::clone(&lent)));
            Loan(lent)
        }
    }

    /// A run's transaction, lent to its handler.
    pub(crate) struct Loan(Rc<Lent>);

    struct Lent {
        key: idem_core::StoreKey,
        token: idem_core::Token,
        config: IdempotencyConfig,
        format: Option<ErrorFormat>,
        state: Cell<State>,
    }

    #[derive(Default)]
    enum State {
        /// Not taken (yet).
        #[default]
        Idle,
        /// The extractor is opening it.
        Opening,
        /// The handler holds it.
        Lent,
        /// The handler dropped it.
        Back(ClaimTransaction),
        /// The run is over: a transaction that comes back now is rolled back.
        Closed,
    }

    impl Lent {
        /// Opens the transaction for the extractor.
        async fn open(
            self: Rc<Self>,
            request_id: RequestId,
        ) -> Result<Transaction, actix_web::Error> {
            match self.state.replace(State::Opening) {
                State::Idle => {}
                State::Closed => {
                    self.state.set(State::Closed);
                    return Err(self.unavailable(
                        &request_id,
                        "a Transaction was taken after its handler's run (from a request kept beyond it); take it among the handler's arguments",
                    ));
                }
                other => {
                    self.state.set(other);
                    return Err(self.unavailable(
                        &request_id,
                        "a handler takes two Transactions; one request has one transaction: take it once",
                    ));
                }
            }
            // Dropped before it opens (another extractor of the handler failed first), the
            // extraction leaves the loan untaken, as if it never began.
            let opening = Opening(&self);
            let Some(store) = self.config.transactions() else {
                return Err(self.unavailable(&request_id, "the app's store lends no transactions"));
            };
            let opening_it = store.transaction(self.key, self.token);
            let opened = self
                .config
                .engine()
                .observe("transaction", opening_it)
                .await;
            match opened {
                Ok(tx) => {
                    std::mem::forget(opening);
                    if let State::Closed = self.state.replace(State::Lent) {
                        // The run ended while the transaction opened: it rolls back on drop.
                        self.state.set(State::Closed);
                        drop(tx);
                        return Err(self.unavailable(
                            &request_id,
                            "the run ended before its transaction opened",
                        ));
                    }
                    Ok(Transaction {
                        tx: Some(tx),
                        loan: self,
                    })
                }
                Err(error) => {
                    // Idle again, for another try; a closed loan stays closed.
                    drop(opening);
                    // An outage refuses every request so: warned of as it starts (see
                    // `Outage`), each refusal logged at `debug`.
                    let message = "opening the idempotency transaction failed; the request is refused with 503 and its handler does not run";
                    warn_when_due!(self.config.outage().refused, message, %request_id, %error);
                    let error = IdempotencyError::StoreUnavailable(error);
                    let res = self.error(&error, &request_id);
                    Err(InternalError::from_response(error, res).into())
                }
            }
        }

        /// Takes back the transaction the handler dropped; after the run, rolls it back.
        fn give_back(&self, tx: ClaimTransaction) {
            match self.state.take() {
                State::Lent => self.state.set(State::Back(tx)),
                // Its own drop rolls it back and releases the claim.
                other => {
                    self.state.set(other);
                    drop(tx);
                }
            }
        }

        fn error(&self, error: &IdempotencyError, request_id: &RequestId) -> HttpResponse {
            error_response(error, request_id, self.format, self.config.renderer())
        }

        /// The 500 of a transaction this loan cannot lend, with `reason` in the log.
        fn unavailable(&self, request_id: &RequestId, reason: &'static str) -> actix_web::Error {
            let error = unavailable(request_id, reason);
            let res = self.error(&error, request_id);
            InternalError::from_response(error, res).into()
        }

        /// The answer when the handler kept its transaction beyond its run.
        fn kept(&self, request_id: &RequestId) -> HttpResponse {
            let reason = "a handler kept its Transaction beyond its run (sent it to another task?), so its writes cannot be committed with the record; they roll back when it is dropped, and the key was released";
            self.error(&unavailable(request_id, reason), request_id)
        }
    }

    /// Resets a loan whose transaction did not open: it failed, or its extraction was dropped.
    struct Opening<'a>(&'a Lent);

    impl Drop for Opening<'_> {
        fn drop(&mut self) {
            // Taking leaves it idle; any other state stands.
            match self.0.state.take() {
                State::Opening => {}
                other => self.0.state.set(other),
            }
        }
    }

    impl Loan {
        /// Whether the handler took the transaction (or is taking it), whatever it did with
        /// it since.
        pub(crate) fn taken(&self) -> bool {
            let state = self.0.state.take();
            let idle = matches!(state, State::Idle);
            self.0.state.set(state);
            !idle
        }

        /// Ends the loan after the handler's run: what the handler took, if anything.
        pub(crate) fn close(self) -> Option<Taken> {
            match self.0.state.replace(State::Closed) {
                State::Idle => None,
                State::Back(tx) => Some(Taken::Back(tx, self)),
                State::Opening | State::Lent | State::Closed => Some(Taken::Kept(self)),
            }
        }
    }

    /// What a handler did with the transaction it took.
    pub(crate) enum Taken {
        /// It dropped it when it was done: commit or roll back.
        Back(ClaimTransaction, Loan),
        /// It still holds it somewhere (another task): nothing can be committed.
        Kept(Loan),
    }

    impl Taken {
        /// Commits the handler's writes with the record of `response` (or rolls them back,
        /// for a response the endpoint does not record): the outcome, and the answer to send,
        /// `res` unless nothing was committed of what it says.
        pub(crate) async fn finish(
            self,
            lease: Lease,
            response: Response,
            res: HttpResponse,
            request_id: &RequestId,
        ) -> (&'static str, HttpResponse) {
            let (tx, loan) = match self {
                Taken::Back(tx, loan) => (tx, loan),
                Taken::Kept(loan) => {
                    let outcome = crate::metrics::release_outcome(lease.release().await);
                    return (outcome, loan.0.kept(request_id));
                }
            };
            let status = response.status();
            // Each failure below repeats for every request alike while its cause lasts (a
            // handler's fault, Postgres failing): warned of when it starts (see `Outage`).
            let outage = loan.0.config.outage();
            let committing = Cell::new(false);
            let settled = lease
                .finish_with(response, |record| {
                    committing.set(record.is_some());
                    async move {
                        match record {
                            Some(record) => tx.commit(record).await,
                            None => tx.rollback().await,
                        }
                    }
                })
                .await;
            match settled {
                Ok(Outcome::Recorded) => ("executed", res),
                Ok(Outcome::Released) => ("released", res),
                Ok(Outcome::Lost) if committing.get() => {
                    tracing::warn!(status, "idempotency claim was lost before the commit; the handler's writes were rolled back, and the request that holds the key runs it");
                    // Answered as a request that finds its key running is, and counted so.
                    let error = IdempotencyError::InFlight;
                    crate::metrics::refused(&error);
                    ("lost", loan.0.error(&error, request_id))
                }
                Ok(Outcome::Lost) => ("lost", res),
                Err(error) if committing.get() && ended(&error) => {
                    let message = "the handler ended its Transaction itself (COMMIT or ROLLBACK) or reset its settings (RESET ALL): what it committed itself stands, apart from its idempotency record, which was not written, and the key was released, so a retry runs again; let the layer end the transaction, answering 500 instead";
                    warn_when_due!(outage.faulted, message, status);
                    let error = IdempotencyError::TransactionUnavailable {
                        reason: "the handler ended its Transaction itself (COMMIT or ROLLBACK) or reset its settings (RESET ALL), so its record could not commit with its writes; nothing was recorded, and the key was released",
                    };
                    ("released", loan.0.error(&error, request_id))
                }
                Err(error) if committing.get() && refused_at_commit(&error) => {
                    let message = "Postgres refused to commit the handler's transaction for a constraint checked at the commit (deferred) that its writes break; nothing was written, and the key was released";
                    warn_when_due!(outage.faulted, message, status, %error);
                    if status < 400 {
                        let error = IdempotencyError::TransactionUnavailable {
                            reason: "a constraint checked at the commit refused the handler's writes, so nothing it answered was committed",
                        };
                        return ("released", loan.0.error(&error, request_id));
                    }
                    ("released", res)
                }
                Err(error) if committing.get() && aborted(&error) => {
                    if status < 400 {
                        let message = "the handler answered a success, but a statement of its transaction failed, so nothing was committed; answering 500 instead";
                        warn_when_due!(outage.faulted, message, status, %error);
                        // The layer's own answer: its envelope and `Cache-Control: no-store`.
                        let error = IdempotencyError::TransactionUnavailable {
                            reason: "a statement of the handler's transaction failed, so nothing it answered was committed",
                        };
                        return ("released", loan.0.error(&error, request_id));
                    }
                    tracing::debug!(status, "a statement of the handler's transaction failed: nothing committed, its error answered unrecorded");
                    ("released", res)
                }
                Err(error)
                    if committing.get()
                        && code(&error).as_deref() == Some(SERIALIZATION_FAILURE) =>
                {
                    let message = "Postgres refused to commit the handler's transaction for a serialization failure; nothing was written. Either the transaction conflicted with another one (at SERIALIZABLE, through the records table too, whose index Postgres tracks by page, so that runs of keys on one page conflict where one reads what the other writes), or it runs at REPEATABLE READ or SERIALIZABLE and outlived a renewal of its claim (every third of the lease), which changed the record's row: then keep such runs within a third of the lease (a longer lease), or use READ COMMITTED, the default";
                    warn_when_due!(outage.uncommitted, message, status, %error);
                    let error = IdempotencyError::StoreUnavailable(error);
                    ("unrecorded", loan.0.error(&error, request_id))
                }
                Err(error) if committing.get() => {
                    let hint = match code(&error).as_deref() {
                        Some(INSUFFICIENT_PRIVILEGE) => "; if the handler switched role (SET LOCAL ROLE), it must switch back (RESET ROLE) before it returns: the record is written in its transaction, as the role it runs as",
                        Some(READ_ONLY_TRANSACTION) => "; if the handler made its transaction read-only (SET TRANSACTION READ ONLY), the record cannot be written in it: such an endpoint cannot take a Transaction",
                        _ => "",
                    };
                    let message = format!("committing the handler's writes with their idempotency record failed; nothing was written{hint}");
                    warn_when_due!(outage.uncommitted, message, status, %error);
                    let error = IdempotencyError::StoreUnavailable(error);
                    ("unrecorded", loan.0.error(&error, request_id))
                }
                Err(error) => {
                    let message = "rolling back the handler's transaction or releasing its claim failed; the claim lapses with its lease";
                    warn_when_due!(outage.uncommitted, message, status, %error);
                    ("unrecorded", res)
                }
            }
        }

        /// Rolls back the writes of a handler that failed (a panic, a body that broke), and
        /// releases the key: the outcome.
        pub(crate) async fn abandon(self, lease: Lease) -> &'static str {
            let Taken::Back(tx, _) = self else {
                return crate::metrics::release_outcome(lease.release().await);
            };
            crate::metrics::release_outcome(lease.release_with(tx.rollback()).await)
        }
    }

    /// Whether `error` is the commit's refusal of a transaction the handler ended itself.
    fn ended(error: &StoreError) -> bool {
        matches!(error, StoreError::Refused(source) if source.is::<TransactionEnded>())
    }

    /// Whether `error`, a commit's, is the handler's own doing: it ended its transaction
    /// itself, a statement of it failed, or its writes broke a constraint checked at the
    /// commit. Each is answered as the handler's fault, and none counts as the store's error.
    pub(crate) fn handlers_fault(error: &StoreError) -> bool {
        ended(error) || aborted(error) || refused_at_commit(error)
    }

    /// Whether `error` is a failed statement of the handler's: Postgres refuses every
    /// statement of a transaction after one failed.
    fn aborted(error: &StoreError) -> bool {
        code(error).as_deref() == Some(IN_FAILED_TRANSACTION)
    }

    /// Whether `error` is a commit Postgres refused for what the transaction wrote: a
    /// deferred constraint, or a deferred constraint trigger that failed, with an error of
    /// the data or of the code it ran rather than of the server (its resources, its
    /// connections, a serialization failure, which a retry may get past). The transaction is
    /// rolled back; a retry of the same request fails alike.
    fn refused_at_commit(error: &StoreError) -> bool {
        code(error).is_some_and(|code| REFUSED_AT_COMMIT.iter().any(|c| code.starts_with(c)))
    }

    /// The SQLSTATE classes of errors a transaction's own writes raise at its commit, through
    /// deferred constraints and constraint triggers: triggered action (09), data (22, as a
    /// division by zero), integrity constraint (23), triggered data change (27), SQL routine
    /// (2F), external routine (38, 39), and PL/pgSQL's (P0: `RAISE`, `ASSERT`, ...).
    const REFUSED_AT_COMMIT: [&str; 8] = ["09", "22", "23", "27", "2F", "38", "39", "P0"];

    /// The SQLSTATE of a database's error, if `error` is one.
    fn code(error: &StoreError) -> Option<String> {
        let (StoreError::Refused(source) | StoreError::Unavailable(source)) = error else {
            return None;
        };
        let error = source.downcast_ref::<sqlx::Error>()?.as_database_error()?;
        Some(error.code()?.into_owned())
    }
}

/// Stand-ins without the `postgres` feature: no store lends a transaction, and none of these
/// can be made.
#[cfg(not(feature = "postgres"))]
mod disabled {
    use actix_web::{HttpRequest, HttpResponse};
    use idem_core::{Lease, Policy, Response, StoreError};

    use crate::config::IdempotencyConfig;
    use crate::request_id::RequestId;

    /// No store lends a transaction, so no error is a handler's.
    pub(crate) fn handlers_fault(_: &StoreError) -> bool {
        false
    }

    pub(crate) enum Offer {}

    impl Offer {
        pub(crate) fn of(_: IdempotencyConfig, _: &Policy) -> Option<Self> {
            None
        }

        pub(crate) fn lend(self, _: &HttpRequest, _: &Lease) -> Loan {
            match self {}
        }
    }

    pub(crate) enum Loan {}

    impl Loan {
        pub(crate) fn taken(&self) -> bool {
            match *self {}
        }

        pub(crate) fn close(self) -> Option<Taken> {
            match self {}
        }
    }

    pub(crate) enum Taken {}

    impl Taken {
        pub(crate) async fn finish(
            self,
            _: Lease,
            _: Response,
            _: HttpResponse,
            _: &RequestId,
        ) -> (&'static str, HttpResponse) {
            match self {}
        }

        pub(crate) async fn abandon(self, _: Lease) -> &'static str {
            match self {}
        }
    }
}
