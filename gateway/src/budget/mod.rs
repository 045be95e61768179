//! Budgets: money a key, a team or a tenant may spend per period, held
//! across every instance.
//!
//! Before the model, [`Budgets::reserve`] reserves the request's worst case
//! against every budget that applies to its caller at once, all or none
//! (one atomic step on the [`ledger`]): its prompt (estimated) at the
//! route's dearest input price plus its `max_tokens` at the dearest output
//! price. A request without `max_tokens` reserves what every budget still
//! allows (up to the model's default), and its answer is stopped there
//! ([`cap`]). After the answer (completed, failed or abandoned) the
//! [`Reservation`] is replaced by what the answer actually cost; crossing
//! an alert threshold then sends one alert per budget, period and threshold
//! across all instances ([`alerts`]). Over budget is 429 `budget_exceeded`.
//!
//! Money is counted in millionths of the configured currency; prices are
//! read in it (no conversion: a budget in another currency is refused).
//!
//! Design choices: budgets fail closed (counters that cannot be reached
//! refuse the request with 503 rather than let spend run unchecked); the
//! budget rows are read from the store at most every `[budgets] refresh_ms`
//! per instance, so a change made through another instance applies within
//! that time. A reservation whose instance dies before settling stays
//! reserved until its period ends (the counters carry no per-request
//! leases).

pub mod alerts;
pub mod book;
pub mod cap;
pub mod ledger;
pub mod period;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::tz::TimeZone;
use sluice_runtime::Usage;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::answer::{BoxAnswer, StopNote};
use crate::audit::{actions, Audit, AuditEvent, AuditOutcome};
use crate::auth::{Credential, Principal};
use crate::config::{BudgetSettings, Price};
use crate::error::ApiError;
use crate::store::Store;
use crate::util::unix_now_ms;
use crate::validate::{Input, Job};

pub use alerts::BudgetWorker;
pub use book::{Budget, Scope};
pub use ledger::{Ask, Counter, Ledger, Replace, Reserved};
pub use period::{Period, Window};

/// Settlements waiting for the worker; past this, a settle is done on a
/// task of its own rather than dropped (a dropped one would hold its
/// reservation until the period ends).
const QUEUE: usize = 4096;
/// Counters kept a day past their period, so a late settle still finds them.
const COUNTER_SLACK_MS: i64 = 24 * 60 * 60 * 1000;

/// Millionths of the currency, rounded up (a cost is never undercounted),
/// except for float noise: 0.1 + 0.2 is 300000 millionths, not 300001.
pub fn micros(amount: f64) -> i64 {
    if amount.is_finite() {
        let m = amount * 1e6;
        let nearest = m.round();
        (if (m - nearest).abs() < 1e-6 {
            nearest
        } else {
            m.ceil()
        }) as i64
    } else {
        i64::MAX / 4
    }
}

fn from_micros(m: i64) -> f64 {
    m as f64 / 1e6
}

/// The most a token can cost on a route and how many a request may take
/// when it names no `max_tokens` (from the router).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteCeiling {
    /// The dearest input and the dearest output price among its deployments.
    pub price: Price,
    /// The largest default `max_tokens` among its local models; `None`
    /// when it has none.
    pub local_max_tokens: Option<usize>,
    /// Whether a provider may answer.
    pub providers: bool,
}

/// What the stage and its worker share.
pub(crate) struct Shared {
    store: Store,
    settings: BudgetSettings,
    tz: TimeZone,
    ledger: Ledger,
    audit: Audit,
    book: RwLock<Option<Arc<Book>>>,
    reload: tokio::sync::Mutex<()>,
}

/// The budget rows as last read.
struct Book {
    rows: HashMap<(Scope, String), Budget>,
    loaded: Instant,
}

/// The budget stage.
pub struct Budgets {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<alerts::Job>,
}

/// One budget's part in a reservation.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    budget: Budget,
    window: Window,
    counter: Counter,
}

/// A request's reservation: settle it (or drop it) exactly once.
pub struct Reservation {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<alerts::Job>,
    held: Vec<Held>,
    amount: i64,
    /// Output tokens per choice the reservation covers.
    tokens: u64,
    choices: u64,
    prompt_tokens: u64,
    /// Only providers may answer: they are told `max_tokens` when the
    /// request named none.
    provider_only: bool,
    seen: cap::Seen,
    settled: bool,
}

/// How an answer ended, as far as its cost goes.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    pub usage: Usage,
    /// At the serving deployment's price; `None` for a cache hit (free).
    pub price: Option<Price>,
}

