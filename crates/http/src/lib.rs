//! OpsConductor's HTTP server: the REST API under `/api/v1`, users and
//! tokens, live logs (Server-Sent Events and WebSocket), the audit log,
//! `/health`, `/ready` and `/metrics`, and the OpenAPI document.
//!
//! The server is a thin layer over the engine ([`opsconductor::Conductor`]):
//! it authenticates, routes and converts. Every permission check goes
//! through the core's permission matrix (an [`opsconductor::Actor`] with a
//! role, or [`opsconductor::auth::require`] for reads).
//!
//! - [`router`] builds the whole application over an [`AppState`] (test it
//!   in-process with `tower::ServiceExt::oneshot`);
//! - [`start`] / [`start_with`] listen on a socket and return a [`Running`]
//!   server (its address, the generated admin password, graceful shutdown).
//!   `opsconductor serve` (crates/cli) starts it, waits for SIGTERM or
//!   Ctrl-C and shuts it down; an embedder does the same with its own
//!   signal handling.
//!
//! Authentication and its design (JWT key, lifetimes, API tokens) are
//! described in [`jwt`] and [`auth`]; the error shape in [`error`];
//! pagination in [`page`].

pub mod api;
pub mod auth;
pub mod config;
mod conn;
pub mod docs;
pub mod dto;
pub mod error;
pub mod extract;
pub mod jwt;
pub mod limit;
pub mod metrics;
pub mod middleware;
pub mod page;
pub mod server;
pub mod state;

pub use api::router;
pub use config::ServerConfig;
pub use server::{Running, start, start_with};
pub use state::AppState;
