//! Reading the queue back after a restart ([`recover`], which also cleans
//! up after interrupted writes). An operator's look, which changes
//! nothing, is `peek.rs`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use super::envelope::Envelope;
use super::error::{SpoolError, io};
use super::ids::{BodyId, SpoolId};
use super::layout::Layout;
use super::shares::Shares;

/// Everything queued, after a restart: envelopes whose body exists, sorted
/// by id, and the problems found with the others. Removes leftovers of
/// interrupted writes (`tmp/`, bodies no envelope names) and counts each
/// body's envelopes into `shares`. A corrupt envelope is moved aside to
/// `corrupt/` and reported, never silently dropped; while there is one,
/// unnamed bodies go there too (one may be its body).
pub(super) fn recover(
    layout: &Layout,
    shares: &Shares,
) -> Result<(Vec<Envelope>, Vec<SpoolError>), SpoolError> {
    let tmp = &layout.tmp;
    for entry in fs::read_dir(tmp).map_err(io(tmp))?.flatten() {
        let _ = fs::remove_file(entry.path());
    }
    let (mut envelopes, problems, set_aside) = read_queue(layout)?;
    let named: HashSet<&BodyId> = envelopes.iter().map(|e| &e.body).collect();
    sweep_bodies(layout, &named, set_aside)?;
    let mut counts: HashMap<BodyId, usize> = HashMap::new();
    for e in &envelopes {
        *counts.entry(e.body.clone()).or_default() += 1;
    }
    shares.reset(counts);
    envelopes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((envelopes, problems))
}

/// Reads envelope `id` from `queue/`.
pub(super) fn read_envelope(layout: &Layout, id: &SpoolId) -> Result<Envelope, SpoolError> {
    read_envelope_at(&layout.root, id)
}

/// Reads envelope `id` from the spool at `root`.
pub(super) fn read_envelope_at(root: &Path, id: &SpoolId) -> Result<Envelope, SpoolError> {
    let p = super::layout::envelope_path(root, id);
    let bytes = fs::read(&p).map_err(io(&p))?;
    Envelope::from_json(&bytes).map_err(|detail| SpoolError::Corrupt { path: p, detail })
}

/// The queue id a file in `queue/` is named for, if it is an envelope's.
pub(super) fn queued_id(path: &Path) -> Option<SpoolId> {
    if path.extension().and_then(|e| e.to_str()) != Some("json") {
        return None;
    }
    path.file_stem()
        .map(|s| SpoolId::from(s.to_string_lossy().as_ref()))
}

/// Every envelope in `queue/` whose body exists, the problems with the
/// others (each moved to `corrupt/`), and whether an envelope file was
/// moved there because it could not be read (then unnamed bodies may be
/// its own).
fn read_queue(layout: &Layout) -> Result<(Vec<Envelope>, Vec<SpoolError>, bool), SpoolError> {
    let mut envelopes = Vec::new();
    let mut problems = Vec::new();
    let mut set_aside = false;
    let queue = &layout.queue;
    for entry in fs::read_dir(queue).map_err(io(queue))?.flatten() {
        let path = entry.path();
        let Some(id) = queued_id(&path) else {
            continue;
        };
        let read = read_envelope(layout, &id).and_then(|e| {
            // A file that does not hold its own envelope (a crash reusing
            // a file, an operator's copy) would be delivered and never
            // removed.
            if e.id == id {
                Ok(e)
            } else {
                Err(SpoolError::Corrupt {
                    path: path.clone(),
                    detail: format!("holds the envelope of {}", e.id),
                })
            }
        });
        match read {
            Ok(e) if layout.body_path(&e.body).exists() => envelopes.push(e),
            // Never attempted, never removed: it would stay in queue/ (and
            // in every listing) for ever.
            Ok(_) => {
                layout.set_aside(&path);
                problems.push(SpoolError::Corrupt {
                    path: path.clone(),
                    detail: "message body missing: envelope moved to corrupt/, not delivered"
                        .into(),
                });
            }
            Err(e) => {
                layout.set_aside(&path);
                set_aside = true;
                problems.push(e);
            }
        }
    }
    Ok((envelopes, problems, set_aside))
}

/// Removes the bodies in `msg/` that no envelope `named`: never
/// acknowledged, since the envelope is the commit record. While an
/// envelope was `set_aside`, they go to `corrupt/` instead, for an operator
/// to inspect beside it (one may be its body).
fn sweep_bodies(
    layout: &Layout,
    named: &HashSet<&BodyId>,
    set_aside: bool,
) -> Result<(), SpoolError> {
    let msg = &layout.msg;
    for entry in fs::read_dir(msg).map_err(io(msg))?.flatten() {
        let p = entry.path();
        let id = BodyId::from(
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        if named.contains(&id) {
            continue;
        }
        if set_aside {
            layout.set_aside(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
    Ok(())
}
