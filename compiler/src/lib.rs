//! `compile(&Snapshot) -> (GatewayConfig, Vec<ObjectStatus>)`: the pure, deterministic
//! translation of Portcullis objects into the config the proxy enforces.
//!
//! No I/O happens here. Every invalid object becomes a condition on that object while every
//! valid object still compiles, so one bad object never takes the others down.

pub mod config;
pub mod delivery;
pub mod report;
pub mod units;

pub mod manifests;
pub mod path;
pub mod tenancy;

mod compile;
mod status;

pub use compile::gateway::GATEWAY_CONTROLLER;
pub use compile::ingress::{INGRESS_CONTROLLER, LEGACY_CLASS_ANNOTATION};
pub use compile::{compile, compile_cached, hash_api_key, CompileCache, Snapshot};
pub use config::GatewayConfig;
pub use tenancy::Tenancy;

/// Seconds since the epoch, for [`Snapshot::now_unix_secs`]: the callers' clock, so that
/// `compile` itself reads none.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
pub use status::{ConditionOut, ObjectStatus, Reason, SectionStatus};
