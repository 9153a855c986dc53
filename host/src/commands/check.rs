//! `attrelay check`: runs exactly what the relay runs for one session — the
//! same configuration, directory, certificate verification and evaluation
//! (base policy, tenant policies, recipient lists, the shadow beside them) —
//! and reports, per recipient, the reply, the tenant and why.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use attrelay_policy::model::{Action, SessionFacts, TlsFacts, Verdict};
use serde::Serialize;

use super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config, session_time};
use crate::certificate::{TrustAnchors, inspect_chain, unix_time};
use crate::evaluation::Stage;
use crate::pem::read_certificates;
use crate::policy::{EngineLimits, PolicyEngine};

/// Policy instances a check may hold: the base policy, the shadow and the
/// tenant policies of one session at their most.
const CHECK_INSTANCES: u32 = crate::evaluation::MAX_INSTANCES_PER_SESSION as u32 + 2;

/// The TLS version and cipher `check` assumes for a session with `--cert` or
/// `--tls` (the relay negotiates TLS 1.3 with every modern client).
pub const ASSUMED_TLS_PROTOCOL: &str = "TLSv1.3";
pub const ASSUMED_TLS_CIPHER: &str = "TLS_AES_256_GCM_SHA384";

/// The arguments of `attrelay check` (parsed by clap in the binary).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Configuration file (default: the embedded demo configuration).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The client's IP address.
    #[arg(long)]
    pub ip: String,
    /// PEM file with the client certificate, leaf first, then intermediates.
    #[arg(long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// The session used STARTTLS (implied by --cert).
    #[arg(long)]
    pub tls: bool,
    /// The EHLO name (default: the IP address literal).
    #[arg(long)]
    pub helo: Option<String>,
    /// The envelope sender; '' for the null sender <>.
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true)]
    pub from: String,
    /// A recipient (repeat for several).
    #[arg(long = "to", value_name = "ADDR", required = true)]
    pub to: Vec<String>,
    /// The session time, RFC 3339 (default: now).
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// A policy component to use instead of the configured one.
    #[arg(long, value_name = "WASM")]
    pub policy: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub explanation: Vec<String>,
    pub headers: Vec<(String, String)>,
}

