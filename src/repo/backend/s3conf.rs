//! Where an S3 repository's endpoint, region and credentials come from, the way the AWS
//! tools find them: the environment (`AWS_ENDPOINT_URL`, `AWS_REGION` or
//! `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`)
//! first, then the profile (`AWS_PROFILE`, else `default`) of `~/.aws/credentials` and
//! `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`). The INI files are
//! read by a small strict parser: a line it does not understand is an error naming the file
//! and line (never echoing the line, which may hold a secret). Plain `http://` endpoints are
//! accepted only for loopback hosts, so credentials and backups never cross a network in the
//! clear.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::super::error::{Error, Result};

/// The region when none is configured (what the AWS tools assume, and what local S3
/// servers accept).
const DEFAULT_REGION: &str = "us-east-1";
/// Largest configuration file read (they are a few lines).
const MAX_FILE: u64 = 1 << 20;

/// Everything needed to talk to one S3 service.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The endpoint URL (`None`: AWS's own for the region).
    pub endpoint: Option<String>,
    /// Whether the endpoint is plain http (only ever for a loopback host).
    pub allow_http: bool,
    /// The region.
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the token.
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// The settings of this process: its environment and the current user's AWS files.
    pub fn from_env() -> Result<S3Settings> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        S3Settings::resolve(&|name| std::env::var(name).ok(), home.as_deref())
    }

    /// The settings from environment lookup `env` and the AWS files under `home`.
    pub fn resolve(
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<S3Settings> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let file_of = |var: &str, name: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".aws").join(name)))
        };
        let config = match file_of("AWS_CONFIG_FILE", "config") {
            Some(path) => Profile::load(&path, &profile, true)?,
            None => Profile::default(),
        };
        let credentials = match file_of("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
            Some(path) => Profile::load(&path, &profile, false)?,
            None => Profile::default(),
        };

        let (access_key_id, secret_access_key, session_token) =
            match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN")),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(Error::BadArgument(
                        "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both (or neither, to use ~/.aws/credentials)".into(),
                    ))
                }
                (None, None) => {
                    let from = |p: &Profile| {
                        Some((
                            p.get("aws_access_key_id")?,
                            p.get("aws_secret_access_key")?,
                            p.get("aws_session_token"),
                        ))
                    };
                    from(&credentials).or_else(|| from(&config)).ok_or_else(|| {
                        Error::BadArgument(format!(
                            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give profile {profile:?} aws_access_key_id and aws_secret_access_key in ~/.aws/credentials"
                        ))
                    })?
                }
            };
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| config.get("region"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let (endpoint, allow_http) = match env("AWS_ENDPOINT_URL") {
            Some(url) => checked_endpoint(&url, "AWS_ENDPOINT_URL")?,
            None => match config.get("endpoint_url") {
                Some(url) => checked_endpoint(&url, "endpoint_url in ~/.aws/config")?,
                None => (None, false),
            },
        };
        Ok(S3Settings {
            endpoint,
            allow_http,
            region,
            access_key_id,
            secret_access_key,
            session_token,
        })
    }
}

