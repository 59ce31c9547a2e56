//! The `s3://` URI: which bucket and prefix, which endpoint and region, how requests address the bucket, and where
//! credentials come from. Parsing and showing only; `crate::s3` opens the store.
//!
//! `s3://BUCKET[/PREFIX]?endpoint=URL&region=R[&style=path|virtual][&credentials-file=PATH][&profile=NAME]
//! [&ca-file=PATH]`. Keys never appear in the URI: they come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! or from a private credentials file, read when the store is opened.

use std::fmt;
use std::path::PathBuf;

use super::parse::percent_decode;
use crate::secret::{is_secret_key, redact_raw};

/// How requests name the bucket: in the path (`https://host/bucket/key`: MinIO, Garage, most self-hosted stores)
/// or in the host name (`https://bucket.host/key`: AWS S3, which is deprecating the path style).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Style {
    Path,
    Virtual,
}

impl fmt::Display for S3Style {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            S3Style::Path => "path",
            S3Style::Virtual => "virtual",
        })
    }
}

/// A parsed `s3://` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Uri {
    pub bucket: String,
    /// Objects live under this prefix (no leading or trailing '/'); empty for the bucket's root.
    pub prefix: String,
    /// `http[s]://host[:port]`; `None` for AWS, whose endpoint follows from the region.
    pub endpoint: Option<String>,
    pub region: String,
    pub style: S3Style,
    /// A private file with the access key (AWS shared-credentials format); `None`: the environment variables.
    pub credentials_file: Option<PathBuf>,
    /// The section of `credentials_file` to use (default: `default`, or the only one).
    pub profile: Option<String>,
    /// PEM CAs to trust for an `https` endpoint with a private CA; `None`: the system's store.
    pub ca_file: Option<PathBuf>,
}

/// AWS's default region, used when the URI names none (most S3-compatible servers accept any region).
pub const DEFAULT_REGION: &str = "us-east-1";

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        let mut query = Vec::new();
        if let Some(e) = &self.endpoint {
            query.push(format!("endpoint={e}"));
        }
        query.push(format!("region={}", self.region));
        query.push(format!("style={}", self.style));
        if let Some(p) = &self.credentials_file {
            query.push(format!("credentials-file={}", p.display()));
        }
        if let Some(p) = &self.profile {
            query.push(format!("profile={p}"));
        }
        if let Some(p) = &self.ca_file {
            query.push(format!("ca-file={}", p.display()));
        }
        write!(f, "?{}", query.join("&"))
    }
}

/// Bucket names as S3 defines them: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a
/// letter or digit.
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Prefix segments: printable ASCII without characters that need escaping in a URI or an object key, and no `.`
/// or `..` segment (which some servers normalise away).
fn valid_prefix(p: &str) -> bool {
    p.len() <= 512
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.!*'()".contains(&c))
        })
}

/// `http[s]://host[:port]` with nothing after it but an optional '/': the bucket goes in the path or host.
fn parse_endpoint(v: &str) -> Result<String, String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or("endpoint must start with http:// or https://")?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.contains('@') {
        return Err("credentials do not belong in the endpoint: use credentials-file=PATH or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".into());
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
    {
        return Err(format!(
            "invalid endpoint {v:?} (expected http[s]://host[:port])"
        ));
    }
    Ok(v.strip_suffix('/').unwrap_or(v).to_string())
}

fn absolute(name: &str, v: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(percent_decode(v)?);
    if !path.is_absolute() {
        return Err(format!("{name} must be an absolute path"));
    }
    Ok(path)
}

/// `rest` is what follows `s3://`.
pub(super) fn parse_s3(rest: &str) -> Result<S3Uri, String> {
    if rest.contains('@') || rest.contains('#') {
        return Err("s3 URIs hold no credentials or fragments: use credentials-file=PATH or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".into());
    }
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = main.split_once('/').unwrap_or((main, ""));
    if !valid_bucket(bucket) {
        return Err(format!(
            "invalid bucket name {bucket:?} (3-63 lowercase letters, digits, '.' or '-')"
        ));
    }
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty() && !valid_prefix(prefix) {
        return Err(format!(
            "invalid prefix {prefix:?} (letters, digits and -_.!*'() in '/'-separated segments)"
        ));
    }
    let mut uri = S3Uri {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        endpoint: None,
        region: String::new(),
        style: S3Style::Path,
        credentials_file: None,
        profile: None,
        ca_file: None,
    };
    let mut style = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("query item {:?} has no value", redact_raw(pair)))?;
        let seen = match k {
            "endpoint" => uri
                .endpoint
                .replace(parse_endpoint(&percent_decode(v)?)?)
                .is_some(),
            "region" => {
                if v.is_empty() || !v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                    return Err(format!("invalid region {v:?}"));
                }
                !std::mem::replace(&mut uri.region, v.to_string()).is_empty()
            }
            "style" => style
                .replace(match v {
                    "path" => S3Style::Path,
                    "virtual" => S3Style::Virtual,
                    _ => return Err(format!("invalid style {v:?} (expected path or virtual)")),
                })
                .is_some(),
            "credentials-file" => uri.credentials_file.replace(absolute(k, v)?).is_some(),
            "profile" => {
                if v.is_empty() || !v.bytes().all(|c| c.is_ascii_graphic() && c != b']') {
                    return Err(format!("invalid profile name {v:?}"));
                }
                uri.profile.replace(v.to_string()).is_some()
            }
            "ca-file" => uri.ca_file.replace(absolute(k, v)?).is_some(),
            k if is_secret_key(k) => {
                return Err("keys do not belong in URIs: use credentials-file=PATH or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".into());
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {:?} (expected endpoint, region, style, credentials-file, profile or ca-file)",
                    redact_raw(k)
                ));
            }
        };
        if seen {
            return Err(format!("{k} is given twice"));
        }
    }
    if uri.profile.is_some() && uri.credentials_file.is_none() {
        return Err("profile needs credentials-file=PATH".into());
    }
    if uri.ca_file.is_some()
        && !uri
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"))
    {
        return Err("ca-file needs an https:// endpoint".into());
    }
    if uri.region.is_empty() {
        if uri.endpoint.is_none() {
            return Err("give endpoint=URL, or region=R for AWS S3".into());
        }
        uri.region = DEFAULT_REGION.to_string();
    }
    // AWS serves new buckets by host name only; every other server is addressed by path unless told otherwise.
    uri.style = style.unwrap_or(match &uri.endpoint {
        None => S3Style::Virtual,
        Some(e) if e.ends_with(".amazonaws.com") => S3Style::Virtual,
        Some(_) => S3Style::Path,
    });
    Ok(uri)
}
