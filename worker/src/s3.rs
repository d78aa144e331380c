//! The S3 bucket handlers reach as a resource (`ctx.resource::<Storage>()?`), configured with
//! django-storages' own setting names, so the worker shares the Django app's environment:
//!
//! * `AWS_STORAGE_BUCKET_NAME`: the bucket (without it, the resource is unavailable, and why);
//! * `AWS_LOCATION`: the key prefix, joined to names as django-storages joins them;
//! * `AWS_S3_ENDPOINT_URL`: another endpoint (a local S3 server), with path-style addressing;
//! * `AWS_S3_REGION_NAME`, else `AWS_DEFAULT_REGION` / `AWS_REGION` as the SDK reads them.
//!
//! Credentials come from the SDK's default chain: environment keys when the environment gives
//! them, otherwise web identity (IRSA on EKS), profiles, or the instance's role. The client is
//! built once at startup.

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;

use crate::cli::ConfigError;
use crate::registry::RegistryBuilder;

/// A bucket and the key prefix of a Django project's media, with its client.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The S3 client.
    pub client: Client,
    /// `AWS_STORAGE_BUCKET_NAME`.
    pub bucket: String,
    /// `AWS_LOCATION`, without leading or trailing slashes (may be empty).
    pub location: String,
}

impl Storage {
    /// The object key of a stored name (a `FileField`'s value), as django-storages computes it
    /// (`safe_join(location, name)`): the location and the name joined by one slash, no leading
    /// slash, never `//`.
    pub fn key(&self, name: &str) -> String {
        join_key(&self.location, name)
    }
}

/// django-storages' join of `AWS_LOCATION` and a name. Empty segments are dropped, as
/// `posixpath.normpath` drops them; `.` and `..` segments are kept as they are (Django's storage
/// never stores names with them).
pub fn join_key(location: &str, name: &str) -> String {
    let mut parts: Vec<&str> = location.split('/').filter(|p| !p.is_empty()).collect();
    parts.extend(name.split('/').filter(|p| !p.is_empty()));
    let mut key = parts.join("/");
    if name.ends_with('/') && !key.is_empty() {
        key.push('/');
    }
    key
}

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Adds the [`Storage`] from the environment to `builder`, or declares it unavailable when no
/// bucket is set. Must run inside a tokio runtime. Returns a description for the log.
pub async fn add_storage(
    builder: RegistryBuilder,
) -> Result<(RegistryBuilder, Option<String>), ConfigError> {
    let Some(bucket) = setting("AWS_STORAGE_BUCKET_NAME") else {
        return Ok((
            builder.unavailable::<Storage>("AWS_STORAGE_BUCKET_NAME is not set"),
            None,
        ));
    };
    let mut loader = aws_config::defaults(BehaviorVersion::v2026_01_12());
    if let Some(region) = setting("AWS_S3_REGION_NAME") {
        loader = loader.region(aws_config::Region::new(region));
    }
    // Bounded waits, so an S3 that hangs becomes an error (and a task's retry) instead of a
    // task that never ends.
    loader = loader.timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .operation_attempt_timeout(std::time::Duration::from_secs(60))
            .build(),
    );
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared);
    let endpoint = setting("AWS_S3_ENDPOINT_URL");
    if let Some(url) = &endpoint {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                setting: "AWS_S3_ENDPOINT_URL",
                reason: format!("{url:?} is not an http:// or https:// URL"),
            });
        }
        config = config.endpoint_url(url).force_path_style(true);
    }
    let location = setting("AWS_LOCATION")
        .unwrap_or_default()
        .trim_matches('/')
        .to_owned();
    let describe = format!(
        "S3 bucket {bucket}{}{}",
        if location.is_empty() {
            String::new()
        } else {
            format!(", prefix {location}/")
        },
        endpoint.map_or(String::new(), |e| format!(", endpoint {e}"))
    );
    let storage = Storage {
        client: Client::from_conf(config.build()),
        bucket,
        location,
    };
    Ok((builder.resource(storage), Some(describe)))
}

#[cfg(test)]
mod tests {
    use super::join_key;

    #[test]
    fn keys_join_as_django_storages_joins_them() {
        assert_eq!(join_key("", "originals/a.jpg"), "originals/a.jpg");
        assert_eq!(
            join_key("media", "originals/a.jpg"),
            "media/originals/a.jpg"
        );
        assert_eq!(
            join_key("media/", "originals/a.jpg"),
            "media/originals/a.jpg"
        );
        assert_eq!(join_key("/site/media/", "/x//y.png"), "site/media/x/y.png");
        assert_eq!(join_key("", "/a.jpg"), "a.jpg");
    }
}
