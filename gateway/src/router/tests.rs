//! The dispatcher against scripted in-process providers: failover, residency,
//! caps, breakers, the learned strategy, cost headers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::http::HeaderMap;
use futures_util::future::BoxFuture;
use serde_json::json;
use sluice_runtime::{FinishReason, Usage};

use super::*;
use crate::answer::{self, Answer, Step};
use crate::providers::ProviderError;
use crate::validate;

/// A provider that answers "hello" (2 tokens) or fails with a 500, as told.
struct Scripted {
    calls: AtomicUsize,
    failing: AtomicBool,
    /// How long the upstream takes to commit to its answer.
    delay: Duration,
}

impl Scripted {
    fn new(failing: bool) -> Arc<Self> {
        Self::slow(failing, Duration::ZERO)
    }
    fn slow(failing: bool, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            failing: AtomicBool::new(failing),
            delay,
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Fixed {
    steps: VecDeque<Step>,
}

impl Answer for Fixed {
    fn num_choices(&self) -> usize {
        1
    }
    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        Box::pin(async move { self.steps.pop_front() })
    }
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: 1000,
            completion_tokens: 2000,
            cached_prompt_tokens: 0,
        }
    }
}

impl Provider for Scripted {
    fn kind(&self) -> &'static str {
        "openai"
    }
    fn chat<'a>(
        &'a self,
        _req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<BoxAnswer, ProviderError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(ProviderError::Status {
                    status: 500,
                    retry_after: None,
                    message: "boom".into(),
                });
            }
            let steps = VecDeque::from([
                Step::Token {
                    choice: 0,
                    text: "hel".into(),
                    logprob: None,
                    token: None,
                },
                Step::Token {
                    choice: 0,
                    text: "lo".into(),
                    logprob: None,
                    token: None,
                },
                Step::Finished {
                    choice: 0,
                    reason: FinishReason::Stop,
                    text: String::new(),
                    stop_sequence: None,
                },
            ]);
            Ok(Box::new(Fixed { steps }) as BoxAnswer)
        })
    }
}

fn openai_default_capabilities() -> Capabilities {
    use crate::config::Capability::*;
    Capabilities::of(&[Tools, ToolChoiceRequired, JsonObject, JsonSchema])
}

fn deployment(
    name: &str,
    provider: &str,
    priority: u32,
    residency: Residency,
    cap: Option<usize>,
) -> DeploymentSpec {
    DeploymentSpec {
        settings: DeploymentSettings {
            name: name.into(),
            priority,
            weight: 1.0,
            price: Price {
                input_per_1k: 0.001,
                output_per_1k: 0.002,
            },
            max_concurrency: cap,
            residency,
            capabilities: openai_default_capabilities(),
        },
        target: TargetSpec::Provider {
            provider: provider.into(),
            upstream_model: "up".into(),
            resilience: None,
        },
    }
}

fn route(strategy: Strategy, deployments: Vec<DeploymentSpec>) -> RouteSpec {
    RouteSpec {
        model: "pub".into(),
        guard: None,
        strategy,
        seed: Some(7),
        sensitive_wait: Duration::from_millis(60),
        reward: RewardScales::default(),
        deployments,
    }
}

fn router(spec: RouteSpec, providers: &[(&str, Arc<Scripted>)]) -> Router {
    let resilience = ResilienceConfig {
        max_attempts: 1,
        breaker_failures: 3,
        ..ResilienceConfig::default()
    };
    let map: HashMap<String, (Arc<dyn Provider>, ResilienceConfig)> = providers
        .iter()
        .map(|(name, p)| {
            (
                name.to_string(),
                (p.clone() as Arc<dyn Provider>, resilience.clone()),
            )
        })
        .collect();
    Router::with_providers(
        &[spec],
        &map,
        Arc::new(Registry::new(&[])),
        Duration::from_secs(10),
    )
    .unwrap()
}

fn chat_job() -> Job {
    let body = json!({"model": "pub", "messages": [{"role": "user", "content": "hi"}]});
    validate::chat(serde_json::from_value(body).unwrap())
        .unwrap()
        .job
}

fn how(sensitive: bool) -> Dispatch {
    Dispatch {
        stream: false,
        sensitive,
        started: Instant::now(),
        pseudonymize: None,
        trace: crate::telemetry::Trace::default(),
    }
}

async fn text_of(routed: &mut Routed) -> String {
    let out = answer::collect(routed.answer.as_mut()).await.unwrap();
    out[0].text.clone()
}