impl Budgets {
    /// The stage and its worker (run the worker on a task of its own).
    pub fn new(
        store: Store,
        settings: BudgetSettings,
        ledger: Ledger,
        audit: Audit,
    ) -> Result<(Self, BudgetWorker), ApiError> {
        let tz = TimeZone::get(&settings.timezone).map_err(|e| {
            ApiError::Internal(format!("budgets.timezone `{}`: {e}", settings.timezone))
        })?;
        let shared = Arc::new(Shared {
            store,
            settings,
            tz,
            ledger,
            audit,
            book: RwLock::new(None),
            reload: tokio::sync::Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = BudgetWorker::new(shared.clone(), rx);
        Ok((Self { shared, jobs: tx }, worker))
    }

    /// The stage as the server runs it: counters on Redis when one is
    /// configured (else in process), the worker on a task whose handle the
    /// server awaits at shutdown.
    pub fn start(
        settings: &BudgetSettings,
        store: &Store,
        audit: &Audit,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), String> {
        let ledger = match &settings.redis_url {
            Some(url) => Ledger::redis(url.expose()).map_err(|e| e.to_string())?,
            None => Ledger::memory(),
        };
        let (budgets, worker) = Self::new(store.clone(), settings.clone(), ledger, audit.clone())
            .map_err(|e| e.to_string())?;
        Ok((Arc::new(budgets), tokio::spawn(worker.run())))
    }

    pub fn settings(&self) -> &BudgetSettings {
        &self.shared.settings
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Reserves `job`'s worst case on `model` against every budget of
    /// `principal`; `None` when none applies.
    pub async fn reserve(
        &self,
        principal: &Principal,
        job: &Job,
        ceiling: Option<RouteCeiling>,
    ) -> Result<Option<Reservation>, ApiError> {
        let book = self.shared.book().await?;
        let applicable = book.applicable(principal);
        let Some(ceiling) = ceiling.filter(|_| !applicable.is_empty()) else {
            return Ok(None);
        };
        let now = unix_now_ms();
        let mut held = Vec::with_capacity(applicable.len());
        for budget in applicable {
            held.push(self.shared.hold(budget.clone(), now)?);
        }
        let settings = &self.shared.settings;
        let choices = (job.n.max(1) * job.input.num_prompts().max(1)) as u64;
        let prompt_tokens = estimate_prompt_tokens(&job.input);
        let default_max = match (ceiling.local_max_tokens, ceiling.providers) {
            (Some(local), true) => local.max(settings.provider_max_tokens),
            (Some(local), false) => local,
            (None, _) => settings.provider_max_tokens,
        } as u64;
        let ask = Ask {
            prompt: micros(prompt_tokens as f64 / 1000.0 * ceiling.price.input_per_1k),
            // Millionths per token: per 1k × 1e6 / 1000.
            per_token: ceiling.price.output_per_1k * 1000.0 * choices as f64,
            min_tokens: job.sampling.max_tokens.map_or(1, |m| m as u64),
            max_tokens: job.sampling.max_tokens.map_or(default_max, |m| m as u64),
        };
        let counters: Vec<Counter> = held.iter().map(|h| h.counter.clone()).collect();
        // A missing counter is rebuilt and the ask repeated; each round
        // seeds one, so this ends after at most one round per budget.
        for _ in 0..=counters.len() {
            let reserved = self
                .shared
                .ledger
                .reserve(&counters, &ask)
                .await
                .map_err(unavailable)?;
            match reserved {
                Reserved::Granted { tokens, amount } => {
                    return Ok(Some(Reservation {
                        shared: self.shared.clone(),
                        jobs: self.jobs.clone(),
                        held,
                        amount,
                        tokens,
                        choices,
                        prompt_tokens,
                        provider_only: ceiling.local_max_tokens.is_none(),
                        seen: cap::Seen::default(),
                        settled: false,
                    }));
                }
                Reserved::Refused {
                    index,
                    spent,
                    reserved,
                } => {
                    return Err(self.refuse(principal, &held, index, spent, reserved, &ask, now));
                }
                Reserved::Missing(index) => {
                    let h = held.get(index).ok_or_else(|| {
                        ApiError::Internal("budget ledger named no such counter".into())
                    })?;
                    self.shared.rebuild(h).await?;
                }
            }
        }
        Err(ApiError::StoreUnavailable("the budget counters"))
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        principal: &Principal,
        held: &[Held],
        index: usize,
        spent: i64,
        reserved: i64,
        ask: &Ask,
        now: i64,
    ) -> ApiError {
        let Some(h) = held.get(index) else {
            return ApiError::Internal("budget ledger named no such counter".into());
        };
        let currency = &self.shared.settings.currency;
        let needs = ask.prompt + (ask.min_tokens as f64 * ask.per_token).ceil() as i64;
        let message = format!(
            "Budget {} ({:.4} {currency} per {}) cannot cover this request: {:.4} spent and \
             {:.4} reserved by requests in flight, and this one needs up to {:.4}. Lower \
             max_tokens, wait for the period to reset, or ask an admin to raise the budget.",
            h.budget.name(),
            h.budget.amount,
            h.budget.period.as_str(),
            from_micros(spent),
            from_micros(reserved),
            from_micros(needs),
        );
        // Room may come back as requests in flight settle; otherwise only
        // the next period brings it.
        let retry_after = if spent + needs <= h.counter.limit {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(u64::try_from(h.window.end_ms - now).unwrap_or(0).max(1000))
        };
        // Scope and period only: the target (a key, team or tenant) is
        // unbounded and lives in the audit record instead.
        metrics::counter!(
            crate::metrics::catalog::BUDGET_REFUSALS,
            "scope" => h.budget.scope.as_str(),
            "period" => h.budget.period.as_str(),
        )
        .increment(1);
        let _ = self.shared.audit.record(
            AuditEvent::new(
                actions::BUDGET_REFUSED,
                principal.actor(),
                AuditOutcome::Denied,
            )
            .tenant(principal.tenant.to_string())
            .target(h.budget.name())
            .detail(format!(
                "spent {:.4}, reserved {:.4}, needs {:.4} of {:.4} {currency}",
                from_micros(spent),
                from_micros(reserved),
                from_micros(needs),
                h.budget.amount
            )),
        );
        ApiError::RateLimited {
            message,
            code: "budget_exceeded",
            retry_after,
            headers: Vec::new(),
        }
    }

    /// Forgets the budget rows read so far (after a change through this
    /// instance, so it applies at once here).
    pub fn invalidate(&self) {
        if let Ok(mut book) = self.shared.book.write() {
            *book = None;
        }
    }

    /// A budget's spent and reserved amounts in its current period: from
    /// the counters, else (none yet) from the spend log.
    pub async fn usage_of(&self, budget: &Budget) -> Result<(Window, f64, f64), ApiError> {
        let h = self.shared.hold(budget.clone(), unix_now_ms())?;
        let counted = self
            .shared
            .ledger
            .read(&h.counter.key)
            .await
            .map_err(unavailable)?;
        let (spent, reserved) = match counted {
            Some((s, r)) => (from_micros(s), from_micros(r)),
            None => (
                book::spent_since(
                    &self.shared.store,
                    budget.scope,
                    &budget.target,
                    h.window.start_ms,
                )
                .await
                .map_err(store_error)?,
                0.0,
            ),
        };
        Ok((h.window, spent, reserved))
    }
}

impl Shared {
    /// The budget rows, re-read when older than `refresh` (one reader at a
    /// time; the others use the rows they have meanwhile).
    async fn book(&self) -> Result<Arc<Book>, ApiError> {
        let current = self.book.read().ok().and_then(|b| b.clone());
        if let Some(book) = &current {
            if book.loaded.elapsed() < self.settings.refresh {
                return Ok(book.clone());
            }
        }
        let guard = match (&current, self.reload.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(stale), Err(_)) => return Ok(stale.clone()),
            (None, Err(_)) => self.reload.lock().await,
        };
        if let Some(fresh) = self.book.read().ok().and_then(|b| b.clone()) {
            if fresh.loaded.elapsed() < self.settings.refresh {
                return Ok(fresh);
            }
        }
        let rows = match book::list(&self.store).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the budgets");
                return current.ok_or(ApiError::StoreUnavailable("the budget store"));
            }
        };
        let book = Arc::new(Book {
            rows: rows
                .into_iter()
                .map(|b| ((b.scope, b.target.clone()), b))
                .collect(),
            loaded: Instant::now(),
        });
        if let Ok(mut slot) = self.book.write() {
            *slot = Some(book.clone());
        }
        drop(guard);
        Ok(book)
    }

