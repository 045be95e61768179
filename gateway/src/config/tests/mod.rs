//! Good configs resolve; each bad one fails naming its key, and no secret
//! is ever printed.

use super::file::FileConfig;
use super::resolve::resolve;
use super::*;
use std::collections::HashMap;
use std::path::Path;

mod defaults;
mod engine;
mod render;
mod routes;

fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| vars.get(name).cloned();
    let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: "test.toml".into(),
        message: e.to_string(),
    })?;
    resolve(
        file,
        Path::new("/etc/sluice"),
        &Overrides::default(),
        &lookup,
    )
}

fn err_of(text: &str, env: &[(&str, &str)]) -> String {
    load_str(text, env).unwrap_err().to_string()
}

/// Two routes, a local and a cloud deployment: the route tests' and the
/// guard policies' config.
const ROUTED: &str = r#"
[[models]]
id = "small"
path = "/m/small.gguf"

[[providers]]
kind = "openai"
name = "cloud"
base_url = "http://127.0.0.1:9/v1"

[[routes]]
model = "chat"
strategy = "learned"
seed = 3

[[routes.deployments]]
name = "local-small"
local = "small"
max_queue_wait_ms = 250
min_free_kv_fraction = 0.1
max_concurrency = 4

[[routes.deployments]]
name = "cloud-mini"
provider = "cloud"
upstream_model = "gpt-4o-mini"
priority = 1
price_input_per_1k = 0.00015
price_output_per_1k = 0.0006
"#;

