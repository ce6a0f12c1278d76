//! Portcullis proxy: the data plane that enforces a compiled [`GatewayConfig`].
//!
//! Start it with [`ProxyServer::start`]; the request path is [`pipeline`].
//!
//! [`GatewayConfig`]: portcullis_compiler::GatewayConfig

pub mod admin;
pub mod audit;
pub mod auth;
pub mod body;
pub mod check;
pub mod client_body;
pub mod client_ip;
pub mod cluster;
pub mod config_store;
pub mod connection_limits;
pub mod context;
pub mod cors;
pub mod counters;
pub mod decisions;
pub mod errors;
pub mod explain;
pub mod forward_headers;
pub mod ip_filter;
pub mod ip_text;
pub mod metrics;
pub mod monotonic;
pub mod otlp;
pub mod overload;
pub mod pipeline;
pub mod ratelimit;
pub mod redirect;
pub mod request_headers;
pub mod request_id;
pub mod request_target;
pub mod response_headers;
pub mod router;
pub mod server;
pub mod standalone;
pub mod tls;
pub mod trace_context;
pub mod upstream;
pub mod validate;
pub mod waf;

pub use audit::AuditSink;
pub use server::{ConfigHandle, ProxyOptions, ProxyServer, RunningProxy, StartError};
