//! `--user NAME|UID[:GID]`: the unprivileged user a remote started as root
//! becomes once its disks and sockets are open.
//!
//! Names are looked up in /etc/passwd and /etc/group directly rather than
//! through NSS: the remote also runs as a static binary (the test rig's
//! initramfs), where glibc's NSS would need shared libraries at run time.

use std::path::Path;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--user {0:?}: expected NAME, UID, NAME:GROUP or UID:GID")]
    Syntax(String),
    #[error("--user: no user {0:?} in /etc/passwd")]
    UnknownUser(String),
    #[error("--user: no group {0:?} in /etc/group")]
    UnknownGroup(String),
    #[error("--user: uid {0} has no /etc/passwd entry to take a group from; give UID:GID")]
    NoGroup(u32),
    #[error("--user: uid and gid 0 are root; give an unprivileged user")]
    Root,
    #[error("--user needs root to switch to uid {uid} (running as uid {current})")]
    NotRoot { uid: u32, current: u32 },
    #[error("cannot drop privileges ({step}): {source}")]
    Drop {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("dropped privileges, but uid 0 could be regained: refusing to run")]
    Regained,
}

/// A user or group given by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Num(u32),
    Name(String),
}

impl Id {
    fn parse(text: &str) -> Option<Id> {
        if text.is_empty() || text.contains(['\n', ':']) {
            return None;
        }
        Some(match text.parse() {
            Ok(n) => Id::Num(n),
            Err(_) => Id::Name(text.to_owned()),
        })
    }
}

/// What `--user` said, before lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: Id,
    pub group: Option<Id>,
}

impl FromStr for UserSpec {
    type Err = UserError;

    fn from_str(text: &str) -> Result<Self, UserError> {
        let syntax = || UserError::Syntax(text.to_owned());
        let (user, group) = match text.split_once(':') {
            Some((u, g)) => (u, Some(Id::parse(g).ok_or_else(syntax)?)),
            None => (text, None),
        };
        Ok(UserSpec {
            user: Id::parse(user).ok_or_else(syntax)?,
            group,
        })
    }
}

/// The ids to switch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// Field `index` of the first line of a colon-separated database whose
/// field `key_index` is `key`.
fn field<'a>(db: &'a str, key_index: usize, key: &str, index: usize) -> Option<&'a str> {
    db.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(key_index) == Some(&key))
        .and_then(|f| f.get(index).copied())
}

impl UserSpec {
    /// Resolves names with the given passwd and group file contents.
    pub fn resolve_with(&self, passwd: &str, group: &str) -> Result<Credentials, UserError> {
        let num = |s: Option<&str>| s.and_then(|v| v.parse::<u32>().ok());
        let (uid, primary) = match &self.user {
            Id::Num(uid) => (*uid, num(field(passwd, 2, &uid.to_string(), 3))),
            Id::Name(name) => {
                let uid = num(field(passwd, 0, name, 2))
                    .ok_or_else(|| UserError::UnknownUser(name.clone()))?;
                (uid, num(field(passwd, 0, name, 3)))
            }
        };
        let gid = match &self.group {
            Some(Id::Num(gid)) => *gid,
            Some(Id::Name(name)) => num(field(group, 0, name, 2))
                .ok_or_else(|| UserError::UnknownGroup(name.clone()))?,
            None => primary.ok_or(UserError::NoGroup(uid))?,
        };
        if uid == 0 || gid == 0 {
            return Err(UserError::Root);
        }
        Ok(Credentials { uid, gid })
    }

    /// Resolves names from /etc/passwd and /etc/group (a missing file
    /// reads as empty, so numeric ids work without them).
    pub fn resolve(&self) -> Result<Credentials, UserError> {
        let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
        self.resolve_with(&read("/etc/passwd"), &read("/etc/group"))
    }
}

fn check(step: &'static str, ret: libc::c_int) -> Result<(), UserError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(UserError::Drop {
            step,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Becomes `creds` for good: supplementary groups, then gid, then uid (in
/// that order, since each step needs the privilege the next one drops).
/// glibc applies each change to every thread of the process.
pub fn drop_to(creds: Credentials) -> Result<(), UserError> {
    // SAFETY: getuid/geteuid cannot fail and touch no memory.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if uid == creds.uid && euid == creds.uid {
        // Already that user: nothing to give up, nothing we could do.
        return Ok(());
    }
    if euid != 0 {
        return Err(UserError::NotRoot {
            uid: creds.uid,
            current: euid,
        });
    }
    // SAFETY: setgroups with a zero count reads no memory.
    check("setgroups", unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain id-changing system calls on integers.
    check("setresgid", unsafe {
        libc::setresgid(creds.gid, creds.gid, creds.gid)
    })?;
    // SAFETY: as above.
    check("setresuid", unsafe {
        libc::setresuid(creds.uid, creds.uid, creds.uid)
    })?;
    // SAFETY: as above; this one must fail now.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(UserError::Regained);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          vmm:x:1001:1002::/home/vmm:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nkvm:x:104:vmm\n";

    fn resolve(text: &str) -> Result<Credentials, UserError> {
        text.parse::<UserSpec>()?.resolve_with(PASSWD, GROUP)
    }

    #[test]
    fn names_and_numbers_resolve() {
        let c = |uid, gid| Credentials { uid, gid };
        assert_eq!(resolve("nobody").unwrap(), c(65534, 65534));
        assert_eq!(resolve("vmm").unwrap(), c(1001, 1002));
        assert_eq!(resolve("1001").unwrap(), c(1001, 1002), "primary group");
        assert_eq!(resolve("vmm:kvm").unwrap(), c(1001, 104));
        assert_eq!(resolve("4000:4000").unwrap(), c(4000, 4000));
        assert_eq!(resolve("nobody:5").unwrap(), c(65534, 5));
    }

    #[test]
    fn bad_users_say_what_is_wrong() {
        let err = |t: &str| resolve(t).unwrap_err().to_string();
        assert!(err("alice").contains("no user \"alice\""));
        assert!(err("vmm:wheel").contains("no group \"wheel\""));
        assert!(err("4000").contains("give UID:GID"));
        assert!(err("root").contains("root"));
        assert!(err("0:100").contains("root"));
        assert!(err("vmm:0").contains("root"));
        assert!(err("").contains("expected NAME"));
        assert!(err("a:b:c").contains("expected NAME"));
        assert!(err("vmm:").contains("expected NAME"));
    }
}
