//! The `attrelay` command: argument parsing only; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use attrelay::commands::{self, EXIT_USAGE, check::CheckArgs, inspect::InspectArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attrelay",
    version,
    about = "Multi-tenant SMTP relay with tenant attribution as a WebAssembly policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (without --config: the embedded demo configuration).
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Decide one session the way the relay would, and explain the decision.
    Check {
        /// Configuration file (default: the embedded demo configuration).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The client's IP address.
        #[arg(long)]
        ip: String,
        /// PEM file with the client certificate, leaf first, then intermediates.
        #[arg(long, value_name = "PEM")]
        cert: Option<PathBuf>,
        /// The session used STARTTLS (implied by --cert).
        #[arg(long)]
        tls: bool,
        /// The EHLO name (default: the IP address literal).
        #[arg(long)]
        helo: Option<String>,
        /// The envelope sender; '' for the null sender <>.
        #[arg(long, value_name = "ADDR", allow_hyphen_values = true)]
        from: String,
        /// A recipient (repeat for several).
        #[arg(long = "to", value_name = "ADDR", required = true)]
        to: Vec<String>,
        /// The session time, RFC 3339 (default: now).
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// A policy component to use instead of the configured one.
        #[arg(long, value_name = "WASM")]
        policy: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Certificate tools.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Show what a certificate carries and how every connector sees it.
    Inspect {
        /// PEM file, leaf first, then intermediates.
        pem: PathBuf,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The time to verify at, RFC 3339 (default: now).
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "attrelay=info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check {
            config,
            ip,
            cert,
            tls,
            helo,
            from,
            to,
            at,
            policy,
            json,
        } => commands::check::check(
            &CheckArgs {
                config,
                ip,
                cert,
                tls,
                helo,
                from,
                to,
                at,
                policy,
                json,
            },
            &mut stdout,
        ),
        Command::Cert {
            command: CertCommand::Inspect { pem, config, at },
        } => commands::inspect::inspect(&InspectArgs { pem, config, at }, &mut stdout),
    };
    let _ = stdout.flush();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("attrelay: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Until the SMTP server lands, `serve` validates the configuration and the
/// policy exactly as the server will, and says what can be tried today.
fn serve(config: Option<PathBuf>) -> Result<u8, commands::UsageError> {
    use attrelay::policy::{EngineLimits, PolicyEngine, PolicySource};
    let cfg = commands::load_config(config.as_deref())?;
    let engine =
        PolicyEngine::new(EngineLimits::from(&cfg.policy)).map_err(commands::UsageError::new)?;
    let policy = commands::load_policy(
        &cfg,
        &engine,
        &PolicySource::from_option(cfg.policy.component.as_deref()),
    )?;
    println!(
        "attrelay: configuration {} is valid ({} tenants)",
        cfg.source.display(),
        cfg.tenants.len()
    );
    println!(
        "attrelay: policy {} (sha256 {}) loaded and configured",
        policy.origin(),
        policy.sha256()
    );
    println!(
        "attrelay: the SMTP server (listening on {}) arrives with the SMTP relay issue; until then, try:",
        cfg.server
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  attrelay check --ip 127.0.0.1 --from alice@demo.test --to bob@example.org");
    println!("  attrelay check --ip 192.0.2.1 --from alice@demo.test --to bob@example.org");
    Ok(commands::EXIT_OK)
}