    /// The budget's current window and counter.
    fn hold(&self, budget: Budget, now: i64) -> Result<Held, ApiError> {
        if !budget
            .currency
            .eq_ignore_ascii_case(&self.settings.currency)
        {
            return Err(ApiError::Internal(format!(
                "budget {} is in {} but prices are in {} ([budgets] currency); \
                 fix the budget through /admin/budgets",
                budget.name(),
                budget.currency,
                self.settings.currency
            )));
        }
        let window = period::window(budget.period, budget.created_at, now, &self.tz)
            .map_err(|e| ApiError::Internal(format!("budget period: {e}")))?;
        let counter = Counter {
            // One hash tag: every counter in one Redis Cluster slot, so
            // one script may touch all of a request's budgets.
            key: format!(
                "{{{}}}:{}:{}:{}",
                self.settings.redis_prefix,
                budget.scope.as_str(),
                budget.target,
                window.start_ms
            ),
            limit: micros(budget.amount),
            expire_at_ms: window.end_ms + COUNTER_SLACK_MS,
        };
        Ok(Held {
            budget,
            window,
            counter,
        })
    }

    /// Seeds a missing counter from the spend log of its period.
    async fn rebuild(&self, held: &Held) -> Result<(), ApiError> {
        let spent = book::spent_since(
            &self.store,
            held.budget.scope,
            &held.budget.target,
            held.window.start_ms,
        )
        .await
        .map_err(store_error)?;
        tracing::info!(budget = %held.budget.name(), spent, "budget counter rebuilt from the spend log");
        self.ledger
            .seed(&held.counter, micros(spent))
            .await
            .map_err(unavailable)
    }
}

