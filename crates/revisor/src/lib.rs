//! The revisor application: CLI, admin API and server wiring over the library crates.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod client;
pub mod columns;
pub mod config;
pub mod demo;
pub mod model_server;
pub mod server;
pub mod tls;
