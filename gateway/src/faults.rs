//! Misbehaviour on request, for hosts' fail-closed tests (feature
//! `faults`, which no release enables): a recipient whose local part names
//! a fault makes the component panic (a trap), spin forever, allocate
//! without end or call `exit`. A host passes when each is answered
//! `451 4.3.5` and the next session is judged normally.

/// Runs the fault `recipient` names, if it names one.
pub fn inject(recipient: &str) {
    match recipient.split('@').next() {
        Some("fault-panic") => panic!("injected panic"),
        Some("fault-loop") => loop {
            std::hint::black_box(());
        },
        Some("fault-memory") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Some("fault-exit") => std::process::exit(3),
        _ => {}
    }
}
