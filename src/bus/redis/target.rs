//! What `--redis-url` names: one Redis (`redis://`, `rediss://`, `unix://`, read by the redis
//! crate) or a Redis Cluster (`redis+cluster://[user[:password]@]host:port,host:port,...`, seed
//! nodes; the rest are discovered). Errors never repeat the URL: it may hold a password.

use super::resp::Auth;

/// The Redis side a replica connects to.
pub(super) enum Target {
    Single(Box<redis::ConnectionInfo>),
    Cluster { seeds: Vec<String>, auth: Auth },
}

const CLUSTER: &str = "redis+cluster://";
const CLUSTER_TLS: &str = "rediss+cluster://";

impl Target {
    pub(super) fn parse(url: &str) -> Result<Target, String> {
        if url.starts_with(CLUSTER_TLS) {
            return Err(
                "rediss+cluster:// (TLS to a Redis Cluster) is not supported; \
                        use redis+cluster:// on a private network"
                    .into(),
            );
        }
        let Some(rest) = url.strip_prefix(CLUSTER) else {
            let info = redis::IntoConnectionInfo::into_connection_info(url)
                .map_err(|e| format!("{:?}", e.kind()))?;
            return Ok(Target::Single(Box::new(info)));
        };
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        // A Redis Cluster has only database 0.
        let hosts = match hosts.split_once('/') {
            None => hosts,
            Some((h, "" | "0")) => h,
            Some(_) => return Err("a Redis Cluster has only database 0".into()),
        };
        let mut auth = Auth::default();
        if let Some(u) = userinfo {
            let (user, password) = match u.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (u, None),
            };
            let decode = |s: &str| percent_decode(s).ok_or("malformed user or password");
            if !user.is_empty() {
                auth.username = Some(decode(user)?);
            }
            if let Some(p) = password {
                auth.password = Some(decode(p)?);
            }
            if auth.password.is_none() && auth.username.is_some() {
                return Err("a user name without a password".into());
            }
        }
        let mut seeds = Vec::new();
        for h in hosts.split(',') {
            seeds.push(seed(h).ok_or("a seed node is not host:port")?);
        }
        Ok(Target::Cluster { seeds, auth })
    }
}

/// `host:port`, `host` (port 6379) or `[v6]:port`, checked.
fn seed(h: &str) -> Option<String> {
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        (host, rest.strip_prefix(':').unwrap_or("6379"))
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (h, "6379"),
        }
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if host.is_empty() || !host.chars().all(ok) {
        return None;
    }
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(url: &str) -> (Vec<String>, Option<String>, Option<String>) {
        match Target::parse(url).unwrap() {
            Target::Cluster { seeds, auth } => (seeds, auth.username, auth.password),
            Target::Single(_) => panic!("not a cluster URL"),
        }
    }

    #[test]
    fn cluster_urls_name_seeds_and_credentials() {
        let (seeds, user, pass) = cluster("redis+cluster://a:7000,10.0.0.2:7001,b");
        assert_eq!(seeds, vec!["a:7000", "10.0.0.2:7001", "b:6379"]);
        assert_eq!((user, pass), (None, None));
        let (seeds, user, pass) = cluster("redis+cluster://app:p%40ss@[::1]:7000,h:1/");
        assert_eq!(seeds, vec!["[::1]:7000", "h:1"]);
        assert_eq!(user.as_deref(), Some("app"));
        assert_eq!(pass.as_deref(), Some("p@ss"));
        let (_, user, pass) = cluster("redis+cluster://:secret@h:1/0");
        assert_eq!((user, pass.as_deref()), (None, Some("secret")));
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379").unwrap(),
            Target::Single(_)
        ));
    }

    #[test]
    fn bad_cluster_urls_are_refused_without_echoing_secrets() {
        for url in [
            "redis+cluster://:hunter2@h:notaport",
            "redis+cluster://:hunter2@",
            "redis+cluster://:hunter2@h:1,,h:2",
            "redis+cluster://:hunter2@h:1/3",
            "redis+cluster://:hunter2@h:0",
            "rediss+cluster://:hunter2@h:1",
            "redis+cluster://:hun%zzter2@h:1",
        ] {
            let e = Target::parse(url).err().expect(url);
            assert!(!e.contains("hunter2") && !e.contains("hun%"), "{e}");
        }
    }
}