#[test]
fn no_config_serves_the_demo_model_on_loopback() {
    let cfg = load_str("", &[]).unwrap();
    assert_eq!(cfg.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(cfg.models.len(), 1);
    assert_eq!(cfg.models[0].id, DEMO_MODEL_ID);
    assert_eq!(cfg.models[0].path, sluice_models::demo_chat_model_path());
    assert!(cfg.keys.is_empty());
}

#[test]
fn full_example_resolves() {
    let cfg = load_str(
        r#"
        [server]
        listen = "0.0.0.0:9000"
        max_body_bytes = "1MiB"
        shutdown_grace_seconds = 5
        [[auth.keys]]
        tenant = "team-a"
        key_env = "TEAM_A_KEY"
        [[models]]
        id = "m1"
        path = "weights/m1.gguf"
        [models.engine]
        block_size = 32
        kv_cache_bytes = "64MiB"
        max_num_seqs = 4
        max_waiting = 0
        session_keep_warm_secs = 30
        session_warm_max_blocks = 100
        "#,
        &[("TEAM_A_KEY", "sk-aaaa")],
    )
    .unwrap();
    assert_eq!(cfg.server.max_body_bytes, 1 << 20);
    assert_eq!(cfg.keys[0].secret.expose(), "sk-aaaa");
    assert_eq!(cfg.models[0].path, Path::new("/etc/sluice/weights/m1.gguf"));
    assert_eq!(cfg.models[0].engine.block_size, 32);
    assert_eq!(cfg.models[0].engine.kv_cache_bytes, 64 << 20);
    assert_eq!(cfg.models[0].engine.max_waiting, 0);
    assert_eq!(cfg.models[0].engine.max_num_batched_tokens, 512);
    assert_eq!(
        cfg.models[0].engine.session_keep_warm,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(cfg.models[0].engine.session_warm_max_blocks, Some(100));
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    let e = err_of("[server]\nlisten_addr = \"x\"\n", &[]);
    assert!(e.contains("listen_addr"), "{e}");
}

#[test]
fn unknown_section_is_refused() {
    let e = err_of("[caches]\nenabled = true\n", &[]);
    assert!(e.contains("caches"), "{e}");
}

#[test]
fn cache_section_resolves_with_defaults_and_names_bad_keys() {
    let cfg = load_str("", &[]).unwrap();
    assert!(!cfg.cache.enabled);
    assert_eq!(cfg.cache.backend, super::Backend::Memory);
    let cfg = load_str(
        "[cache]\nenabled = true\nttl_seconds = 60\nmax_bytes = \"1MiB\"\nsimilarity_threshold = 0.9\n",
        &[],
    )
    .unwrap();
    assert!(cfg.cache.enabled);
    assert_eq!(cfg.cache.ttl.as_secs(), 60);
    assert_eq!(cfg.cache.bounds.max_bytes, 1 << 20);
    let e = err_of("[cache]\nbackend = \"redis\"\n", &[]);
    assert!(e.contains("cache.redis_url"), "{e}");
    let cfg = load_str(
        "[cache]\nbackend = \"redis\"\n",
        &[("SLUICE_CACHE_REDIS_URL", "redis://127.0.0.1:6379")],
    )
    .unwrap();
    assert!(matches!(cfg.cache.backend, super::Backend::Redis { .. }));
    let e = err_of("[cache]\nsimilarity_threshold = 1.5\n", &[]);
    assert!(e.contains("cache.similarity_threshold"), "{e}");
    let e = err_of("[admin]\nkey_env = \"ADMIN\"\n", &[("ADMIN", "short")]);
    assert!(e.contains("admin"), "{e}");
    let cfg = load_str(
        "[admin]\nkey_env = \"ADMIN\"\n",
        &[("ADMIN", "0123456789abcdef")],
    )
    .unwrap();
    assert_eq!(cfg.admin_key.unwrap().expose(), "0123456789abcdef");
}

#[test]
fn wrong_type_names_the_key() {
    let e = err_of(
        "[[models]]\nid = \"m\"\npath = \"p\"\n[models.engine]\nblock_size = \"big\"\n",
        &[],
    );
    assert!(e.contains("block_size"), "{e}");
}

#[test]
fn requantize_takes_a_known_format_or_names_the_key() {
    let cfg = load_str(
        "[[models]]\nid = \"m\"\npath = \"p\"\nrequantize = \"q8_0\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        cfg.models[0].requantize,
        Some(sluice_models::WeightDType::Q8_0)
    );
    let e = err_of(
        "[[models]]\nid = \"m\"\npath = \"p\"\nrequantize = \"q3\"\n",
        &[],
    );
    assert!(e.starts_with("models[0].requantize"), "{e}");
}

#[test]
fn activation_dtype_takes_int8_or_f32_or_names_the_key() {
    let cfg = load_str(
        "[[models]]\nid = \"m\"\npath = \"p\"\nactivation_dtype = \"f32\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        cfg.models[0].activations,
        sluice_models::ActivationPrecision::F32
    );
    let e = err_of(
        "[[models]]\nid = \"m\"\npath = \"p\"\nactivation_dtype = \"fp8\"\n",
        &[],
    );
    assert!(e.starts_with("models[0].activation_dtype"), "{e}");
}

#[test]
fn zero_knob_names_the_key() {
    let e = err_of(
        "[[models]]\nid = \"m\"\npath = \"p\"\n[models.engine]\nmax_num_seqs = 0\n",
        &[],
    );
    assert!(e.starts_with("models[0].engine.max_num_seqs"), "{e}");
}

#[test]
fn inline_key_is_refused() {
    let e = err_of("[[auth.keys]]\ntenant = \"a\"\nkey = \"sk-123\"\n", &[]);
    assert!(e.starts_with("auth.keys[0].key:"), "{e}");
    assert!(!e.contains("sk-123"), "{e}");
}

#[test]
fn missing_key_variable_is_named() {
    let e = err_of("[[auth.keys]]\ntenant = \"a\"\nkey_env = \"NOPE\"\n", &[]);
    assert!(
        e.contains("auth.keys[0].key_env") && e.contains("NOPE"),
        "{e}"
    );
}

#[test]
fn non_loopback_without_keys_is_refused() {
    let e = err_of("[server]\nlisten = \"0.0.0.0:8080\"\n", &[]);
    assert!(
        e.starts_with("server.listen") && e.contains("allow_unauthenticated"),
        "{e}"
    );
    let ok = load_str(
        "[server]\nlisten = \"0.0.0.0:8080\"\nallow_unauthenticated = true\n",
        &[],
    );
    assert!(ok.is_ok());
}

#[test]
fn environment_overrides_the_file() {
    let cfg = load_str(
        "[server]\nlisten = \"127.0.0.1:1\"\n",
        &[
            ("SLUICE_LISTEN", "0.0.0.0:7000"),
            ("SLUICE_API_KEYS", "alpha:key-one, beta:key-two"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.server.listen.port(), 7000);
    let tenants: Vec<_> = cfg.keys.iter().map(|k| k.tenant.as_str()).collect();
    assert_eq!(tenants, ["alpha", "beta"]);
    assert_eq!(cfg.keys[1].secret.expose(), "key-two");
}

#[test]
fn malformed_keys_variable_does_not_echo_the_key() {
    let e = err_of("", &[("SLUICE_API_KEYS", "justasecret")]);
    assert!(
        e.starts_with("SLUICE_API_KEYS[0]") && !e.contains("justasecret"),
        "{e}"
    );
}

#[test]
fn duplicate_keys_are_refused() {
    let e = err_of("", &[("SLUICE_API_KEYS", "a:same,b:same")]);
    assert!(e.contains("reuses"), "{e}");
}

#[test]
fn duplicate_model_ids_are_refused() {
    let e = err_of(
        "[[models]]\nid = \"m\"\npath = \"a\"\n[[models]]\nid = \"m\"\npath = \"b\"\n",
        &[],
    );
    assert!(e.starts_with("models[1].id"), "{e}");
}

#[test]
fn bad_listen_is_named() {
    let e = err_of("[server]\nlisten = \"somewhere\"\n", &[]);
    assert!(e.starts_with("server.listen"), "{e}");
}

#[test]
fn model_flag_replaces_the_model_list() {
    let vars = |_: &str| None;
    let cfg = resolve(
        FileConfig::default(),
        Path::new("."),
        &Overrides {
            model: Some("/models/Some-Model.Q8_0.gguf".into()),
            ..Overrides::default()
        },
        &vars,
    )
    .unwrap();
    assert_eq!(cfg.models[0].id, "some-model.q8_0");
}

#[test]
fn missing_demo_model_names_the_fetch_command() {
    let mut cfg = load_str("", &[]).unwrap();
    cfg.models[0].path = sluice_models::demo_chat_model_path();
    if !cfg.models[0].path.exists() {
        let e = cfg.check_model_files().unwrap_err().to_string();
        assert!(e.contains("sluice fetch-models"), "{e}");
    }
}

#[test]
fn the_example_config_in_deploy_resolves() {
    let text = include_str!("../../../../deploy/sluice.example.toml");
    let cfg = load_str(text, &[("SLUICE_KEY_TEAM_A", "sk-example")]).unwrap();
    assert_eq!(cfg.keys[0].tenant, "team-a");
    assert_eq!(cfg.models[0].id, DEMO_MODEL_ID);
    assert_eq!(cfg.models[0].engine, EngineConfig::default());
    assert!(cfg.models[0].path.is_absolute(), "~ is expanded");
}

#[test]
fn server_max_in_flight_defaults_and_refuses_zero() {
    let cfg = load_str("", &[]).unwrap();
    assert_eq!(cfg.server.max_in_flight, super::DEFAULT_MAX_IN_FLIGHT);
    let cfg = load_str("[server]\nmax_in_flight = 3\n", &[]).unwrap();
    assert_eq!(cfg.server.max_in_flight, 3);
    let err = load_str("[server]\nmax_in_flight = 0\n", &[]).unwrap_err();
    assert!(err.to_string().contains("server.max_in_flight"), "{err}");
}

#[test]
fn a_key_can_mark_its_tenant_sensitive() {
    let cfg = load_str(
        "[[auth.keys]]\ntenant = \"hr\"\nkey_env = \"K\"\nsensitive = true\n",
        &[("K", "secret-1")],
    )
    .unwrap();
    assert!(cfg.keys[0].sensitive);
}

#[test]
fn a_regulated_key_needs_a_master_key() {
    let key = "[[auth.keys]]\ntenant = \"bank\"\nkey_env = \"K\"\nregulated = true\n";
    let err = load_str(key, &[("K", "secret-1")]).unwrap_err().to_string();
    assert!(err.starts_with("auth.keys[0].regulated"), "{err}");
    assert!(err.contains("master_key_env"), "{err}");
    let lists = "[regulated]\nteams = [\"risk\"]\n";
    let err = load_str(lists, &[]).unwrap_err().to_string();
    assert!(err.starts_with("regulated"), "{err}");

    let text = format!("{key}[regulated]\ntenants = [\"clinic\"]\nmaster_key_env = \"M\"\n");
    let master = "m".repeat(32);
    let cfg = load_str(&text, &[("K", "secret-1"), ("M", master.as_str())]).unwrap();
    assert!(cfg.keys[0].regulated && !cfg.keys[0].sensitive);
    assert!(cfg.regulated.covers("clinic", None));
    assert_eq!(
        cfg.regulated.master_key.as_ref().map(|(_, s)| s.expose()),
        Some(master.as_str())
    );
    let shown = cfg.to_redacted_toml();
    assert!(shown.contains("regulated = true"), "{shown}");
    assert!(shown.contains("<redacted: env M>"), "{shown}");
    assert!(!shown.contains(&master), "the master key printed: {shown}");
}

#[test]
fn a_gateway_only_config_loads_no_local_model() {
    let text = r#"
[[providers]]
kind = "openai"
name = "up"
base_url = "http://127.0.0.1:9/v1"

[[routes]]
model = "chat"
[[routes.deployments]]
name = "up-chat"
provider = "up"
upstream_model = "m"
"#;
    let cfg = load_str(text, &[]).unwrap();
    assert!(cfg.models.is_empty());
    assert_eq!(cfg.routes.len(), 1);
}

#[test]
fn an_encoder_may_not_take_a_chat_model_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[models]]\nid = \"same\"\npath = \"{p}\"\n\n[[encoders]]\nid = \"same\"\nkind = \"embedding\"\npath = \"{p}\"\n",
        p = dir.path().display()
    );
    let err = load_str(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("encoders[0].id"), "{err}");
    assert!(err.contains("already"), "{err}");
}

#[test]
fn guard_policies_resolve_per_section_key_and_route() {
    let text = format!(
        "{ROUTED}\n[guard]\naction = \"block\"\nscore = \"off\"\n\n\
         [[auth.keys]]\ntenant = \"t\"\nkey_env = \"K\"\nguard = \"flag\"\n"
    );
    let text = text.replace("seed = 3\n", "seed = 3\nguard = \"every\"\n");
    let cfg = load_str(&text, &[("K", "key-0123456789abcdef")]).unwrap();
    assert_eq!(cfg.guard.action, GuardAction::Block);
    assert_eq!(cfg.guard.score, GuardScoring::Off);
    assert_eq!(cfg.keys[0].guard, Some(GuardAction::Flag));
    assert_eq!(cfg.routes[0].guard, Some(GuardScoring::Every));

    let defaults = load_str("", &[]).unwrap();
    assert_eq!(defaults.guard.action, GuardAction::Flag);
    assert_eq!(defaults.guard.score, GuardScoring::Every);

    let err = err_of("[guard]\naction = \"warn\"\n", &[]);
    assert!(
        err.contains("guard.action") && err.contains("warn"),
        "{err}"
    );
    let err = err_of(
        "[[auth.keys]]\ntenant = \"t\"\nkey_env = \"K\"\nguard = \"maybe\"\n",
        &[("K", "key-0123456789abcdef")],
    );
    assert!(err.contains("auth.keys[0].guard"), "{err}");
    let err = err_of(
        &ROUTED.replace("seed = 3\n", "seed = 3\nguard = \"some\"\n"),
        &[],
    );
    assert!(err.contains("routes[0].guard"), "{err}");
}

#[test]
fn metrics_listen_is_an_address_of_its_own() {
    let cfg = load_str("[server]\nmetrics_listen = \"127.0.0.1:9100\"\n", &[]).unwrap();
    assert_eq!(
        cfg.server.metrics_listen,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert!(load_str("", &[]).unwrap().server.metrics_listen.is_none());
    let err = err_of("[server]\nmetrics_listen = \"nowhere\"\n", &[]);
    assert!(err.contains("server.metrics_listen"), "{err}");
    let err = err_of(
        "[server]\nlisten = \"127.0.0.1:9100\"\nmetrics_listen = \"127.0.0.1:9100\"\n",
        &[],
    );
    assert!(err.contains("server.metrics_listen"), "{err}");
}

#[test]
fn http_threads_default_to_half_the_cores_beside_models_all_without_and_refuse_zero() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The default config hosts the demo chat model and encoders.
    let cfg = load_str("", &[]).unwrap();
    assert_eq!(cfg.server.http_threads, (cores / 2).max(1));
    let gateway_only = "encoders = []\n\n[[providers]]\nkind = \"openai\"\nname = \"up\"\n\
        base_url = \"http://127.0.0.1:9/v1\"\n\n[[routes]]\nmodel = \"m\"\n\
        [[routes.deployments]]\nname = \"up\"\nprovider = \"up\"\nupstream_model = \"m\"\n";
    let cfg = load_str(gateway_only, &[]).unwrap();
    assert!(cfg.models.is_empty() && cfg.encoders.is_empty());
    assert_eq!(cfg.server.http_threads, cores);
    let cfg = load_str("[server]\nhttp_threads = 3\n", &[]).unwrap();
    assert_eq!(cfg.server.http_threads, 3);
    let err = err_of("[server]\nhttp_threads = 0\n", &[]);
    assert!(err.contains("server.http_threads"), "{err}");
}
