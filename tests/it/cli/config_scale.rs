//! Loading a fleet's configuration: 100 000 tenants, each with an accepted
//! domain and an on-premises connector, load in seconds (line numbers for
//! errors come from one index, not a rescan of the text per key) and are
//! all found by the directory the relay builds from them.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use attrelay::config::Config;
use attrelay_policy::model::Directory as _;

const TENANTS: usize = 100_000;

fn fleet() -> String {
    let mut t = String::from("[server]\nhostname = \"relay.example.test\"\n\n");
    for i in 0..TENANTS {
        let (a, b) = (i / 250, i % 250 + 1);
        writeln!(
            t,
            "[[tenant]]\nid = \"t{i}\"\naccepted_domains = [\"t{i}.example\"]\n\n\
             [[tenant.connector]]\nname = \"on-premises\"\ntype = \"on-premises\"\n\
             sender_ip_addresses = [\"10.{}.{a_lo}.{b}\"]\ntls_sender_certificate_name = \"*.t{i}.example\"\n",
            a / 256,
            a_lo = a % 256,
        )
        .unwrap();
    }
    t
}

#[test]
fn a_hundred_thousand_tenants_load_in_seconds() {
    let text = fleet();
    let started = Instant::now();
    let config = Config::parse(Path::new("fleet.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let parsed = started.elapsed();
    let directory = config.directory();
    let built = started.elapsed();
    eprintln!(
        "{TENANTS} tenants ({} MB of TOML): parsed in {parsed:?}, directory built in {:?}",
        text.len() >> 20,
        built - parsed
    );
    assert_eq!(config.tenants.len(), TENANTS);
    // Every tenant is found by its domain, its address and its certificate name.
    for i in [0, 1, 12_345, TENANTS - 1] {
        let (a, b) = (i / 250, i % 250 + 1);
        assert_eq!(
            directory
                .tenant_of_domain(&format!("t{i}.example"))
                .as_deref(),
            Some(format!("t{i}").as_str())
        );
        let ip: IpAddr = format!("10.{}.{}.{b}", a / 256, a % 256).parse().unwrap();
        let by_ip = directory.connectors_by_ip(ip);
        assert_eq!(by_ip.len(), 1, "{ip}");
        assert_eq!(by_ip[0].tenant, format!("t{i}"));
        let by_cert = directory.connectors_by_certificate_name(&format!("*.t{i}.example"));
        assert_eq!(by_cert.len(), 1);
    }
    // Quadratic line lookups took 31 s for 10 000 tenants, so about an hour
    // for these; linear work takes seconds even unoptimised.
    assert!(built < Duration::from_secs(60), "took {built:?}");
}
