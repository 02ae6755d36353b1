//! Where a repository is, as the user writes it (`--repo`, `snarf repo init LOCATION`), and
//! the one place a location becomes a storage [`Backend`]: a local folder, or
//! `ssh://[user@]host[:port]/path` for a format 2 repository another host serves with
//! `snarf serve` ([`SshBackend`]), or `s3://bucket/prefix` for one in an S3 bucket
//! ([`S3Backend`]), so every command reaches every kind of repository the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::{Backend, LocalDir, S3Backend, S3Url, SshBackend, SshOptions, SshTarget};
use super::error::{Error, Result};

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on this machine.
    Local(PathBuf),
    /// A folder on another host, through `snarf serve` over ssh.
    Ssh(SshTarget),
    /// A prefix of an S3 bucket.
    S3(S3Url),
}

impl Location {
    /// Parses what the user wrote: `ssh://…` is a repository on another host, another
    /// `scheme://` prefix is refused (rather than taken for a folder of that name), anything
    /// else is a local path.
    pub fn parse(text: &str) -> Result<Location> {
        if text.is_empty() {
            return Err(Error::BadArgument(
                "an empty repository location; give a folder such as /srv/backups".into(),
            ));
        }
        if text.starts_with("ssh://") {
            return SshTarget::parse(text).map(Location::Ssh);
        }
        if text.starts_with("s3://") {
            return S3Url::parse(text).map(Location::S3);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+')
            {
                return Err(Error::BadArgument(format!(
                    "repository location {text:?}: this snarf knows no {scheme}:// repositories; give a local folder, ssh://[user@]host[:port]/path or s3://bucket/prefix"
                )));
            }
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    /// The location given as a command-line path: parsed if it is text (so `ssh://…` is
    /// recognised), a local folder if it is not (a non-UTF-8 file name).
    pub fn of_arg(arg: &Path) -> Result<Location> {
        match arg.to_str() {
            Some(text) => Location::parse(text),
            None => Ok(Location::local(arg)),
        }
    }

    /// The location of a local folder.
    pub fn local(path: &Path) -> Location {
        Location::Local(path.to_path_buf())
    }

    /// The local folder, if it is one.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Ssh(_) | Location::S3(_) => None,
        }
    }

    /// The storage backend of a format 2 repository here (for ssh, a connection to the far
    /// `snarf serve`, with `SNARF_RSH` and the remote snarf path). In a `fault-injection`
    /// build with a fault point armed or a census asked for, every durable operation on a
    /// local one is a fault point (see `backend::faulty`), so the crash suites reach them in
    /// the binary.
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        self.connect(false)
    }

    /// The backend of a new repository: its folder layout is made first.
    pub fn backend_for_init(&self) -> Result<Arc<dyn Backend>> {
        self.connect(true)
    }

    fn connect(&self, create: bool) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Local(p) => {
                let b = LocalDir::new(p);
                if create {
                    b.create_layout()?;
                }
                faulty(b)
            }
            Location::Ssh(t) => faulty(SshBackend::connect(
                t,
                &SshOptions::from_env(None)?,
                create,
            )?),
            // A bucket has no folders to make: keys are created as they are written.
            Location::S3(u) => faulty(S3Backend::from_env(u)?),
        })
    }

    /// The same location with a local path made absolute (a job hands it to the mount
    /// daemon, whose working directory differs).
    pub fn absolute(&self) -> Location {
        match self {
            Location::Local(p) => {
                Location::Local(std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            }
            Location::Ssh(t) => Location::Ssh(t.clone()),
            Location::S3(u) => Location::S3(u.clone()),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Ssh(t) => write!(f, "{}", t.url()),
            Location::S3(u) => write!(f, "{}", u.url()),
        }
    }
}

/// The backend, as a fault-point decorator when a fault point or census is armed (test
/// builds only), so the crash suites kill at every durable step on every kind of backend.
fn faulty<B: Backend + 'static>(b: B) -> Arc<dyn Backend> {
    #[cfg(feature = "fault-injection")]
    {
        use super::fault;
        if std::env::var_os(fault::ENV).is_some() || std::env::var_os(fault::CENSUS_ENV).is_some() {
            return Arc::new(super::backend::faulty::Faulty::new(b));
        }
    }
    Arc::new(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_local_and_unknown_schemes_are_refused() {
        assert_eq!(
            Location::parse("/srv/r").unwrap(),
            Location::Local("/srv/r".into())
        );
        assert_eq!(
            Location::parse("rel/dir").unwrap().local_path(),
            Some(Path::new("rel/dir"))
        );
        // A colon in a file name is still a path.
        assert!(Location::parse("a:b").is_ok());
        let e = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("ftp://"), "{e}");
        assert!(Location::parse("").is_err());
        match Location::parse("ssh://u@h:22/srv/r").unwrap() {
            Location::Ssh(t) => assert_eq!(t.url(), "ssh://u@h:22/srv/r"),
            other => panic!("{other:?}"),
        }
        assert!(Location::parse("ssh://-oProxyCommand=x/r").is_err());
        match Location::parse("s3://bkt/hosts/a").unwrap() {
            Location::S3(u) => assert_eq!(u.url(), "s3://bkt/hosts/a"),
            other => panic!("{other:?}"),
        }
        assert!(Location::parse("s3://bkt/../x").is_err());
    }
}
