//! `check-config`: every section shown, no secret printed.

use super::*;

#[test]
fn redacted_toml_never_shows_secrets() {
    let cfg = load_str("", &[("SLUICE_API_KEYS", "alpha:super-secret-value")]).unwrap();
    let text = cfg.to_redacted_toml();
    assert!(!text.contains("super-secret-value"), "{text}");
    assert!(
        text.contains("alpha") && text.contains("redacted"),
        "{text}"
    );
    assert!(!format!("{cfg:?}").contains("super-secret-value"));
}

#[test]
fn check_config_shows_the_cache_without_the_redis_password() {
    let text = "[cache]\nenabled = true\nbackend = \"redis\"\nredis_url = \"redis://:hunter2@127.0.0.1:6379\"\n";
    let cfg = load_str(text, &[]).unwrap();
    let shown = cfg.to_redacted_toml();
    assert!(shown.contains("[cache]"), "{shown}");
    assert!(shown.contains("backend = \"redis\""), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn check_config_shows_every_section_and_no_secret() {
    let text = r#"
        [server]
        listen = "127.0.0.1:9000"
        [[auth.keys]]
        tenant = "team-a"
        key_env = "TEAM_A_KEY"
        [[models]]
        id = "m1"
        path = "weights/m1.gguf"
        [[providers]]
        kind = "openai"
        name = "openai"
        base_url = "https://user:pw-in-url@api.example.com/v1?key=key-in-query"
        api_key_env = "OPENAI_API_KEY"
        headers = { "OpenAI-Organization" = "org-1", "X-Api-Key" = "key-in-header" }
        [[providers]]
        kind = "gigachat"
        name = "giga"
        auth_key_env = "GIGA_KEY"
        scope = "GIGACHAT_API_PERS"
        [[providers]]
        kind = "yandex"
        name = "ya"
        folder_id = "b1g"
        iam_token_env = "YA_TOKEN"
        [[routes]]
        model = "chat"
        strategy = "weighted"
        [[routes.deployments]]
        name = "local"
        local = "m1"
        [[routes.deployments]]
        name = "cloud"
        provider = "openai"
        upstream_model = "gpt-4o-mini"
        [admin]
        key_env = "ADMIN_KEY"
        [cache]
        enabled = true
        backend = "redis"
        redis_url = "redis://:redis-password@127.0.0.1:6379"
        [moderation]
        provider = "azure-prompt-shields"
        endpoint = "https://cs:pw-in-moderation-url@cs.example.com"
        api_key_env = "CS_KEY"
    "#;
    let secrets = [
        ("CS_KEY", "content-safety-key-value"),
        ("TEAM_A_KEY", "tenant-key-value"),
        ("ADMIN_KEY", "admin-key-value-0123"),
        ("OPENAI_API_KEY", "openai-key-value"),
        ("GIGA_KEY", "giga-key-value"),
        ("YA_TOKEN", "yandex-token-value"),
    ];
    let cfg = load_str(text, &secrets).unwrap();
    let shown = cfg.to_redacted_toml();
    let parsed: toml::Table = toml::from_str(&shown).unwrap();
    for section in [
        "server",
        "auth",
        "models",
        "providers",
        "routes",
        "admin",
        "cache",
        "encoders",
        "guard",
        "moderation",
    ] {
        assert!(parsed.contains_key(section), "no `{section}` in:\n{shown}");
    }
    assert_eq!(parsed["providers"].as_array().unwrap().len(), 3, "{shown}");
    let route = &parsed["routes"].as_array().unwrap()[0];
    assert_eq!(route["strategy"].as_str(), Some("weighted"), "{shown}");
    assert_eq!(route["deployments"].as_array().unwrap().len(), 2, "{shown}");
    assert!(shown.contains("gpt-4o-mini"), "{shown}");
    assert!(
        shown.contains("api_key_env = \"OPENAI_API_KEY\""),
        "{shown}"
    );
    assert!(shown.contains("org-1"), "{shown}");
    assert!(shown.contains("<redacted: env ADMIN_KEY>"), "{shown}");
    for (_, value) in secrets {
        assert!(!shown.contains(value), "`{value}` printed:\n{shown}");
    }
    for value in [
        "pw-in-url",
        "key-in-query",
        "key-in-header",
        "redis-password",
        "pw-in-moderation-url",
    ] {
        assert!(!shown.contains(value), "`{value}` printed:\n{shown}");
    }
}

#[test]
fn check_config_shows_the_stream_analysers_and_a_keys_stream_policy() {
    let text = r#"
        [stream]
        mode = "hold_back"
        guard = true
        [[auth.keys]]
        tenant = "team-a"
        key_env = "TEAM_A_KEY"
        stream = "stream_first"
        stream_guard = false
    "#;
    let cfg = load_str(text, &[("TEAM_A_KEY", "sk-team-a-secret")]).unwrap();
    let shown = cfg.to_redacted_toml();
    assert!(shown.contains("[stream]"), "{shown}");
    assert!(shown.contains("mode = \"hold_back\""), "{shown}");
    assert!(shown.contains("guard_in_flight = 2"), "{shown}");
    assert!(shown.contains("stream = \"stream_first\""), "{shown}");
    assert!(shown.contains("stream_guard = false"), "{shown}");
    assert!(!shown.contains("sk-team-a-secret"), "{shown}");
}

#[test]
fn check_config_shows_telemetry_with_header_names_but_not_their_values() {
    let text = r#"
        [telemetry]
        endpoint = "http://127.0.0.1:4317"
        headers = { "x-team" = "ops-header-value" }
        headers_env = "OTLP_HEADERS"
        sampling_ratio = 0.5
    "#;
    let cfg = load_str(text, &[("OTLP_HEADERS", "authorization=Bearer otlp-token")]).unwrap();
    let shown = cfg.to_redacted_toml();
    let parsed: toml::Table = toml::from_str(&shown).unwrap();
    let telemetry = parsed["telemetry"].as_table().expect("a [telemetry] table");
    assert_eq!(
        telemetry["endpoint"].as_str(),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(telemetry["sampling_ratio"].as_float(), Some(0.5));
    assert_eq!(telemetry["record_content"].as_bool(), Some(false));
    let mut names: Vec<&String> = telemetry["headers"].as_table().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, ["authorization", "x-team"], "{shown}");
    for value in ["ops-header-value", "otlp-token"] {
        assert!(!shown.contains(value), "`{value}` printed:\n{shown}");
    }
}
