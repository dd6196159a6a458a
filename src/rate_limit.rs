//! Login rate limits: one keyed limiter per client IP and one per username.
//! Every password-grant attempt counts against both. governor decides first,
//! in process; with a shared store (Redis) an attempt it lets through is then
//! charged atomically in the store too, so the limit holds across replicas
//! while a flood against one replica never reaches Redis.

use std::net::IpAddr;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

use crate::config::{LoginConfig, Rate};
use crate::error::GatewayError;
use crate::store::{self, RateCheck, Store};

/// Longer usernames are cut before keying, so a key costs bounded memory.
const MAX_KEY_BYTES: usize = 256;

pub struct LoginLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_username: DefaultKeyedRateLimiter<String>,
    ip_rate: Rate,
    username_rate: Rate,
}

fn rate_check(key: String, rate: &Rate) -> RateCheck {
    RateCheck { key, interval: rate.per / rate.count.get(), burst: rate.count.get() }
}

fn seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl LoginLimits {
    pub fn new(login: &LoginConfig) -> LoginLimits {
        LoginLimits {
            per_ip: RateLimiter::keyed(login.rate_limit.quota()),
            per_username: RateLimiter::keyed(login.rate_limit_per_username.quota()),
            ip_rate: login.rate_limit,
            username_rate: login.rate_limit_per_username,
        }
    }

    /// Counts one attempt against both limits, locally and then in a shared
    /// store: 429 when either is exhausted, 503 when the store cannot answer.
    pub async fn check(&self, store: &Arc<dyn Store>, ip: IpAddr, username: &str) -> Result<(), GatewayError> {
        let ip = limit_key(ip);
        let key = cut(username);
        self.check_local(ip, key).map_err(|retry_after_secs| GatewayError::RateLimited { retry_after_secs })?;
        if !store.shared_limits() {
            return Ok(());
        }
        // The username is hashed: bounded key size and no user names in Redis keys.
        let user_key = format!("user:{}", hex(&store::hash_token(key)));
        let checks = vec![rate_check(format!("ip:{ip}"), &self.ip_rate), rate_check(user_key, &self.username_rate)];
        let wait = store::blocking(store, move |s| s.rate_limit(&checks)).await.map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        match wait {
            Some(w) => Err(GatewayError::RateLimited { retry_after_secs: seconds(w) }),
            None => Ok(()),
        }
    }

    /// Counts one attempt against both in-process limits; Err(seconds to
    /// wait, >= 1) when either is exhausted.
    pub fn check_local(&self, ip: IpAddr, username: &str) -> Result<(), u64> {
        let key = cut(username);
        let now = DefaultClock::default().now();
        // An address already over its limit charges (and so creates) no
        // username key: a refused spray of usernames costs no memory.
        self.per_ip.check_key(&ip).map_err(|n| seconds(n.wait_time_from(now)))?;
        self.per_username.check_key(&key.to_string()).map_err(|n| seconds(n.wait_time_from(now)))
    }

    /// Forgets keys whose limit has fully replenished, so a spray of
    /// distinct IPs or usernames cannot grow memory without bound.
    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_username.retain_recent();
        self.per_username.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.per_ip.len() + self.per_username.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cut(username: &str) -> &str {
    if username.len() <= MAX_KEY_BYTES {
        return username;
    }
    let mut end = MAX_KEY_BYTES;
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    &username[..end]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The address a limit counts against: IPv4 as it is, IPv6 by its /64, the
/// block one subscriber holds (per address, a /64 would be a limit of 2^64).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        other => other,
    }
}

#[cfg(test)]
mod limit_key_tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(c));
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(limit_key(v4), v4);
    }
}
