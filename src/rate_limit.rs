//! Login rate limits (governor): one keyed limiter per client IP and one per
//! username. Every password-grant attempt counts against both.

use std::net::IpAddr;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

use crate::config::LoginConfig;

/// Longer usernames are cut before keying, so a key costs bounded memory.
const MAX_KEY_BYTES: usize = 256;

pub struct LoginLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_username: DefaultKeyedRateLimiter<String>,
}

impl LoginLimits {
    pub fn new(login: &LoginConfig) -> LoginLimits {
        LoginLimits {
            per_ip: RateLimiter::keyed(login.rate_limit.quota()),
            per_username: RateLimiter::keyed(login.rate_limit_per_username.quota()),
        }
    }

    /// Counts one attempt against both limits; Err(seconds to wait, >= 1)
    /// when either is exhausted.
    pub fn check(&self, ip: IpAddr, username: &str) -> Result<(), u64> {
        let mut key = username;
        if key.len() > MAX_KEY_BYTES {
            let mut end = MAX_KEY_BYTES;
            while !key.is_char_boundary(end) {
                end -= 1;
            }
            key = &key[..end];
        }
        let now = DefaultClock::default().now();
        let ip = self.per_ip.check_key(&ip).map_err(|n| n.wait_time_from(now));
        let user = self.per_username.check_key(&key.to_string()).map_err(|n| n.wait_time_from(now));
        match (ip, user) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => {
                let wait = a.err().max(b.err()).unwrap_or_default();
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
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
