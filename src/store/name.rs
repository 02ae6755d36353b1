//! Names of volumes and snapshots: they become file names on the mount, so they follow
//! the rules of one path component.

use super::Error;

/// Longest allowed name, in bytes (NAME_MAX on Linux).
pub const MAX_NAME_BYTES: usize = 255;

/// Checks that `name` can be a single file name: not empty, not `.` or `..`, no `/`, no
/// NUL, no control characters, at most 255 bytes. The error names the rule broken.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), Error> {
    let bad = |rule: &'static str| Error::BadName {
        kind,
        name: name.escape_debug().to_string(),
        rule,
    };
    if name.is_empty() {
        return Err(bad("a name must not be empty"));
    }
    if name == "." || name == ".." {
        return Err(bad("'.' and '..' are reserved"));
    }
    if name.contains('/') {
        return Err(bad("a name must not contain '/'"));
    }
    if name.contains('\0') {
        return Err(bad("a name must not contain a NUL byte"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(bad(
            "a name must not contain control characters such as newlines",
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad("a name must be at most 255 bytes long"));
    }
    if name.starts_with(".snarf") {
        return Err(bad(
            "names starting with '.snarf' are reserved for snarf's own files",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "vm1.img",
            "db",
            "a b",
            "ünïcode",
            ".hidden",
            &"x".repeat(255),
        ] {
            validate_name("volume", ok).unwrap();
        }
    }

    #[test]
    fn each_rule_is_named() {
        let cases = [
            ("", "empty"),
            (".", "reserved"),
            ("..", "reserved"),
            ("a/b", "'/'"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            (&"x".repeat(256), "255 bytes"),
            (".snarf-tmp", "reserved"),
        ];
        for (name, rule) in cases {
            let e = validate_name("volume", name).unwrap_err().to_string();
            assert!(e.contains(rule), "{name:?}: {e}");
            assert!(e.contains("volume name"), "{e}");
        }
    }
}
