//! The Portcullis operator: watches the four CRDs and the Secrets they reference, compiles
//! them with `portcullis-compiler`, publishes the config (ConfigMap + Secret shards), and
//! writes each object's status from the compiler's verdict and the proxies' reports.

pub mod backlog;
pub mod events;
pub mod gateway_status;
pub mod leader;
pub mod leadership;
pub mod lenient;
pub mod logs;
pub mod metrics;
pub mod outputs;
pub mod owner;
pub mod plan;
pub mod publish;
pub mod reconcile;
pub mod server;
pub mod status;
pub mod status_kind;
pub mod trigger;
pub mod watch;
pub mod webhook;
pub mod writer;