#[tokio::test]
async fn a_failing_deployment_fails_over_to_the_next_and_the_client_gets_one_answer() {
    let (bad, good) = (Scripted::new(true), Scripted::new(false));
    let spec = route(
        Strategy::Fallback,
        vec![
            deployment("a", "bad", 0, Residency::Cloud, None),
            deployment("b", "good", 1, Residency::Cloud, None),
        ],
    );
    let r = router(spec, &[("bad", bad.clone()), ("good", good.clone())]);
    let mut routed = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    assert_eq!(&*routed.provenance.deployment.name, "b");
    assert_eq!(text_of(&mut routed).await, "hello");
    assert_eq!((bad.calls(), good.calls()), (1, 1));
    assert_eq!(r.stats("a").failures, 1);
    drop(routed);
    assert_eq!(r.stats("b").successes, 1);
}

#[tokio::test]
async fn all_deployments_failing_is_the_upstreams_error() {
    let bad = Scripted::new(true);
    let spec = route(
        Strategy::Fallback,
        vec![deployment("a", "bad", 0, Residency::Cloud, None)],
    );
    let r = router(spec, &[("bad", bad)]);
    let err = r
        .dispatch("pub", chat_job(), how(false))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), axum::http::StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_sensitive_request_never_reaches_a_cloud_deployment() {
    let (cloud, onprem) = (Scripted::new(false), Scripted::new(false));
    let spec = route(
        Strategy::Fallback,
        vec![
            deployment("cloud", "cloud", 0, Residency::Cloud, None),
            deployment("vllm", "onprem", 1, Residency::OnPrem, Some(1)),
        ],
    );
    let r = router(
        spec,
        &[("cloud", cloud.clone()), ("onprem", onprem.clone())],
    );
    let routed = r.dispatch("pub", chat_job(), how(true)).await.unwrap();
    assert_eq!(&*routed.provenance.deployment.name, "vllm");
    // The on-prem deployment is now at its cap: the next sensitive request
    // waits, then gets 429, and the cloud is still untouched.
    let err = r
        .dispatch("pub", chat_job(), how(true))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(cloud.calls(), 0);
    // A request that is not sensitive may use the cloud.
    let routed2 = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    assert_eq!(&*routed2.provenance.deployment.name, "cloud");
    drop(routed);
}

#[tokio::test]
async fn a_sensitive_request_whose_on_prem_deployment_is_down_gets_503_not_the_cloud() {
    let (cloud, onprem) = (Scripted::new(false), Scripted::new(true));
    let spec = route(
        Strategy::Fallback,
        vec![
            deployment("vllm", "onprem", 0, Residency::OnPrem, None),
            deployment("cloud", "cloud", 1, Residency::Cloud, None),
        ],
    );
    let r = router(
        spec,
        &[("cloud", cloud.clone()), ("onprem", onprem.clone())],
    );
    let err = r
        .dispatch("pub", chat_job(), how(true))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApiError::OnPremUnavailable(_)), "{err:?}");
    assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(onprem.calls() >= 1, "the on-prem deployment was tried");
    assert_eq!(cloud.calls(), 0);
    // Not sensitive: the same failure fails over to the cloud.
    let routed = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    assert_eq!(&*routed.provenance.deployment.name, "cloud");
}

#[tokio::test]
async fn a_sensitive_request_to_a_cloud_only_model_is_refused_naming_the_model() {
    let cloud = Scripted::new(false);
    let spec = route(
        Strategy::Fallback,
        vec![deployment("cloud", "cloud", 0, Residency::Cloud, None)],
    );
    let r = router(spec, &[("cloud", cloud.clone())]);
    let err = r
        .dispatch("pub", chat_job(), how(true))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
    assert!(err.to_string().contains("on_prem"), "{err}");
    assert_eq!(cloud.calls(), 0);
}

#[tokio::test]
async fn a_deployment_at_its_cap_is_skipped_until_its_answer_ends() {
    let (a, b) = (Scripted::new(false), Scripted::new(false));
    let spec = route(
        Strategy::Fallback,
        vec![
            deployment("a", "a", 0, Residency::Cloud, Some(1)),
            deployment("b", "b", 1, Residency::Cloud, None),
        ],
    );
    let r = router(spec, &[("a", a.clone()), ("b", b.clone())]);
    let first = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    let second = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    assert_eq!(&*first.provenance.deployment.name, "a");
    assert_eq!(&*second.provenance.deployment.name, "b");
    drop(first);
    let third = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    assert_eq!(&*third.provenance.deployment.name, "a");
}