impl Book {
    /// The caller's key, team and tenant budgets that exist.
    fn applicable(&self, principal: &Principal) -> Vec<&Budget> {
        let key_target = match &principal.credential {
            Credential::VirtualKey { prefix } => Some(&**prefix),
            Credential::ConfigKey => Some(&*principal.tenant),
            Credential::Anonymous | Credential::Jwt { .. } => None,
        };
        let wanted = [
            key_target.map(|t| (Scope::Key, t)),
            principal.team.as_deref().map(|t| (Scope::Team, t)),
            Some((Scope::Tenant, &*principal.tenant)),
        ];
        wanted
            .into_iter()
            .flatten()
            .filter_map(|(scope, target)| self.rows.get(&(scope, target.to_string())))
            .collect()
    }
}

impl Reservation {
    /// Output tokens per choice the reservation covers.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// What was reserved, in the currency.
    pub fn amount(&self) -> f64 {
        from_micros(self.amount)
    }

    /// A provider-only route is told the reservation's `max_tokens` when the
    /// request named none: a whole (unstreamed) answer cannot be cut short.
    pub fn bound(&self, job: &mut Job) {
        if self.provider_only && job.sampling.max_tokens.is_none() {
            job.sampling.max_tokens = usize::try_from(self.tokens).ok();
        }
    }

    /// The answer, stopped once it reaches the reserved output tokens
    /// (noted in `stop` as a `budget` stop).
    pub fn cap(&self, answer: BoxAnswer, stop: StopNote) -> BoxAnswer {
        cap::Capped::wrap(
            answer,
            self.tokens.saturating_mul(self.choices),
            self.seen.clone(),
            stop,
        )
    }

    /// Replaces the reservation by what the answer cost.
    pub fn finish(mut self, spent: Spent) {
        let actual = self.actual(spent);
        self.send(actual);
    }

    /// The cost to charge: the producer's usage, or (a provider stream cut
    /// short, whose usage never came) the tokens seen and the estimated prompt.
    fn actual(&self, spent: Spent) -> i64 {
        let Some(price) = spent.price else {
            return 0;
        };
        let seen = self.seen.get();
        let completion = (spent.usage.completion_tokens as u64).max(seen);
        let prompt = if spent.usage.prompt_tokens > 0 {
            spent.usage.prompt_tokens as u64
        } else if completion > 0 {
            self.prompt_tokens
        } else {
            0
        };
        micros(price.cost(&Usage {
            prompt_tokens: usize::try_from(prompt).unwrap_or(usize::MAX),
            completion_tokens: usize::try_from(completion).unwrap_or(usize::MAX),
            ..spent.usage
        }))
    }

    fn send(&mut self, actual: i64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let job = alerts::Job {
            held: std::mem::take(&mut self.held),
            reserved: self.amount,
            actual,
        };
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            self.jobs.try_send(job)
        {
            // Never dropped: a lost settle would hold its reservation until
            // the period ends.
            tracing::warn!("budget settle queue full; settling on a task of its own");
            let shared = self.shared.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { alerts::settle_only(&shared, &[job.replace()]).await });
            }
        }
    }
}

impl Drop for Reservation {
    /// Never settled (the request failed before an answer existed):
    /// nothing was generated, nothing is charged.
    fn drop(&mut self) {
        self.send(0);
    }
}

/// The prompt's tokens, estimated without a tokenizer: a quarter of its
/// characters (rounded up) plus the few tokens each chat turn's framing
/// takes; exact for prompts given as token ids.
pub fn estimate_prompt_tokens(input: &Input) -> u64 {
    let quarter = |text: &str| (text.chars().count() as u64).div_ceil(4);
    match input {
        Input::Chat(messages) => {
            3 + messages
                .iter()
                .map(|m| 4 + quarter(&m.content) + quarter(&m.role))
                .sum::<u64>()
        }
        Input::Text(prompts) => prompts.iter().map(|p| 1 + quarter(p)).sum(),
        Input::Tokens(prompts) => prompts.iter().map(|p| p.len() as u64).sum(),
    }
}

fn unavailable(e: ledger::LedgerError) -> ApiError {
    tracing::warn!(error = %e, "budget counters unavailable; refusing (budgets fail closed)");
    ApiError::StoreUnavailable("the budget counters (Redis)")
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "budget store query failed");
    ApiError::StoreUnavailable("the budget store")
}

#[cfg(test)]
mod tests;
