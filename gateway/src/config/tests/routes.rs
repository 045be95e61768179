//! `[[routes]]`: deployments, residency, caps, capabilities, and bad
//! values named.

use super::*;

#[test]
fn routes_resolve_with_residency_following_the_target() {
    let cfg = load_str(ROUTED, &[]).unwrap();
    assert_eq!(cfg.providers.len(), 1);
    let route = &cfg.routes[0];
    assert_eq!(route.model, "chat");
    assert_eq!(route.strategy, super::Strategy::Learned);
    assert_eq!(route.seed, Some(3));
    let [local, cloud] = &route.deployments[..] else {
        panic!("two deployments")
    };
    assert_eq!(local.settings.residency, super::Residency::OnPrem);
    assert_eq!(local.settings.max_concurrency, Some(4));
    assert_eq!(cloud.settings.residency, super::Residency::Cloud);
    assert_eq!(cloud.settings.priority, 1);
    assert!((cloud.settings.price.output_per_1k - 0.0006).abs() < 1e-12);
    match &local.target {
        super::TargetSpec::Local { model, saturation } => {
            assert_eq!(model, "small");
            assert_eq!(saturation.max_queue_wait_ms, 250.0);
            assert_eq!(saturation.min_free_kv_fraction, 0.1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_provider_deployment_is_capped_by_default_and_a_local_one_is_not() {
    let cfg = load_str(&ROUTED.replace("max_concurrency = 4", ""), &[]).unwrap();
    let [local, cloud] = &cfg.routes[0].deployments[..] else {
        panic!("two deployments")
    };
    assert_eq!(local.settings.max_concurrency, None);
    assert_eq!(
        cloud.settings.max_concurrency,
        Some(crate::config::routes::DEFAULT_PROVIDER_MAX_CONCURRENCY)
    );
    let capped = ROUTED.replace(
        "upstream_model = \"gpt-4o-mini\"",
        "upstream_model = \"gpt-4o-mini\"\nmax_concurrency = 7",
    );
    let cfg = load_str(&capped, &[]).unwrap();
    assert_eq!(
        cfg.routes[0].deployments[1].settings.max_concurrency,
        Some(7)
    );
}

#[test]
fn bad_routes_name_their_key() {
    let cases = [
        (
            ROUTED.replace("strategy = \"learned\"", "strategy = \"random\""),
            "routes[0].strategy",
        ),
        (
            ROUTED.replace("local = \"small\"", "local = \"big\""),
            "routes[0].deployments[0].local",
        ),
        (
            ROUTED.replace("provider = \"cloud\"", "provider = \"nope\""),
            "routes[0].deployments[1].provider",
        ),
        (
            ROUTED.replace("upstream_model = \"gpt-4o-mini\"", ""),
            "routes[0].deployments[1].upstream_model",
        ),
        (
            ROUTED.replace("name = \"cloud-mini\"", "name = \"local-small\""),
            "routes[0].deployments[1].name",
        ),
        (
            ROUTED.replace("priority = 1", "residency = \"moon\""),
            "routes[0].deployments[1].residency",
        ),
        (
            ROUTED.replace("price_input_per_1k = 0.00015", "price_input_per_1k = -1.0"),
            "routes[0].deployments[1].price_input_per_1k",
        ),
        (
            ROUTED.replace("min_free_kv_fraction = 0.1", "min_free_kv_fraction = 2.0"),
            "routes[0].deployments[0].min_free_kv_fraction",
        ),
        (
            ROUTED.replace("max_concurrency = 4", "max_concurrency = 0"),
            "routes[0].deployments[0].max_concurrency",
        ),
    ];
    for (text, key) in cases {
        let err = err_of(&text, &[]);
        assert!(err.starts_with(key), "{key}: {err}");
    }
}

#[test]
fn capabilities_default_by_kind_and_a_deployment_list_replaces_them() {
    use super::Capability::*;
    let cfg = load_str(ROUTED, &[]).unwrap();
    let [local, cloud] = &cfg.routes[0].deployments[..] else {
        panic!("two deployments")
    };
    assert_eq!(local.settings.capabilities, Capabilities::all());
    assert_eq!(
        cloud.settings.capabilities,
        Capabilities::of(&[Tools, ToolChoiceRequired, JsonObject, JsonSchema])
    );
    let vllm = ROUTED.replace(
        "base_url = \"http://127.0.0.1:9/v1\"",
        "base_url = \"http://127.0.0.1:9/v1\"\ndialect = \"vllm\"",
    );
    let cfg = load_str(&vllm, &[]).unwrap();
    assert_eq!(
        cfg.routes[0].deployments[1].settings.capabilities,
        Capabilities::all()
    );
    let listed = ROUTED.replace(
        "priority = 1",
        "priority = 1\ncapabilities = [\"json_object\"]",
    );
    let cfg = load_str(&listed, &[]).unwrap();
    assert_eq!(
        cfg.routes[0].deployments[1].settings.capabilities,
        Capabilities::of(&[JsonObject])
    );
    let bad = ROUTED.replace(
        "priority = 1",
        "priority = 1\ncapabilities = [\"mind_reading\"]",
    );
    let err = err_of(&bad, &[]);
    assert!(
        err.contains("routes[0].deployments[1].capabilities"),
        "{err}"
    );
    assert!(err.contains("mind_reading"), "{err}");
    let bad_dialect = ROUTED.replace(
        "base_url = \"http://127.0.0.1:9/v1\"",
        "base_url = \"http://127.0.0.1:9/v1\"\ndialect = \"ollama\"",
    );
    assert!(err_of(&bad_dialect, &[]).contains("ollama"));
}
