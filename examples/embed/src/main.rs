//! A minimal gateway embedding attrelay's policy engine: one tenant, the
//! default policy, and one session judged from the command line.
//!
//! `embed CLIENT-IP SENDER RECIPIENT...` prints the reply to `MAIL FROM`
//! and to each `RCPT TO`, as a gateway would send them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use attrelay_engine::directory::{Directory, TenantRecord};
use attrelay_engine::evaluation::Evaluation;
use attrelay_engine::model::{Connector, SessionFacts};
use attrelay_engine::policy::{EngineLimits, PolicyEngine, PolicySource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: embed CLIENT-IP SENDER RECIPIENT...";
    let mut args = std::env::args().skip(1);
    let client: IpAddr = args.next().ok_or(usage)?.parse()?;
    let sender = args.next().ok_or(usage)?;
    let recipients: Vec<String> = args.collect();

    // The tenants: contoso, whose on-premises servers are 203.0.113.0/24.
    let connectors = [Connector {
        sender_ip_addresses: vec!["203.0.113.0/24".into()],
        ..Connector::on_premises("contoso", "Contoso on-premises")
    }];
    let domains = ["contoso.com".to_string()];
    let directory = Directory::from_tenants([TenantRecord {
        id: "contoso",
        accepted_domains: &domains,
        connectors: &connectors,
        recipients: None,
    }]);

    // The engine and the default policy, built once; a session per client.
    let engine = PolicyEngine::new(EngineLimits::default())?;
    let policy = engine.load(&PolicySource::Embedded, &[])?;
    let evaluation = Arc::new(Evaluation::new(policy, Arc::new(directory)));
    let facts = SessionFacts {
        client_ip: client,
        helo: "client.example".into(),
        server_hostname: "gateway.example".into(),
        time: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64,
        tls: None,
    };
    let mut session = evaluation.session(facts, &client.to_string());

    let v = session.mail_from(&sender);
    println!("MAIL FROM:<{sender}> {}", v.reply_line());
    if v.code >= 300 {
        return Ok(());
    }
    for r in &recipients {
        let v = session.rcpt_to(&sender, r);
        let tenant = v.tenant.as_deref().unwrap_or("-");
        println!("RCPT TO:<{r}> {} (tenant {tenant})", v.reply_line());
    }
    Ok(())
}
