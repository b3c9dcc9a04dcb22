//! Secrets out of URLs before they reach a log line or `--dump-config`.

/// `url` with its password replaced by `***`, for logs and `--dump-config`. Handles
/// `scheme://user:password@host/...` URLs of any scheme (the AMQP URL too), a
/// `password=` query parameter, and key=value connection strings
/// (`host=db password=secret`).
pub fn redact_url(url: &str) -> String {
    let url = match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}{tail}")
                }
                _ => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    // `password=` as a query parameter or a key=value pair: blank out its value,
    // which ends at `&`, whitespace or (when quoted) the closing quote.
    let mut out = String::with_capacity(url.len());
    let mut rest = url.as_str();
    while let Some(at) = rest.find("password=") {
        let value_start = at + "password=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let value = &rest[value_start..];
        let len = match value.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(value.len(), |q| q + 2),
            None => value.find(['&', ' ', '\t', '\n']).unwrap_or(value.len()),
        };
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_every_spelling_of_a_password() {
        assert_eq!(
            redact_url("postgres://gc:s3cret@db:5432/gitcluster?sslmode=disable"),
            "postgres://gc:***@db:5432/gitcluster?sslmode=disable"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=gc&password=s3cret&sslmode=disable"),
            "postgres://db/x?user=gc&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db password='a b' user=gc"),
            "host=db password=*** user=gc"
        );
    }
}
