//! Users and groups by name or number, as `/etc/passwd` and `/etc/group`
//! list them (the files, not NSS: a relay's service account is a local
//! one), for `[server] user` / `group` and `[policyd] socket_group`.

/// Each entry of `/etc/passwd` as (name, uid, primary gid); none when the
/// file cannot be read.
fn passwd() -> Vec<(String, u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, uid, gid, ..] => {
                    Some((name.to_string(), uid.parse().ok()?, gid.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

/// A user's id and primary group: numeric (`65534`, primary group the
/// same number), or looked up by name in `/etc/passwd`.
pub fn user(name: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = name.parse() {
        return Some((uid, uid));
    }
    passwd()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, uid, gid)| (uid, gid))
}

/// A user's name by id, for logs and `/status`; the number when unlisted.
pub fn user_name(uid: u32) -> String {
    passwd()
        .into_iter()
        .find(|(_, id, _)| *id == uid)
        .map(|(name, _, _)| name)
        .unwrap_or_else(|| uid.to_string())
}

/// A group's id: numeric, or looked up by name in `/etc/group`.
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?;
        (name == group).then(|| gid.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers() {
        assert_eq!(user("root"), Some((0, 0)));
        assert_eq!(user("65534"), Some((65534, 65534)));
        assert_eq!(user("no-such-user-here"), None);
        assert_eq!(user_name(0), "root");
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-here"), None);
    }
}
