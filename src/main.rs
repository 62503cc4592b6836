//! `tollgate`: parse the command line, load config, init tracing, build, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::Config;

/// Usage-based threshold billing and auto-recharge with payment-gated commits, speaking
/// Metronome's API.
#[derive(Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (RocksDB in `storage.data_dir`).
    Serve {
        /// Config file layered over the built-in defaults (config/default.toml);
        /// TOLLGATE__SECTION__KEY environment variables override both.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the OpenAPI document of the API (what `GET /openapi.json` serves) and exit.
    Openapi,
    /// Load and validate the configuration, print it, and exit.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Ask a running server for an online backup of its data directory, written to DIR on the
    /// server's host (POST /v1/tollgate/backup; the token needs the `operator` scope).
    Backup {
        /// The server, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// A bearer token of the server's `auth.tokens` with the `operator` scope (better
        /// given as TOLLGATE_TOKEN, which `ps` and shell histories do not show).
        #[arg(long, env = "TOLLGATE_TOKEN", hide_env_values = true)]
        token: String,
        /// The new directory (absolute, not there yet) on the server's host.
        #[arg(long, value_name = "DIR")]
        to: String,
    },
    /// Capacity planning: load a server (started here, or --url) and report throughput,
    /// latency, CPU and memory; --sweep charts them against offered load.
    #[command(long_about = tollgate::bench::LONG_ABOUT)]
    Bench(Box<tollgate::bench::BenchArgs>),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(config) => config,
                Err(message) => {
                    eprintln!("tollgate: {message}");
                    return ExitCode::from(2);
                }
            };
            tollgate::startup::init_tracing(&config);
            match tollgate::startup::serve(config) {
                Ok(never) => match never {},
                Err(message) => {
                    eprintln!("tollgate: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench(args) => tollgate::bench::run(*args),
        Command::Backup { url, token, to } => match tollgate::startup::backup(&url, &token, &to) {
            Ok(receipt) => {
                println!("{receipt}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("tollgate: {message}");
                ExitCode::FAILURE
            }
        },
        Command::Openapi => {
            let document = tollgate::http::openapi::document();
            match serde_json::to_string_pretty(&document) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(config) => {
                println!("configuration is valid: {config:#?}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("tollgate: {message}");
                ExitCode::from(2)
            }
        },
    }
}
