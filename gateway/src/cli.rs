//! The command line: `sluice serve`, `check-config`, `models list`,
//! `fetch-models`, `guard train`, `keys`, `audit verify`.

mod audit;
mod keys;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{process_env, Config, ConfigError, Overrides};
use crate::server::{self, RunOptions};

/// The project's fetch script, embedded so an installed binary can run it.
const FETCH_MODELS_SCRIPT: &str = include_str!("../../scripts/fetch-models.sh");

/// Sluice: an LLM serving runtime and OpenAI-compatible gateway in one binary.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API. With no config and no --model, serves
    /// the demo model `smollm2-135m-instruct` on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// Parse and validate a config file (environment overrides included) and
    /// print the effective configuration, secrets redacted.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Inspect the configured models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Fetch the demo model weights into ~/.cache/sluice/models (or
    /// $SLUICE_MODELS_DIR), checking their sha256.
    FetchModels {
        /// Which weights to fetch.
        #[arg(default_value = "all", value_parser = ["chat", "embed", "guard-data", "guard-sources", "all"])]
        what: String,
    },
    /// The prompt-injection guard head.
    Guard {
        #[command(subcommand)]
        command: GuardCommand,
    },
    /// Virtual keys in the store the config names.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum GuardCommand {
    /// Fit the guard head on the S-Labs train split over the sentence
    /// encoder's embeddings, choose its threshold on the validation split,
    /// and write `<out>.safetensors` and `<out>.json`. With `--source` (or
    /// `--default-sources`): fit on several sources, calibrate, and choose
    /// `t_low` and `t_high` on their validation parts.
    Train(GuardTrainArgs),
    /// Hold each source out in turn, fit on the others, and print recall and
    /// false-positive rate on the held-out one, before (an existing head) and
    /// after, as a Markdown table.
    Evaluate(GuardEvaluateArgs),
}

/// The sources and fitting settings `train --source` and `evaluate` share.
#[derive(Debug, Args)]
struct SourcesArgs {
    /// A labelled source, `NAME=FILE[,FILE...]` (CSV `text,label`); repeat
    /// for each source.
    #[arg(long = "source")]
    sources: Vec<crate::guard::sources::SourceSpec>,
    /// The project's sources: those `sluice fetch-models guard-sources`
    /// fetches plus the hand-written sets in models/guard/data/.
    #[arg(long)]
    default_sources: bool,
    /// Obfuscated copies of positives: any of leet, case, zero-width, base64
    /// (comma-separated); empty for none.
    #[arg(long, default_value = "")]
    augment: String,
    /// Validation false-positive bound that places t_high (flag).
    #[arg(long, default_value_t = 0.01)]
    max_fpr_high: f64,
    /// Fit the head on every piece of a benign text that serving scores
    /// (its windows and sentences), not only its first window: serving
    /// takes the highest score of any piece, so a harmless sentence that
    /// scores high alone flags the whole text.
    #[arg(long)]
    fit_pieces: bool,
}

impl SourcesArgs {
    fn specs(&self) -> Vec<crate::guard::sources::SourceSpec> {
        let mut specs = if self.default_sources {
            crate::guard::sources::default_specs()
        } else {
            Vec::new()
        };
        specs.extend(self.sources.iter().cloned());
        specs
    }