#[tokio::test]
async fn every_deployment_at_its_cap_is_a_429_rate_limit_with_retry_after() {
    let a = Scripted::new(false);
    let spec = route(
        Strategy::Fallback,
        vec![deployment("a", "a", 0, Residency::Cloud, Some(1))],
    );
    let r = router(spec, &[("a", a.clone())]);
    let held = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    let Err(err) = r.dispatch("pub", chat_job(), how(false)).await else {
        panic!("a second request past the cap was dispatched");
    };
    assert!(
        matches!(err, ApiError::InFlightLimit { limit: 1, .. }),
        "{err:?}"
    );
    let response = axum::response::IntoResponse::into_response(err);
    assert_eq!(response.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
    assert!(response
        .headers()
        .contains_key(axum::http::header::RETRY_AFTER));
    assert_eq!(a.calls(), 1);
    drop(held);
    assert!(r.dispatch("pub", chat_job(), how(false)).await.is_ok());
}

#[tokio::test]
async fn an_open_circuit_is_skipped_without_calling_the_upstream() {
    let (bad, good) = (Scripted::new(true), Scripted::new(false));
    let spec = route(
        Strategy::Fallback,
        vec![
            deployment("a", "bad", 0, Residency::Cloud, None),
            deployment("b", "good", 1, Residency::Cloud, None),
        ],
    );
    let r = router(spec, &[("bad", bad.clone()), ("good", good.clone())]);
    for _ in 0..6 {
        let mut routed = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
        assert_eq!(text_of(&mut routed).await, "hello");
    }
    // The breaker opened after 3 consecutive failures.
    assert_eq!(bad.calls(), 3);
    assert_eq!(good.calls(), 6);
}

#[tokio::test]
async fn learned_strategy_moves_traffic_away_from_a_failing_deployment() {
    let (flaky, steady) = (Scripted::new(true), Scripted::new(false));
    let spec = route(
        Strategy::Learned,
        vec![
            deployment("flaky", "flaky", 0, Residency::Cloud, None),
            deployment("steady", "steady", 0, Residency::Cloud, None),
        ],
    );
    let mut spec = spec;
    for d in &mut spec.deployments {
        if let TargetSpec::Provider { resilience, .. } = &mut d.target {
            // Keep the breaker out of it: the bandit alone must learn.
            *resilience = Some(ResilienceConfig {
                max_attempts: 1,
                breaker_failures: 1000,
                ..ResilienceConfig::default()
            });
        }
    }
    let r = router(
        spec,
        &[("flaky", flaky.clone()), ("steady", steady.clone())],
    );
    let mut first_choice = HashMap::<String, usize>::new();
    for i in 0..60 {
        let before = flaky.calls();
        let mut routed = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
        text_of(&mut routed).await;
        if i >= 30 {
            let first = if flaky.calls() > before {
                "flaky"
            } else {
                "steady"
            };
            *first_choice.entry(first.into()).or_default() += 1;
        }
    }
    let flaky_first = first_choice.get("flaky").copied().unwrap_or(0);
    assert!(
        flaky_first <= 5,
        "flaky was tried first {flaky_first} of the last 30 times"
    );
    assert_eq!(
        steady.calls(),
        60,
        "every request was answered by the steady one"
    );
}

#[tokio::test]
async fn cost_header_follows_the_price_table_and_usage() {
    let good = Scripted::new(false);
    let spec = route(
        Strategy::Fallback,
        vec![deployment("b", "good", 0, Residency::Cloud, None)],
    );
    let r = router(spec, &[("good", good)]);
    let mut routed = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
    text_of(&mut routed).await;
    let mut headers = HeaderMap::new();
    let usage = routed.answer.usage();
    routed.provenance.stamp(&mut headers, Some(&usage));
    assert_eq!(headers[DEPLOYMENT_HEADER], "b");
    // 1000 prompt tokens at 0.001 + 2000 completion tokens at 0.002 per 1k.
    assert_eq!(headers[COST_HEADER], "0.005000");
    let mut stream_headers = HeaderMap::new();
    routed.provenance.stamp(&mut stream_headers, None);
    assert!(!stream_headers.contains_key(COST_HEADER));
}

#[tokio::test]
async fn text_completions_are_not_sent_to_chat_providers() {
    let good = Scripted::new(false);
    let spec = route(
        Strategy::Fallback,
        vec![deployment("b", "good", 0, Residency::Cloud, None)],
    );
    let r = router(spec, &[("good", good.clone())]);
    let body = json!({"model": "pub", "prompt": "once upon"});
    let job = validate::completion(serde_json::from_value(body).unwrap())
        .unwrap()
        .job;
    let err = r.dispatch("pub", job, how(false)).await.err().unwrap();
    assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
    assert_eq!(good.calls(), 0);
}

#[tokio::test]
async fn unknown_models_are_404() {
    let r = router(route(Strategy::Fallback, vec![]), &[]);
    let err = r
        .dispatch("nope", chat_job(), how(false))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), axum::http::StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn learned_strategy_moves_traffic_away_from_a_slow_deployment() {
    // Real (short) delays; the test counts choices, it never asserts a time.
    let (slow, fast) = (
        Scripted::slow(false, Duration::from_millis(40)),
        Scripted::slow(false, Duration::from_millis(1)),
    );
    let mut spec = route(
        Strategy::Learned,
        vec![
            deployment("slow", "slow", 0, Residency::Cloud, None),
            deployment("fast", "fast", 0, Residency::Cloud, None),
        ],
    );
    spec.reward.latency_scale_ms = 5.0;
    let r = router(spec, &[("slow", slow.clone()), ("fast", fast.clone())]);
    let mut slow_late = 0;
    for i in 0..80 {
        let mut routed = r.dispatch("pub", chat_job(), how(false)).await.unwrap();
        text_of(&mut routed).await;
        if i >= 40 && &*routed.provenance.deployment.name == "slow" {
            slow_late += 1;
        }
    }
    assert!(slow.calls() > 0, "the slow one was explored");
    assert!(slow_late <= 8, "slow answered {slow_late} of the last 40");
    assert!(r.stats("slow").ttft_ewma_ms > r.stats("fast").ttft_ewma_ms);
}

fn job_of(extra: serde_json::Value) -> Job {
    let mut body = json!({"model": "pub", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    validate::chat(serde_json::from_value(body).unwrap())
        .unwrap()
        .job
}

fn weather() -> serde_json::Value {
    json!([{"type": "function", "function": {"name": "get_weather"}}])
}

#[tokio::test]
async fn a_request_goes_to_the_first_deployment_that_can_serve_what_it_asks() {
    let (giga, openai) = (Scripted::new(false), Scripted::new(false));
    let mut first = deployment("giga", "giga", 0, Residency::Cloud, None);
    first.settings.capabilities = Capabilities::of(&[Capability::Tools]);
    let spec = route(
        Strategy::Fallback,
        vec![first, deployment("oa", "openai", 1, Residency::Cloud, None)],
    );
    let r = router(spec, &[("giga", giga.clone()), ("openai", openai.clone())]);
    let auto = job_of(json!({"tools": weather()}));
    let routed = r.dispatch("pub", auto, how(false)).await.unwrap();
    assert_eq!(&*routed.provenance.deployment.name, "giga");
    let required = job_of(json!({"tools": weather(), "tool_choice": "required"}));
    let routed = r.dispatch("pub", required, how(false)).await.unwrap();
    assert_eq!(&*routed.provenance.deployment.name, "oa");
    let schema = job_of(json!({"response_format": {"type": "json_object"}}));
    let routed = r.dispatch("pub", schema, how(false)).await.unwrap();
    assert_eq!(&*routed.provenance.deployment.name, "oa");
    assert_eq!((giga.calls(), openai.calls()), (1, 2));
}

#[tokio::test]
async fn no_deployment_able_to_serve_a_request_is_a_400_naming_the_parameter() {
    let p = Scripted::new(false);
    let mut only = deployment("giga", "giga", 0, Residency::Cloud, None);
    only.settings.capabilities = Capabilities::of(&[Capability::Tools]);
    let r = router(
        route(Strategy::Fallback, vec![only]),
        &[("giga", p.clone())],
    );
    let cases = [
        (
            json!({"tools": weather(), "tool_choice": "required"}),
            "tool_choice",
            "no deployment of model 'pub' supports 'tool_choice' (\"required\")",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
            "response_format",
            "no deployment of model 'pub' supports 'response_format' (json_schema)",
        ),
        (
            json!({"logit_bias": {"5": 1}}),
            "logit_bias",
            "no deployment of model 'pub' supports 'logit_bias'",
        ),
    ];
    for (extra, param, message) in cases {
        let err = r
            .dispatch("pub", job_of(extra), how(false))
            .await
            .err()
            .unwrap();
        match err {
            ApiError::InvalidRequest {
                param: p,
                message: m,
                ..
            } => {
                assert_eq!(p.as_deref(), Some(param));
                assert_eq!(m, message);
            }
            other => panic!("{other:?}"),
        }
    }
    let mut none = deployment("bare", "giga", 0, Residency::Cloud, None);
    none.settings.capabilities = Capabilities::NONE;
    let r = router(
        route(Strategy::Fallback, vec![none]),
        &[("giga", p.clone())],
    );
    // A conversation carrying tool turns needs tools too, even offering none.
    let turns = job_of(json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}));
    match r.dispatch("pub", turns, how(false)).await.err().unwrap() {
        ApiError::InvalidRequest { param, .. } => assert_eq!(param.as_deref(), Some("messages")),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.calls(), 0);
}
