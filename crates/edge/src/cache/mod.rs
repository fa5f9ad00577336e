//! The cache: rules and keys (`rules`), what may be stored and for how long (`policy`), the
//! bounded store (`store`), request coalescing (`flight`) and the body that feeds the store while
//! it streams to the client (`tee`).

pub(crate) mod flight;
pub(crate) mod policy;
pub(crate) mod rules;
pub(crate) mod store;
pub(crate) mod tee;

/// The value of `X-Lockstep-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the store, fresh.
    Hit,
    /// Fetched from the origin for a cacheable request.
    Miss,
    /// Served from the store, stale: while it is refreshed, because the origin failed, or
    /// because the environment is closed.
    Stale,
    /// Not cacheable: sent to the origin as it is.
    Pass,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Pass => "PASS",
        }
    }
}