    fn settings(
        &self,
        config: sluice_models::guard::train::TrainConfig,
        max_fpr_low: f64,
    ) -> Result<crate::guard::train_sources::FitSettings, String> {
        let augment = self
            .augment
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                crate::guard::augment::Obfuscation::parse(k).ok_or_else(|| {
                    format!("--augment: `{k}` is not leet, case, zero-width or base64")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::guard::train_sources::FitSettings {
            config,
            augment,
            max_fpr_low,
            max_fpr_high: self.max_fpr_high,
            fit_pieces: self.fit_pieces,
        })
    }
}

#[derive(Debug, Args)]
struct GuardEvaluateArgs {
    #[command(flatten)]
    sources: SourcesArgs,
    /// The "before" head (default: the built-in one).
    #[arg(long)]
    head: Option<PathBuf>,
    #[arg(long)]
    encoder: Option<PathBuf>,
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    embedding_model: String,
    #[arg(long, default_value_t = 64)]
    hidden_units: usize,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f32,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Validation false-positive bound that places t_low.
    #[arg(long, default_value_t = 0.05)]
    max_fpr: f64,
    #[arg(long)]
    embedding_cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GuardTrainArgs {
    /// Training CSV (`text,label`; default: the S-Labs train split).
    #[arg(long)]
    train: Option<PathBuf>,
    /// Validation CSV, used only to choose the threshold and report figures.
    #[arg(long)]
    validation: Option<PathBuf>,
    /// The sentence-transformers folder (default: the demo all-MiniLM-L6-v2).
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// The encoder's model id, recorded in the metadata.
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    embedding_model: String,
    /// Output path without extension.
    #[arg(long, default_value = "models/guard/minilm-prompt-injection")]
    out: PathBuf,
    /// Hidden ReLU units; 0 fits logistic regression.
    #[arg(long, default_value_t = 0)]
    hidden_units: usize,
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f32,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// The false-positive bound the threshold is chosen under.
    #[arg(long, default_value_t = 0.05)]
    max_fpr: f64,
    /// Cache embeddings here between runs (keyed by the CSV's sha256).
    #[arg(long)]
    embedding_cache: Option<PathBuf>,
    #[command(flatten)]
    sources: SourcesArgs,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The TOML config file.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Serve this model (a .gguf file or a Hugging Face folder) instead of
    /// the config's models.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The id clients use for --model (default: the file or folder name).
    #[arg(long)]
    model_id: Option<String>,
    /// Address to listen on, such as 127.0.0.1:8080 (overrides the config
    /// and SLUICE_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Listen beyond loopback even though no API key is configured.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Shut down when stdin closes (for supervisors and test harnesses).
    #[arg(long, hide = true)]
    shutdown_on_stdin_eof: bool,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List the models a config (or the defaults) would serve, and whether
    /// their weights are on disk.
    List {
        /// The TOML config file.
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { file } => check_config(file),
        Command::Models {
            command: ModelsCommand::List { config },
        } => models_list(config),
        Command::FetchModels { what } => fetch_models(&what),
        Command::Guard {
            command: GuardCommand::Train(args),
        } => guard_train(args),
        Command::Guard {
            command: GuardCommand::Evaluate(args),
        } => guard_evaluate(args),
        Command::Keys { command } => keys::run(command),
        Command::Audit { command } => audit::run(command),
    }
}

fn guard_train(args: GuardTrainArgs) -> ExitCode {
    let GuardTrainArgs {
        train,
        validation,
        encoder,
        embedding_model,
        out,
        hidden_units,
        epochs,
        batch_size,
        learning_rate,
        weight_decay,
        seed,
        max_fpr,
        embedding_cache,
        sources,
    } = args;
    let splits = crate::guard::dataset::s_labs_dir();
    // The command as typed minus the binary's own path, which is machine-specific.
    let command = std::iter::once("sluice".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let config = sluice_models::guard::train::TrainConfig {
        hidden_units,
        epochs,
        batch_size,
        learning_rate,
        weight_decay,
        seed,
    };
    let specs = sources.specs();
    if !specs.is_empty() {
        if train.is_some() || validation.is_some() {
            eprintln!("sluice: guard train: --train/--validation and --source are exclusive");
            return ExitCode::FAILURE;
        }
        let settings = match sources.settings(config, max_fpr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sluice: guard train: {e}");
                return ExitCode::FAILURE;
            }
        };
        let job = crate::guard::train_sources::SourcesJob {
            sources: specs,
            encoder_dir: encoder.unwrap_or_else(sluice_models::demo_embedding_model_dir),
            embedding_model,
            out,
            settings,
            embedding_cache,
            command,
        };
        return match crate::guard::train_sources::run(&job) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: guard train: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let job = crate::guard::train::TrainJob {
        train_csv: train.unwrap_or_else(|| splits.join("train.csv")),
        validation_csv: validation.unwrap_or_else(|| splits.join("validation.csv")),
        encoder_dir: encoder.unwrap_or_else(sluice_models::demo_embedding_model_dir),
        embedding_model,
        out,
        config,
        max_false_positive_rate: max_fpr,
        embedding_cache,
        command,
    };
    match crate::guard::train::run(&job) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: guard train: {e}");
            ExitCode::FAILURE
        }
    }
}

fn guard_evaluate(args: GuardEvaluateArgs) -> ExitCode {
    let GuardEvaluateArgs {
        sources,
        head,
        encoder,
        embedding_model,
        hidden_units,
        epochs,
        batch_size,
        learning_rate,
        weight_decay,
        seed,
        max_fpr,
        embedding_cache,
    } = args;
    let fail = |e: String| {
        eprintln!("sluice: guard evaluate: {e}");
        ExitCode::FAILURE
    };
    let config = sluice_models::guard::train::TrainConfig {
        hidden_units,
        epochs,
        batch_size,
        learning_rate,
        weight_decay,
        seed,
    };
    let settings = match sources.settings(config, max_fpr) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut specs = sources.specs();
    if specs.is_empty() {
        specs = crate::guard::sources::default_specs();
    }
    let before = match head {
        None => crate::guard::built_in_head(),
        Some(path) => sluice_models::guard::GuardHead::load(&path)
            .and_then(|h| {
                sluice_models::guard::GuardHeadMeta::load(
                    &sluice_models::guard::GuardHeadMeta::path_for(&path),
                )
                .map(|m| (h, m))
            })
            .map_err(|e| e.to_string()),
    };
    let before = match before {
        Ok((h, meta)) => (h, meta.threshold),
        Err(e) => return fail(e),
    };
    let job = crate::guard::evaluate::EvaluateJob {
        sources: specs,
        encoder_dir: encoder.unwrap_or_else(sluice_models::demo_embedding_model_dir),
        embedding_model,
        settings,
        before,
        embedding_cache,
    };
    match crate::guard::evaluate::run(&job) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("sluice: bad configuration: {e}");
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> ExitCode {
    let ServeArgs {
        config,
        model,
        model_id,
        listen,
        allow_unauthenticated,
        shutdown_on_stdin_eof,
    } = args;
    let overrides = Overrides {
        listen,
        model,
        model_id,
        allow_unauthenticated,
    };
    let config = match Config::load(config.as_deref(), &overrides, &process_env)
        .and_then(|c| c.check_model_files().map(|()| c))
    {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    crate::telemetry::logs::set_format(config.telemetry.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.http_threads)
        .enable_all()
        .thread_name("sluice-http")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(server::run(
        config,
        RunOptions {
            shutdown_on_stdin_eof,
        },
    ));
    // A model still loading holds a blocking thread that cannot be stopped;
    // do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: PathBuf) -> ExitCode {
    let config = match Config::load(Some(&file), &Overrides::default(), &process_env) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    print!("{}", config.to_redacted_toml());
    if let Err(e) = config.check_model_files() {
        return config_error(&e);
    }
    eprintln!("sluice: {} is valid", file.display());
    ExitCode::SUCCESS
}

fn models_list(config: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config.as_deref(), &Overrides::default(), &process_env) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let width = config
        .models
        .iter()
        .map(|m| m.id.len())
        .max()
        .unwrap_or(2)
        .max(2);
    println!("{:width$}  {:8}  PATH", "ID", "WEIGHTS");
    for m in &config.models {
        let state = if m.path.exists() {
            "present"
        } else {
            "missing"
        };
        println!("{:width$}  {state:8}  {}", m.id, m.path.display());
    }
    if let Err(e) = config.check_model_files() {
        eprintln!("sluice: {e}");
    }
    ExitCode::SUCCESS
}

fn fetch_models(what: &str) -> ExitCode {
    // `bash -c SCRIPT NAME ARG`: NAME becomes $0 and ARG $1, as if the
    // script file had been run; stdin stays free for the script's tools.
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(FETCH_MODELS_SCRIPT)
        .arg("fetch-models.sh")
        .arg(what)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("sluice: fetching the models failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice: cannot run bash to fetch the models: {e}");
            ExitCode::FAILURE
        }
    }
}
