//! The budget stage against real stores: SQLite with the in-process ledger,
//! PostgreSQL with the Redis ledger (127.0.0.1:6379, a fresh key prefix
//! per test; nothing is flushed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::audit::{AuditSink, AuditUnavailable};
use crate::sensitivity::TenantPolicy;
use crate::store::testing;

const REDIS: &str = "redis://127.0.0.1:6379";

#[derive(Default)]
struct Recorded(Mutex<Vec<AuditEvent>>);

impl AuditSink for Recorded {
    fn submit(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.0.lock().unwrap().push(event);
        Ok(())
    }
}

impl Recorded {
    fn actions(&self, action: &str) -> Vec<AuditEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.action == action)
            .cloned()
            .collect()
    }
}

fn prefix() -> String {
    format!("test:budget:{}", uuid::Uuid::new_v4().simple())
}

/// A stage (its worker running) with a recording audit.
fn stage(store: &Store, ledger: Ledger, prefix: &str) -> (Budgets, Arc<Recorded>) {
    let recorded = Arc::new(Recorded::default());
    let settings = BudgetSettings {
        redis_prefix: prefix.to_string(),
        refresh: Duration::ZERO,
        ..BudgetSettings::default()
    };
    let (budgets, worker) = Budgets::new(
        store.clone(),
        settings,
        ledger,
        Audit::new(recorded.clone()),
    )
    .unwrap();
    tokio::spawn(worker.run());
    (budgets, recorded)
}

fn redis_ledger() -> Ledger {
    Ledger::redis(REDIS).unwrap()
}

async fn add_budget(store: &Store, scope: Scope, target: &str, amount: f64) -> Budget {
    let now = unix_now_ms();
    let budget = Budget {
        scope,
        target: target.into(),
        amount,
        currency: "RUB".into(),
        period: Period::CalendarMonth,
        alert_thresholds: None,
        created_at: now,
        updated_at: now,
    };
    book::upsert(store, &budget).await.unwrap();
    budget
}

fn caller() -> Principal {
    let mut p = Principal::for_tenant(
        "acme",
        Credential::VirtualKey {
            prefix: Arc::from("k1"),
        },
        TenantPolicy::default(),
    );
    p.team = Some(Arc::from("red"));
    p
}

/// "hi" with `max_tokens`: 9 prompt tokens by the estimate.
fn job(max_tokens: u64) -> Job {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens});
    crate::validate::chat(serde_json::from_value(body).unwrap())
        .unwrap()
        .job
}

/// 1 per 1k input tokens, 2 per 1k output tokens, providers only.
fn ceiling() -> Option<RouteCeiling> {
    Some(RouteCeiling {
        price: price(),
        local_max_tokens: None,
        providers: true,
    })
}

fn price() -> Price {
    Price {
        input_per_1k: 1.0,
        output_per_1k: 2.0,
    }
}

