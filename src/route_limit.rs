//! Per-route request rate limits (`routes.rate_limit`): one governor keyed
//! limiter per route, keyed by the verified subject, or by the client IP
//! when the request carries no identity. A reload keeps a route's limiter
//! when its path and rate are unchanged.

use std::net::IpAddr;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

use crate::config::Rate;

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub enum Key {
    Subject(String),
    Ip(IpAddr),
}

pub struct RouteLimiter {
    pub rate: Rate,
    limiter: DefaultKeyedRateLimiter<Key>,
}

impl RouteLimiter {
    pub fn new(rate: Rate) -> RouteLimiter {
        RouteLimiter { rate, limiter: RateLimiter::keyed(rate.quota()) }
    }

    /// Counts one request; Err(seconds to wait, >= 1) past the limit.
    pub fn check(&self, key: &Key) -> Result<(), u64> {
        self.limiter.check_key(key).map_err(|n| {
            let wait = n.wait_time_from(DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    /// Forgets keys whose limit has fully replenished (memory stays bounded).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}
