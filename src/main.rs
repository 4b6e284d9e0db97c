//! The `triage-loop` command line: serve, validate, replay, demo, issues, ship, ignore, gate, eval.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use triage_loop::admin::client::AdminClient;
use triage_loop::config;

/// mimalloc rather than glibc's allocator: the failure side allocates and frees small objects
/// across threads (decoded signal spans, failure records), and under the same load a failed run
/// costs ~17% fewer instructions with it, a clean request ~5% fewer (`bench/callgrind.sh`). Built
/// with transparent huge pages off (`no_thp`): with them, idle RSS went from 25 to 55 MiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "triage-loop",
    version,
    about = "Finds, classifies and routes AI-agent failures inside your OpenTelemetry pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor: OTLP in, failures tagged, OTLP out.
    Serve {
        /// collector-config.yaml; without it the built-in defaults are used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file without starting.
    Validate {
        /// The file to check.
        file: PathBuf,
    },
    /// Send OTLP/JSON or protobuf files (as SDKs and collectors export them) to a receiver.
    Replay {
        /// Files to send: .json / .jsonl (OTLP/JSON, one request per line or one document) or
        /// .pb / .binpb (one protobuf ExportTraceServiceRequest).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// OTLP/HTTP base URL of the receiver.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        endpoint: String,
    },
    /// Start the processor, a printing downstream and a synthetic agent fleet; show what was
    /// tagged per class.
    Demo {
        /// How long the fleet sends traffic, e.g. 10s.
        #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Agent runs (traces) per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
    /// List issues (failures grouped by fingerprint) with their state and loop latency.
    Issues {
        /// Only this class.
        #[arg(long)]
        class: Option<String>,
        /// Only this state: open, dispatched, shipped, verified, regressed, ignored.
        #[arg(long)]
        state: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Mark an issue's fix as shipped in a version; it is verified once that version runs
    /// `verify_window` with no recurrence.
    Ship {
        /// The issue id.
        issue: i64,
        /// The version the fix shipped in (the service's `service.version`).
        #[arg(long)]
        version: String,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Ignore an issue for good: no more dispatches or regressions, failures only count.
    Ignore {
        /// The issue id.
        issue: i64,
        /// Why, kept with the transition.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Failures waiting for a person: no rule decided them, they are under `min_confidence`,
    /// or they were sampled for audit. One line per issue.
    Queue {
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Give a failure's whole issue a class (source=human). A changed class re-routes the
    /// issue: its dispatches so far are superseded and the new class's path is dispatched.
    Label {
        /// The failure id (from `triage-loop queue`).
        failure: i64,
        /// One of the taxonomy's classes.
        class: String,
        /// Why, kept with the label.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Is the loop fast enough to take on more use cases? Exit 0 pass, 1 fail, 2 error.
    Gate {
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Cross-validate the classifier (rules, learned model, cascade) on a labelled corpus: DIR
    /// holds OTLP/JSON trace files and labels.jsonl ({"trace_id": "<32 hex>", "class": "..."}
    /// per line).
    Eval {
        /// The corpus directory.
        dir: PathBuf,
        /// Number of folds.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Seed of the deterministic shuffle into folds.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// collector-config.yaml for the taxonomy, rules and model settings; built-in defaults
        /// without.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct AdminArg {
    /// Base URL of triage-loop's admin listener.
    #[arg(long, env = "TRIAGE_ADMIN", default_value = triage_loop::admin::client::DEFAULT_ADMIN)]
    admin: String,
    /// A file holding the admin API's bearer token (when its `auth` is configured). Without
    /// it, the token is taken from the TRIAGE_TOKEN environment variable, if set.
    #[arg(long, env = "TRIAGE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// A PEM certificate to trust for an https:// admin listener (e.g. its self-signed one).
    #[arg(long, env = "TRIAGE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) to present to an admin listener that requires one
    /// (`tls.client_ca_file`); needs --client-key.
    #[arg(long, env = "TRIAGE_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, env = "TRIAGE_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl AdminArg {
    /// A client of the admin API, with the bearer token from `--token-file` or `TRIAGE_TOKEN`.
    fn client(&self) -> anyhow::Result<AdminClient> {
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}: cannot read", path.display()))?,
            ),
            None => std::env::var("TRIAGE_TOKEN").ok(),
        };
        let token = token
            .map(|t| {
                config::BearerToken::new(t.trim())
                    .map_err(|why| anyhow::anyhow!("admin bearer token: {why}"))
            })
            .transpose()?;
        let ca = self
            .ca_file
            .as_ref()
            .map(|path| {
                let pem = std::fs::read(path)
                    .with_context(|| format!("--ca-file {}: cannot read", path.display()))?;
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("--ca-file {}: not a PEM certificate", path.display()))
            })
            .transpose()?;
        AdminClient::new(&self.admin, token, ca, self.identity()?)
    }

    /// The client certificate and key of `--client-cert` / `--client-key`, when given.
    fn identity(&self) -> anyhow::Result<Option<reqwest::Identity>> {
        let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) else {
            return Ok(None);
        };
        let mut pem = std::fs::read(cert)
            .with_context(|| format!("--client-cert {}: cannot read", cert.display()))?;
        pem.push(b'\n');
        // The key's error never quotes the file: it is a secret.
        pem.extend(
            std::fs::read(key)
                .with_context(|| format!("--client-key {}: cannot read", key.display()))?,
        );
        reqwest::Identity::from_pem(&pem)
            .map(Some)
            .with_context(|| {
                format!(
                    "--client-cert {} / --client-key {}: not a PEM certificate and private key",
                    cert.display(),
                    key.display()
                )
            })
    }
}

fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => {
            init_logging("info");
            serve(config).await
        }
        Command::Validate { file } => validate(&file),
        Command::Replay { files, endpoint } => {
            init_logging("warn");
            triage_loop::replay::run(&files, &endpoint).await
        }
        Command::Demo { duration, rate } => {
            init_logging("warn");
            triage_loop::demo::run(duration, rate).await
        }
        Command::Issues {
            class,
            state,
            agent,
            admin,
        } => issues(&admin, class, state, agent).await,
        Command::Ship {
            issue,
            version,
            admin,
        } => ship(&admin, issue, &version).await,
        Command::Ignore {
            issue,
            reason,
            admin,
        } => ignore(&admin, issue, reason.as_deref()).await,
        Command::Queue { limit, admin } => queue(&admin, limit).await,
        Command::Label {
            failure,
            class,
            note,
            admin,
        } => label(&admin, failure, &class, &note).await,
        Command::Gate { admin } => return gate(&admin).await,
        Command::Eval {
            dir,
            folds,
            seed,
            config,
            json,
        } => {
            init_logging("warn");
            eval(&dir, folds, seed, config, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("triage-loop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let loaded = match path {
        Some(p) => config::load_file(&p)?,
        None => config::load_default(),
    };
    let running = triage_loop::service::start(loaded).await?;
    running.run_until_signal().await;
    Ok(())
}

fn validate(file: &std::path::Path) -> anyhow::Result<()> {
    let loaded = config::load_file(file)?;
    println!(
        "{}: ok — taxonomy {} v{} ({}), {} rules, fallback class {}",
        file.display(),
        loaded.taxonomy.name,
        loaded.taxonomy.version,
        loaded.taxonomy.class_names().join(", "),
        loaded.rules.len(),
        loaded.fallback
    );
    Ok(())
}

fn eval(
    dir: &std::path::Path,
    folds: usize,
    seed: u64,
    config: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let opts = triage_loop::eval::EvalOptions {
        folds,
        seed,
        config,
    };
    let report = triage_loop::eval::run(dir, &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", triage_loop::eval::render(&report));
    }
    Ok(())
}

async fn issues(
    admin: &AdminArg,
    class: Option<String>,
    state: Option<String>,
    agent: Option<String>,
) -> anyhow::Result<()> {
    let client = admin.client()?;
    print!("{}", client.issues_table(class, state, agent).await?);
    Ok(())
}

async fn ship(admin: &AdminArg, issue: i64, version: &str) -> anyhow::Result<()> {
    let client = admin.client()?;
    let answer = client.ship(issue, version).await?;
    let state = answer["issue"]["state"].as_str().unwrap_or("?");
    println!("issue {issue}: {state} in {version}");
    Ok(())
}

async fn ignore(admin: &AdminArg, issue: i64, reason: Option<&str>) -> anyhow::Result<()> {
    let client = admin.client()?;
    let answer = client.ignore(issue, reason).await?;
    let state = answer["issue"]["state"].as_str().unwrap_or("?");
    println!("issue {issue}: {state}");
    Ok(())
}

async fn queue(admin: &AdminArg, limit: Option<u32>) -> anyhow::Result<()> {
    let client = admin.client()?;
    print!("{}", client.queue_table(limit).await?);
    Ok(())
}

async fn label(admin: &AdminArg, failure: i64, class: &str, note: &str) -> anyhow::Result<()> {
    let client = admin.client()?;
    let answer = client.label(failure, class, note).await?;
    let issue = &answer["issue"];
    let id = issue["id"].as_i64().unwrap_or_default();
    let from = answer["label"]["from_class"].as_str().unwrap_or("?");
    if answer["rerouted"].as_bool() == Some(true) {
        println!(
            "issue {id}: re-routed {from} -> {class} ({}), {} dispatch(es) superseded, {} enqueued",
            issue["remediation"].as_str().unwrap_or("?"),
            answer["superseded"],
            answer["dispatches_enqueued"]
        );
    } else if from == class {
        println!("issue {id}: class {class} confirmed");
    } else {
        println!(
            "issue {id}: relabelled {from} -> {class} (state {}, not re-routed)",
            issue["state"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Exit 0 when the gate passes, 1 when it fails, 2 when it cannot be asked.
async fn gate(admin: &AdminArg) -> ExitCode {
    let report = match admin.client() {
        Ok(client) => client.gate().await,
        Err(e) => Err(e),
    };
    match report {
        Ok(r) => {
            print!("{}", r.to_table());
            if r.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("triage-loop: {e:#}");
            ExitCode::from(2)
        }
    }
}
