//! The `attrelay` command: argument parsing only; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use attrelay::commands::{self, EXIT_USAGE, check::CheckArgs, inspect::InspectArgs, queue};
use attrelay::delivery::control::Action;
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
    Check(CheckArgs),
    /// Certificate tools.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Policy tools: validate a component, compare two on recorded decisions.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Load an SMTP server: sessions at once, messages per session, STARTTLS
    /// with a client certificate; messages per second and latency per stage.
    Bench(commands::bench::BenchArgs),
    /// The queue: list, show, and act on messages (through the running
    /// relay, or on its spool when it is stopped).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// From an on-premises server's logs to the fix.
    Diagnose {
        #[command(subcommand)]
        command: DiagnoseCommand,
    },
    /// Tenant directory tools.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
}

#[derive(Subcommand)]
enum DiagnoseCommand {
    /// Read Exchange send protocol logs (2010, 2013 and later) and say, for
    /// each certificate the server sent, which connector and tenant it is
    /// attributed to or why not, and the fix. Exit 1 unless every
    /// certificate is attributed.
    SendLog(commands::diagnose::SendLogArgs),
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Every warning about the tenants and connectors, with file and line:
    /// names or ranges two tenants share, ranges wider than a /16 or /48,
    /// tenants that cannot relay, certificate connectors without client_ca.
    /// Exit 1 when there is any.
    Lint {
        /// The relay's configuration (default: the embedded demo).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check everything serve checks before it listens (certificates, keys,
    /// CA files, policies, writable directories), binding and writing
    /// nothing; exit 1 with every problem listed.
    Test {
        /// The configuration to test (default: the embedded demo).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the configuration in effect as TOML: the keys the file sets,
    /// each with the value the relay uses (like postconf -n).
    Show {
        /// The configuration to show (default: the embedded demo).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Every key, the defaults written out (like postconf).
        #[arg(long)]
        defaults: bool,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List queued messages from the spool, oldest first (like mailq).
    List {
        /// The relay's configuration (for its spool path).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        filter: queue::Filter,
        /// One JSON array, as GET /queue returns it.
        #[arg(long)]
        json: bool,
    },
    /// Show one queued message: envelope, each recipient's state and last
    /// reply, the header section.
    Show {
        id: String,
        /// The relay's configuration (for its spool path).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// As GET /queue/ID returns it.
        #[arg(long)]
        json: bool,
    },
    /// Delete messages: never attempted again, no DSN.
    Delete(QueueAction),
    /// Hold messages: not attempted, and not ageing, until released.
    Hold(QueueAction),
    /// Release held messages: due now.
    Release(QueueAction),
    /// Make messages due now (without ids: every waiting message).
    Flush(QueueAction),
    /// Return messages to their senders now: a DSN with --reason, then gone.
    Bounce {
        #[command(flatten)]
        action: QueueAction,
        /// Why, for the sender (one line; cut at 200 characters).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

/// What every queue action takes. Acts through the running relay's admin
/// endpoint, or on the spool when no relay runs on it.
#[derive(clap::Args)]
struct QueueAction {
    #[command(flatten)]
    targets: queue::Targets,
    /// The relay's configuration: its spool, and its admin endpoint and token.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// One JSON array of reports.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Tell which world a component implements (a base policy or a tenant's
    /// rules), compile, link and configure it, and run the built-in scenarios
    /// through it.
    Validate {
        component: PathBuf,
        /// Take the policy settings from this configuration.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A tenant policy: take this tenant's settings and budgets from --config.
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
        /// A setting KEY=VALUE, over the configuration's (repeatable).
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Replay a decision log through two components and print the differences.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long, value_name = "FILE")]
        decisions: PathBuf,
        /// Configuration with the tenants and settings (default: the embedded demo).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Show what a certificate carries and how every connector sees it.
    Inspect(InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Log lines are buffered and written out by a thread of their own
    // (`attrelay::logs`); the flusher writes the rest when main returns.
    let (stderr, flush_on_exit) = attrelay::logs::buffered_stderr();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "attrelay=info".into()),
        )
        .with_writer(stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check(args) => commands::check::check(&args, &mut stdout),
        Command::Bench(args) => bench(&args, &mut stdout),
        Command::Cert {
            command: CertCommand::Inspect(args),
        } => commands::inspect::inspect(&args, &mut stdout),
        Command::Policy {
            command:
                PolicyCommand::Validate {
                    component,
                    config,
                    tenant,
                    settings,
                },
        } => commands::policy::validate(
            &commands::policy::ValidateArgs {
                component: &component,
                config: config.as_ref(),
                tenant: tenant.as_deref(),
                settings: &settings,
            },
            &mut stdout,
        ),
        Command::Policy {
            command:
                PolicyCommand::Diff {
                    old,
                    new,
                    decisions,
                    config,
                },
        } => commands::policy::diff(&old, &new, &decisions, config.as_ref(), &mut stdout),
        Command::Config {
            command: ConfigCommand::Test { config },
        } => commands::config::test(config.as_ref(), &mut stdout),
        Command::Config {
            command: ConfigCommand::Show { config, defaults },
        } => commands::config::show(config.as_ref(), defaults, &mut stdout),
        Command::Queue { command } => queue_command(command, &mut stdout),
        Command::Diagnose {
            command: DiagnoseCommand::SendLog(args),
        } => commands::diagnose::send_log(&args, &mut stdout),
        Command::Directory {
            command: DirectoryCommand::Lint { config, json },
        } => commands::directory::lint(config.as_ref(), json, &mut stdout),
    };
    let _ = stdout.flush();
    // The log lines before the outcome, in order.
    drop(flush_on_exit);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("attrelay: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn queue_command(command: QueueCommand, out: &mut dyn Write) -> Result<u8, commands::UsageError> {
    let (action, a) = match command {
        QueueCommand::List {
            config,
            filter,
            json,
        } => return queue::list(config.as_ref(), &filter, json, out),
        QueueCommand::Show { id, config, json } => {
            return queue::show(config.as_ref(), &id, json, out);
        }
        QueueCommand::Delete(a) => (Action::Delete, a),
        QueueCommand::Hold(a) => (Action::Hold, a),
        QueueCommand::Release(a) => (Action::Release, a),
        QueueCommand::Flush(a) => (Action::Flush, a),
        QueueCommand::Bounce { action, reason } => (
            Action::Bounce(attrelay::delivery::control::operator_reason(
                reason.as_deref().unwrap_or(""),
            )),
            action,
        ),
    };
    queue::act(a.config.as_ref(), action, &a.targets, a.json, out)
}

/// Runs `attrelay bench` on a runtime of its own.
fn bench(
    args: &commands::bench::BenchArgs,
    out: &mut dyn Write,
) -> Result<u8, commands::UsageError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("attrelay-bench")
        .build()
        .map_err(commands::UsageError::new)?;
    runtime.block_on(commands::bench::bench(args, out))
}

/// Runs the relay until SIGTERM or SIGINT.
fn serve(config: Option<PathBuf>) -> Result<u8, commands::UsageError> {
    use commands::UsageError;
    let embedded = config.is_none();
    let cfg = commands::load_config(config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("attrelay")
        .build()
        .map_err(UsageError::new)?;
    runtime.block_on(async {
        let handle = attrelay::relay::start(&cfg).await.map_err(|e| UsageError(format!("{e:#}")))?;
        let eval = handle.context.evaluation.load();
        let mut out = std::io::stdout().lock();
        for a in &handle.addrs {
            let _ = writeln!(out, "attrelay: listening on {a} as {}", cfg.server.hostname);
        }
        if let Some(a) = handle.admin {
            let _ = writeln!(out, "attrelay: admin endpoint on http://{a}/ (GET /metrics, /status, /queue[/ID]; POST /reload, /queue/flush, /queue/ID/ACTION; DELETE /queue/ID)");
        }
        if let Some(p) = &cfg.policyd {
            for l in &p.listen {
                // Port 0 resolves to the bound port.
                let shown = match l {
                    attrelay::policyd::PolicydListen::Tcp(a) if a.port() == 0 => handle
                        .policyd
                        .iter()
                        .find(|b| b.ip() == a.ip())
                        .map(|b| format!("inet:{b}"))
                        .unwrap_or_else(|| format!("inet:{a}")),
                    attrelay::policyd::PolicydListen::Tcp(a) => format!("inet:{a}"),
                    attrelay::policyd::PolicydListen::Unix(p) => format!("unix:{}", p.display()),
                };
                let _ = writeln!(out, "attrelay: Postfix policy service on {shown} (check_policy_service {shown})");
            }
        }
        let _ = writeln!(out, "attrelay: policy {} (sha256 {})", eval.policy.origin(), eval.policy.sha256());
        let _ = writeln!(out, "attrelay: spool {}, delivery {}", cfg.spool.display(), cfg.delivery.next_hop);
        if embedded {
            let a = handle.addrs.first().map(|a| a.to_string()).unwrap_or_default();
            let _ = writeln!(out, "attrelay: embedded demo: tenant 'demo' owns demo.test; this machine is its on-premises server. Try:");
            let _ = writeln!(out, "  swaks --server {a} --from alice@demo.test --to bob@example.org              # relayed (250)");
            let _ = writeln!(out, "  swaks --server {a} --from alice@elsewhere.example --to bob@example.org     # refused: 550 5.7.64 ... ATTR36");
            let _ = writeln!(out, "  swaks --server {a} --tls --from alice@demo.test --to bob@example.org        # with STARTTLS");
        }
        let _ = out.flush();
        drop(out);
        let token = handle.shutdown.clone();
        tokio::spawn(async move {
            attrelay::relay::shutdown_signal().await;
            token.cancel();
        });
        handle.wait().await;
        Ok(commands::EXIT_OK)
    })
}