fn spent(prompt: usize, completion: usize) -> Spent {
    Spent {
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_prompt_tokens: 0,
        },
        price: Some(price()),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// Waits (a bounded while) until the budget's reservations are settled.
async fn settled(budgets: &Budgets, budget: &Budget) -> (f64, f64) {
    for _ in 0..500 {
        let (_, spent, reserved) = budgets.usage_of(budget).await.unwrap();
        if close(reserved, 0.0) {
            return (spent, reserved);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reservation on {} was never settled", budget.name());
}

async fn insert_spend(store: &Store, key_prefix: &str, at_ms: i64, cost: f64) {
    sqlx::query(
        "INSERT INTO spend (request_id, at_ms, key_prefix, tenant, team, user_id, model, deployment, \
         tokens_in, tokens_out, cached_tokens, cost, reference_cost, cache_hit, local, latency_ms, status) \
         VALUES ($1, $2, $3, 'acme', 'red', NULL, 'm', 'd', 1, 1, 0, $4, 0.0, 0, 0, 1, 'ok')",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(at_ms)
    .bind(key_prefix)
    .bind(cost)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn all_or_none(store: Store, ledger: Ledger) {
    let (budgets, audit) = stage(&store, ledger, &prefix());
    let key = add_budget(&store, Scope::Key, "k1", 10.0).await;
    let team = add_budget(&store, Scope::Team, "red", 10.0).await;
    let tenant = add_budget(&store, Scope::Tenant, "acme", 0.5).await;
    // A budget of someone else's never applies.
    add_budget(&store, Scope::Team, "blue", 0.000_001).await;
    // Each reservation: 9 prompt tokens at 1/1k + 100 output tokens at 2/1k.
    let first = budgets
        .reserve(&caller(), &job(100), ceiling())
        .await
        .unwrap()
        .unwrap();
    assert!(close(first.amount(), 0.209), "{}", first.amount());
    let second = budgets
        .reserve(&caller(), &job(100), ceiling())
        .await
        .unwrap()
        .unwrap();
    let err = match budgets.reserve(&caller(), &job(100), ceiling()).await {
        Err(e) => e,
        Ok(_) => panic!("the tenant's budget has no room for a third"),
    };
    let ApiError::RateLimited { code, message, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*code, "budget_exceeded");
    assert!(message.contains("tenant/acme"), "{message}");
    // The key's and the team's budgets had room, yet nothing was reserved on them.
    for b in [&key, &team, &tenant] {
        let (_, _, reserved) = budgets.usage_of(b).await.unwrap();
        assert!(close(reserved, 0.418), "{}: {reserved}", b.name());
    }
    let refused = audit.actions(actions::BUDGET_REFUSED);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].target.as_deref(), Some("tenant/acme"));
    drop((first, second));
    settled(&budgets, &tenant).await;
}

#[tokio::test]
async fn sqlite_reserves_all_or_none_across_key_team_and_tenant() {
    let (store, _dir) = testing::sqlite().await;
    all_or_none(store, Ledger::memory()).await;
}

#[tokio::test]
async fn postgres_and_redis_reserve_all_or_none_across_key_team_and_tenant() {
    all_or_none(testing::postgres().await, redis_ledger()).await;
}

async fn settle_replaces(store: Store, ledger: Ledger) {
    let (budgets, _) = stage(&store, ledger, &prefix());
    let key = add_budget(&store, Scope::Key, "k1", 10.0).await;
    let tenant = add_budget(&store, Scope::Tenant, "acme", 10.0).await;
    let r = budgets
        .reserve(&caller(), &job(100), ceiling())
        .await
        .unwrap()
        .unwrap();
    // 5 prompt tokens at 1/1k and 10 output tokens at 2/1k.
    r.finish(spent(5, 10));
    for b in [&key, &tenant] {
        let (spent, _) = settled(&budgets, b).await;
        assert!(close(spent, 0.025), "{}: {spent}", b.name());
    }
    // A reservation dropped unused (the request failed first) charges nothing.
    let r = budgets
        .reserve(&caller(), &job(100), ceiling())
        .await
        .unwrap()
        .unwrap();
    drop(r);
    let (spent, _) = settled(&budgets, &key).await;
    assert!(close(spent, 0.025), "{spent}");
}

#[tokio::test]
async fn sqlite_settle_replaces_the_reservation_by_the_actual_cost() {
    let (store, _dir) = testing::sqlite().await;
    settle_replaces(store, Ledger::memory()).await;
}

#[tokio::test]
async fn postgres_and_redis_settle_replaces_the_reservation_by_the_actual_cost() {
    settle_replaces(testing::postgres().await, redis_ledger()).await;
}

#[tokio::test]
async fn a_request_without_max_tokens_reserves_what_the_budget_allows() {
    let (store, _dir) = testing::sqlite().await;
    let (budgets, _) = stage(&store, Ledger::memory(), &prefix());
    add_budget(&store, Scope::Tenant, "acme", 0.109).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let mut job = crate::validate::chat(serde_json::from_value(body).unwrap())
        .unwrap()
        .job;
    let r = budgets
        .reserve(&caller(), &job, ceiling())
        .await
        .unwrap()
        .unwrap();
    // 0.009 for the prompt leaves 0.1: 50 output tokens at 2/1k.
    assert_eq!(r.tokens(), 50);
    r.bound(&mut job);
    assert_eq!(job.sampling.max_tokens, Some(50));
    // Nothing is left for another.
    assert!(budgets.reserve(&caller(), &job, ceiling()).await.is_err());
}

async fn rebuilds(store: Store) {
    let prefix = prefix();
    let (budgets, _) = stage(&store, redis_ledger(), &prefix);
    let key = add_budget(&store, Scope::Key, "k1", 10.0).await;
    // Spent this period, and long ago (another period: not counted).
    insert_spend(&store, "k1", unix_now_ms() - 1, 1.5).await;
    insert_spend(&store, "k1", 0, 100.0).await;
    let r = budgets
        .reserve(&caller(), &job(100), ceiling())
        .await
        .unwrap()
        .unwrap();
    r.finish(spent(5, 10));
    let (before, _) = settled(&budgets, &key).await;
    assert!(close(before, 1.525), "{before}");
    // The spend log has the request too, then Redis loses the counter.
    insert_spend(&store, "k1", unix_now_ms(), 0.025).await;
    let counter = budgets
        .shared
        .hold(key.clone(), unix_now_ms())
        .unwrap()
        .counter;
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(&counter.key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    // The next reservation rebuilds it from the spend log: not reset to 0.
    let r = budgets
        .reserve(&caller(), &job(100), ceiling())
        .await
        .unwrap()
        .unwrap();
    let (_, spent_now, reserved) = budgets.usage_of(&key).await.unwrap();
    assert!(close(spent_now, 1.525), "{spent_now}");
    assert!(close(reserved, r.amount()), "{reserved}");
    drop(r);
}

#[tokio::test]
async fn postgres_counters_lost_by_redis_are_rebuilt_from_the_spend_log() {
    rebuilds(testing::postgres().await).await;
}

#[tokio::test]
async fn sqlite_counters_lost_by_redis_are_rebuilt_from_the_spend_log() {
    let (store, _dir) = testing::sqlite().await;
    rebuilds(store).await;
}

async fn claims_once(store: Store) {
    let budget = add_budget(&store, Scope::Tenant, "acme", 1.0).await;
    let (a, b) = tokio::join!(
        book::claim_alert(&store, &budget, 1000, 80, 1),
        book::claim_alert(&store, &budget, 1000, 80, 2),
    );
    let wins = [a.unwrap(), b.unwrap()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    // Another threshold, or the same one next period, is a new alert.
    assert!(book::claim_alert(&store, &budget, 1000, 100, 3)
        .await
        .unwrap());
    assert!(book::claim_alert(&store, &budget, 2000, 80, 3)
        .await
        .unwrap());
}

#[tokio::test]
async fn sqlite_an_alert_is_claimed_once_by_racing_inserts() {
    let (store, _dir) = testing::sqlite().await;
    claims_once(store).await;
}

#[tokio::test]
async fn postgres_an_alert_is_claimed_once_by_racing_inserts() {
    claims_once(testing::postgres().await).await;
}

#[tokio::test]
async fn two_instances_send_each_threshold_once() {
    let store = testing::postgres().await;
    let prefix = prefix();
    let (one, audit_one) = stage(&store, redis_ledger(), &prefix);
    let (two, audit_two) = stage(&store, redis_ledger(), &prefix);
    let budget = add_budget(&store, Scope::Tenant, "acme", 1.0).await;
    // Each settle charges 0.3: 0.6 crosses 50%, 0.9 80%, 1.2 100%; the
    // two instances settle at once, so both see some thresholds crossed.
    for _ in 0..2 {
        let a = one
            .reserve(&caller(), &job(1), ceiling())
            .await
            .unwrap()
            .unwrap();
        let b = two
            .reserve(&caller(), &job(1), ceiling())
            .await
            .unwrap()
            .unwrap();
        a.finish(spent(0, 150));
        b.finish(spent(0, 150));
        settled(&one, &budget).await;
    }
    let alerts = || {
        let mut all: Vec<String> = audit_one
            .actions(actions::BUDGET_ALERT)
            .into_iter()
            .chain(audit_two.actions(actions::BUDGET_ALERT))
            .filter_map(|e| e.detail)
            .map(|d| d.split('%').next().unwrap_or_default().to_string())
            .collect();
        all.sort();
        all
    };
    for _ in 0..500 {
        if alerts().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let a duplicate, if one were coming, arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(alerts(), ["100", "50", "80"]);
}

/// Several reservations (two on the same counter) settled in one call
/// end as if each were settled alone, in order.
async fn settles_a_batch(ledger: Ledger) {
    let at = prefix();
    let counter = |name: &str| Counter {
        key: format!("{at}:{name}"),
        limit: 1_000_000,
        expire_at_ms: unix_now_ms() + 60_000,
    };
    let (shared, own) = (counter("shared"), counter("own"));
    ledger.seed(&shared, 100).await.unwrap();
    ledger.seed(&own, 0).await.unwrap();
    let ask = Ask {
        prompt: 50,
        per_token: 0.0,
        min_tokens: 1,
        max_tokens: 1,
    };
    let both = [shared.clone(), own.clone()];
    for counters in [&both[..], &both[..1]] {
        let granted = ledger.reserve(counters, &ask).await.unwrap();
        assert!(matches!(granted, Reserved::Granted { amount: 50, .. }));
    }
    let gone = counter("never-seeded");
    let spent = ledger
        .settle(&[
            Replace {
                keys: vec![shared.key.clone(), own.key.clone()],
                reserved: 50,
                actual: 30,
            },
            Replace {
                keys: vec![shared.key.clone(), gone.key.clone()],
                reserved: 50,
                actual: 20,
            },
        ])
        .await
        .unwrap();
    assert_eq!(spent, [vec![Some(130), Some(30)], vec![Some(150), None]]);
    assert_eq!(ledger.read(&shared.key).await.unwrap(), Some((150, 0)));
    assert_eq!(ledger.read(&own.key).await.unwrap(), Some((30, 0)));
}

#[tokio::test]
async fn the_memory_ledger_settles_a_batch_in_order() {
    settles_a_batch(Ledger::memory()).await;
}

#[tokio::test]
async fn the_redis_ledger_settles_a_batch_in_order() {
    settles_a_batch(redis_ledger()).await;
}