impl From<Verdict> for Reply {
    /// The reply, and in `headers` the fields the relay would add for it:
    /// its grace-period warning first, then the policy's own.
    fn from(v: Verdict) -> Self {
        let warning = attrelay_policy::replies::grace_warning(&v).map(|w| {
            (
                attrelay_policy::replies::WARNING_HEADER.to_string(),
                w.to_string(),
            )
        });
        Reply {
            code: v.code,
            enhanced: v.enhanced,
            text: v.text,
            tenant: v.tenant,
            reason: v.reason,
            explanation: v.explanation,
            headers: warning
                .into_iter()
                .chain(v.headers.into_iter().map(|h| (h.name, h.value)))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RecipientReport {
    pub rcpt: String,
    #[serde(flatten)]
    pub reply: Reply,
    /// The shadow candidate's reply, when one is configured and its
    /// decision differs (it never decides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Reply>,
    /// Where an accepted recipient's mail would be delivered: its domain's
    /// route, or `[delivery]`'s next hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub policy: String,
    /// The sender as judged: canonical, empty for the null sender.
    pub sender: String,
    pub mail_from: Reply,
    /// The shadow candidate's reply to MAIL FROM, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_from_shadow: Option<Reply>,
    pub recipients: Vec<RecipientReport>,
}

/// The address as the relay judges it: parsed as a MAIL FROM or RCPT TO
/// path (angle brackets optional: `john@contoso.com`, `<>`) and written in
/// the canonical form of [`crate::address`]. `<postmaster>` is the
/// configured postmaster mailbox, as on the wire; the flag says the
/// recipient was that bare `postmaster` (RFC 5321 4.5.1), which the relay
/// accepts without asking a policy.
fn canonical_address(
    a: &str,
    sender: bool,
    postmaster: &str,
) -> Result<(String, bool), UsageError> {
    let t = a.trim();
    let path = if t.starts_with('<') {
        t.to_string()
    } else {
        format!("<{t}>")
    };
    let which = if sender { "--from" } else { "--to" };
    let invalid = |e: crate::address::ArgumentError| UsageError(format!("{which} {t:?}: {e}"));
    if sender {
        let m = crate::address::parse_mail(path.as_bytes()).map_err(invalid)?;
        return Ok((m.path.text(), false));
    }
    match crate::address::parse_rcpt(path.as_bytes())
        .map_err(invalid)?
        .path
    {
        crate::address::ForwardPath::Postmaster => Ok((postmaster.to_string(), true)),
        crate::address::ForwardPath::Mailbox(m) => Ok((m.to_string(), false)),
    }
}

/// Runs the check and returns the report (no printing).
pub fn run_check(args: &CheckArgs) -> Result<CheckReport, UsageError> {
    if args.to.is_empty() {
        return Err(UsageError("give at least one --to recipient".into()));
    }
    let config = load_config(args.config.as_deref())?;
    for w in crate::lint::findings(&config) {
        eprintln!("warning: {}: {w}", config.source.display());
    }
    // One spelling: an IPv4-mapped address is the IPv4 client it carries.
    let ip: IpAddr = args
        .ip
        .trim()
        .parse()
        .map(crate::directory::canonical_ip)
        .map_err(|_| {
            UsageError(format!(
                "--ip: '{}' is not an IPv4 or IPv6 address",
                args.ip
            ))
        })?;
    let time = session_time(args.at.as_deref())?;
    let anchors = TrustAnchors::load(&config.server.client_ca).map_err(UsageError::new)?;
    let tls = match &args.cert {
        Some(path) => {
            let chain = read_certificates(path).map_err(UsageError::new)?;
            let cert = inspect_chain(&chain, &anchors, unix_time(time))
                .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
            Some(TlsFacts {
                protocol: ASSUMED_TLS_PROTOCOL.into(),
                cipher: ASSUMED_TLS_CIPHER.into(),
                client_certificate: Some(cert),
            })
        }
        None if args.tls => Some(TlsFacts {
            protocol: ASSUMED_TLS_PROTOCOL.into(),
            cipher: ASSUMED_TLS_CIPHER.into(),
            client_certificate: None,
        }),
        None => None,
    };
    let facts = SessionFacts {
        client_ip: ip,
        helo: args.helo.clone().unwrap_or_else(|| format!("[{ip}]")),
        server_hostname: config.server.hostname.clone(),
        time,
        tls,
    };
    // The relay's own evaluation, as a reload builds it: the base policy
    // (or --policy) validated against the scenarios, the directory with its
    // recipient lists, the tenant policies and the shadow. Only the decision
    // log is left out: a check is no decision to record.
    let mut config = config;
    if let Some(p) = &args.policy {
        config.policy.component = Some(p.clone());
    }
    config.policy.decision_log = None;
    let engine = PolicyEngine::new(EngineLimits {
        max_instances: CHECK_INSTANCES,
        ..EngineLimits::from(&config.policy)
    })
    .map_err(UsageError::new)?;
    let (evaluation, _) = crate::reload::build(&config, &engine, 0).map_err(UsageError)?;
    let origin = evaluation.policy.origin().to_string();
    let mut judges = Arc::new(evaluation).session(facts, "check");

    let postmaster = &config.server.postmaster;
    let (sender, _) = canonical_address(&args.from, true, postmaster)?;
    let recipients: Vec<(String, bool)> = args
        .to
        .iter()
        .map(|to| canonical_address(to, false, postmaster))
        .collect::<Result<_, _>>()?;
    let (mail, _, mail_shadow) = judges.decide(&Stage::Mail(sender.clone()), &sender);
    let mail_ok = mail.action == Action::Accept;
    let recipients = recipients
        .into_iter()
        .map(|(rcpt, bare_postmaster)| {
            // As on the wire: a refused MAIL FROM leaves no transaction for
            // RCPT TO, and <postmaster> is accepted without asking a policy.
            let (v, shadow) = if mail_ok && bare_postmaster {
                (
                    attrelay_policy::replies::recipient_ok(None, "postmaster"),
                    None,
                )
            } else if mail_ok {
                let (v, _, shadow) = judges.decide(&Stage::Rcpt(rcpt.clone()), &sender);
                (v, shadow)
            } else {
                (mail.clone(), None)
            };
            let delivery =
                (v.action == Action::Accept).then(|| match config.routes.for_recipient(&rcpt) {
                    Some(route) => route.to_string(),
                    None => format!("{} ([delivery])", config.delivery.next_hop),
                });
            RecipientReport {
                rcpt,
                reply: v.into(),
                shadow: shadow.map(Reply::from),
                delivery,
            }
        })
        .collect();
    Ok(CheckReport {
        policy: origin,
        sender,
        mail_from: mail.into(),
        mail_from_shadow: mail_shadow.map(Reply::from),
        recipients,
    })
}

/// Whether every recipient was accepted.
pub fn all_accepted(r: &CheckReport) -> bool {
    r.recipients
        .iter()
        .all(|x| (200..300).contains(&x.reply.code))
}

/// Prints the report and returns the exit status.
pub fn check(args: &CheckArgs, out: &mut dyn Write) -> Result<u8, UsageError> {
    let report = run_check(args)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(UsageError::new)?;
        writeln!(out).map_err(UsageError::new)?;
    } else {
        write_text(&report, &report.sender, out).map_err(UsageError::new)?;
    }
    Ok(if all_accepted(&report) {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}

fn write_text(r: &CheckReport, sender: &str, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "policy: {}", r.policy)?;
    writeln!(out, "MAIL FROM:<{sender}>")?;
    writeln!(
        out,
        "  {} {} {}",
        r.mail_from.code, r.mail_from.enhanced, r.mail_from.text
    )?;
    for x in &r.recipients {
        writeln!(out, "RCPT TO:<{}>", x.rcpt)?;
        writeln!(
            out,
            "  {} {} {}",
            x.reply.code, x.reply.enhanced, x.reply.text
        )?;
        writeln!(
            out,
            "  tenant: {}",
            x.reply.tenant.as_deref().unwrap_or("(none)")
        )?;
        writeln!(
            out,
            "  reason: {}",
            x.reply.reason.as_deref().unwrap_or("(none)")
        )?;
        for (name, value) in &x.reply.headers {
            writeln!(out, "  header: {name}: {value}")?;
        }
        if let Some(sh) = &x.shadow {
            writeln!(out, "  shadow: {} {} {}", sh.code, sh.enhanced, sh.text)?;
        }
        if let Some(d) = &x.delivery {
            writeln!(out, "  delivery: {d}")?;
        }
        writeln!(out, "  why:")?;
        for line in &x.reply.explanation {
            writeln!(out, "    - {line}")?;
        }
    }
    Ok(())
}