/// The endpoint `url` (from `source`, for messages) if it is https, or http to a loopback
/// host; with whether it is http.
fn checked_endpoint(url: &str, source: &str) -> Result<(Option<String>, bool)> {
    let parsed = url::Url::parse(url).map_err(|e| {
        Error::BadArgument(format!(
            "{source} {url:?} is not a URL ({e}); give one such as https://s3.example.com or http://127.0.0.1:9000"
        ))
    })?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => {
            return Err(Error::BadArgument(format!(
                "{source} {url:?} names no host; give one such as https://s3.example.com"
            )))
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::BadArgument(format!(
            "{source} holds a user name or password; give credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )));
    }
    match parsed.scheme() {
        "https" => Ok((Some(url.to_string()), false)),
        "http" if loopback => Ok((Some(url.to_string()), true)),
        "http" => Err(Error::BadArgument(format!(
            "{source} {url:?} is plain http to a host that is not this machine; snarf sends credentials and backups over http only to loopback (127.0.0.0/8, ::1, localhost): use an https:// endpoint"
        ))),
        other => Err(Error::BadArgument(format!(
            "{source} {url:?} has scheme {other}:, not https: or http:"
        ))),
    }
}

/// The settings of one profile of one AWS file.
#[derive(Debug, Default)]
struct Profile {
    values: HashMap<String, String>,
}

impl Profile {
    /// Profile `name` of the file at `path` (missing file: empty). In the config file a
    /// profile's section is `[profile NAME]` (`[default]` for the default one), in the
    /// credentials file `[NAME]`.
    fn load(path: &Path, name: &str, config: bool) -> Result<Profile> {
        let Some(data) = super::super::fsx::read_optional_capped(path, MAX_FILE)? else {
            return Ok(Profile::default());
        };
        if data.len() as u64 > MAX_FILE {
            return Err(Error::BadArgument(format!(
                "{} is larger than {MAX_FILE} bytes, which no AWS configuration file is",
                path.display()
            )));
        }
        let text = String::from_utf8(data)
            .map_err(|_| Error::BadArgument(format!("{} is not UTF-8 text", path.display())))?;
        let wanted: Vec<String> = if !config {
            vec![name.to_string()]
        } else if name == "default" {
            vec!["default".into(), "profile default".into()]
        } else {
            vec![format!("profile {name}")]
        };
        let mut values = HashMap::new();
        for (section, key, value) in parse_ini(&text, path)? {
            if wanted.contains(&section) {
                values.insert(key, value);
            }
        }
        Ok(Profile { values })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).filter(|v| !v.is_empty()).cloned()
    }
}

/// The (section, key, value) settings of an AWS INI file. Comments (`#`, `;`), blank lines
/// and the indented lines of a nested block (`s3 =` followed by indented settings) are
/// skipped; anything else that is not `[section]` or `key = value` is an error naming the
/// line (but not showing it: it may hold a secret).
fn parse_ini(text: &str, path: &Path) -> Result<Vec<(String, String, String)>> {
    let bad = |n: usize, what: &str| {
        Error::BadArgument(format!(
            "{} line {}: {what}; AWS files hold [section] lines and key = value lines",
            path.display(),
            n + 1
        ))
    };
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    let mut nested = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            if nested {
                continue;
            }
            return Err(bad(n, "an indented line outside a nested block"));
        }
        nested = false;
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| bad(n, "a section line without its closing ]"))?;
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            if name.is_empty() {
                return Err(bad(n, "an empty section name"));
            }
            section = Some(name);
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(n, "a line that is neither [section] nor key = value"))?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                n,
                "a setting whose name is not letters, digits, _ or -",
            ));
        }
        let section = section
            .clone()
            .ok_or_else(|| bad(n, "a setting before any [section] line"))?;
        let value = value.trim();
        if value.is_empty() {
            nested = true;
            continue;
        }
        out.push((section, key.to_ascii_lowercase(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(vars: &[(&str, &str)], home: Option<&Path>) -> Result<S3Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Settings::resolve(&|n| vars.get(n).cloned(), home)
    }

    #[test]
    fn environment_wins_and_loopback_http_is_allowed() {
        let s = resolve(
            &[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "SK"),
                ("AWS_SESSION_TOKEN", "TOK"),
                ("AWS_DEFAULT_REGION", "eu-west-3"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(s.access_key_id, "AK");
        assert_eq!(s.secret_access_key, "SK");
        assert_eq!(s.session_token.as_deref(), Some("TOK"));
        assert_eq!(s.region, "eu-west-3");
        assert!(s.allow_http);
        assert!(!format!("{s:?}").contains("SK"), "the secret never shows");
        for ok in [
            "http://localhost:1",
            "http://[::1]:9000/",
            "https://s3.example.com",
        ] {
            let s = resolve(
                &[
                    ("AWS_ACCESS_KEY_ID", "a"),
                    ("AWS_SECRET_ACCESS_KEY", "b"),
                    ("AWS_ENDPOINT_URL", ok),
                ],
                None,
            )
            .unwrap();
            assert_eq!(s.allow_http, ok.starts_with("http:"), "{ok}");
            assert_eq!(s.region, DEFAULT_REGION);
        }
    }

    #[test]
    fn plain_http_elsewhere_and_bad_endpoints_are_refused() {
        for (url, says) in [
            ("http://10.1.2.3:9000", "plain http"),
            ("http://s3.example.com", "plain http"),
            ("http://127.0.0.1.example.com", "plain http"),
            ("ftp://127.0.0.1", "scheme"),
            ("not a url", "not a URL"),
            ("https://user:pw@s3.example.com", "password"),
        ] {
            let e = resolve(
                &[
                    ("AWS_ACCESS_KEY_ID", "a"),
                    ("AWS_SECRET_ACCESS_KEY", "b"),
                    ("AWS_ENDPOINT_URL", url),
                ],
                None,
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(says) && e.contains("AWS_ENDPOINT_URL"),
                "{url}: {e}"
            );
        }
        let e = resolve(&[("AWS_ACCESS_KEY_ID", "a")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let e = resolve(&[], None).unwrap_err().to_string();
        assert!(e.contains("no S3 credentials"), "{e}");
    }

    #[test]
    fn profiles_come_from_the_aws_files() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "# comment\n[default]\naws_access_key_id = DEF\naws_secret_access_key = DEFS\n\n[backup]\naws_access_key_id=BK\naws_secret_access_key = BKS\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = us-west-2\n[profile backup]\nregion = eu-central-1\nendpoint_url = https://objects.example.net\ns3 =\n  addressing_style = path\n; done\n",
        )
        .unwrap();
        let s = resolve(&[], Some(home.path())).unwrap();
        assert_eq!(
            (s.access_key_id.as_str(), s.region.as_str()),
            ("DEF", "us-west-2")
        );
        assert_eq!(s.endpoint, None);
        let s = resolve(&[("AWS_PROFILE", "backup")], Some(home.path())).unwrap();
        assert_eq!(s.access_key_id, "BK");
        assert_eq!(s.secret_access_key, "BKS");
        assert_eq!(s.region, "eu-central-1");
        assert_eq!(s.endpoint.as_deref(), Some("https://objects.example.net"));
        // The environment's region and endpoint win over the file's.
        let s = resolve(
            &[("AWS_PROFILE", "backup"), ("AWS_REGION", "ap-south-1")],
            Some(home.path()),
        )
        .unwrap();
        assert_eq!(s.region, "ap-south-1");
        let e = resolve(&[("AWS_PROFILE", "nosuch")], Some(home.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nosuch\""), "{e}");
    }

    #[test]
    fn broken_files_are_refused_naming_the_line_but_not_its_text() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        for bad in [
            "[default]\naws_secret_access_key SECRETVALUE\n",
            "aws_access_key_id = SECRETVALUE\n",
            "[default\naws_access_key_id = SECRETVALUE\n",
            "[default]\n  SECRETVALUE = 1\n",
            "[default]\nbad key! = SECRETVALUE\n",
        ] {
            std::fs::write(aws.join("credentials"), bad).unwrap();
            let e = resolve(&[], Some(home.path())).unwrap_err().to_string();
            assert!(e.contains("credentials line"), "{bad:?}: {e}");
            assert!(!e.contains("SECRETVALUE"), "{e}");
        }
    }
}
