//! Users and groups by name or number, as `/etc/passwd` and `/etc/group`
//! list them (the files, not NSS: a relay's service account is a local
//! one), for `[server] user` / `group` and `[policyd] socket_group`.

/// A user's id and primary group: numeric (`65534`, primary group the
/// same number), or looked up by name in `/etc/passwd`.
pub fn user(name: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = name.parse() {
        return Some((uid, uid));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [n, _, uid, gid, ..] if *n == name => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    })
}

/// A user's name by id, for logs and `/status`; the number when unlisted.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                match fields.as_slice() {
                    [n, _, id, ..] if id.parse() == Ok(uid) => Some(n.to_string()),
                    _ => None,
                }
            })
        })
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
