//! Store passwords and other secrets kept locally: the one check that a file or directory holding secrets is
//! private to its owner (shared by store password files here and by qsfs's key file, volume directory and config);
//! where a store password comes from (`Password`: a file or an environment variable, so that it never needs to
//! appear in a URI, a command line or a log); and redacting passwords from text that is about to be shown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where a store password comes from. Only `Inline` holds the secret itself; `File` and `Env` say where to read
/// it when the store is opened, so a config, a log or a command line naming them reveals nothing.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    Inline(String),
    File(PathBuf),
    Env(String),
}

impl Password {
    /// The password itself: read now from its file (which must be private) or variable.
    pub fn resolve(&self) -> std::result::Result<String, String> {
        match self {
            Password::Inline(p) => Ok(p.clone()),
            Password::File(path) => read_password_file(path),
            Password::Env(var) => read_password_env(var),
        }
    }
}

/// Best-effort redaction of a URI we could not parse, for error messages: everything between the scheme and the
/// last `@` (a password may hold `/`, `?`, `#` or `:`) and the value of any `password=` query item.
pub fn redact_raw(text: &str) -> String {
    // Only a real scheme before the first "://" is kept: a password may hold "://" itself.
    let is_scheme = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    };
    let (head, rest) = match text.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => (format!("{scheme}://"), rest),
        _ => (String::new(), text),
    };
    let rest = match rest.rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((main, query)) => {
            let items: Vec<String> = query
                .split('&')
                .map(|item| match item.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                    _ => item.to_string(),
                })
                .collect();
            format!("{main}?{}", items.join("&"))
        }
        None => rest,
    };
    format!("{head}{rest}")
}

/// Query keys whose values are secrets (as opposed to `password-file` and `password-env`, which name them), or
/// may be: an S3 access key id is half a credential.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    (k.contains("pass")
        || k.contains("secret")
        || k.contains("token")
        || k.contains("key")
        || k == "pw")
        && k != "password-file"
        && k != "password-env"
}

/// Why `path` is not private to its owner — group or others may read, write or enter it — with the `chmod`
/// that fixes it; `None` when it is private. Follows symlinks: what matters is the file that is read.
pub fn exposure(path: &Path) -> std::io::Result<Option<String>> {
    let md = std::fs::metadata(path)?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    let fix = if md.is_dir() { "700" } else { "600" };
    Ok(Some(format!(
        "is accessible by group or others (mode {mode:04o}); run `chmod {fix} {}`",
        path.display()
    )))
}

/// A store password: the first line of `path`, which must be private (like the volume's key file).
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let problem = |e: std::io::Error| format!("cannot read password file {}: {e}", path.display());
    if let Some(why) = exposure(path).map_err(problem)? {
        return Err(format!("password file {}: {why}", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(problem)?;
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(password.to_string())
}

/// A store password from environment variable `var`.
pub fn read_password_env(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(p),
        Ok(_) => Err(format!("the password variable {var} is empty")),
        Err(_) => Err(format!("the password variable {var} is not set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\nignored\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_password_file(&p).unwrap_err();
        assert!(e.contains("chmod 600") && !e.contains("hunter2"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&p).unwrap(), "hunter2");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = exposure(dir.path()).unwrap().unwrap();
        assert!(e.contains("chmod 700"), "{e}");
    }
}
