//! The ChatServer: the legacy chat protocol (see `docs/protocol.md`) served on the
//! `net` reactor.
//!
//! Data flow: an IO loop cuts the byte stream into frames ([`codec`]) and parses
//! them into requests ([`protocol`]); each connection's [`session::Session`]
//! queues them in arrival order; a worker pool runs them through the msgid →
//! handler map of [`service::ChatService`], which uses a [`store::Store`] (SQLite
//! or MySQL) and the [`hub::Hub`] of online users, and replies through the
//! connection's handle. A LOGIN's password check runs on the [`hasher`]'s own
//! threads, fair between peer addresses. Nothing blocking ever runs on an IO loop.
//!
//! Operations: every floor bumps the relaxed atomics of [`stats::Stats`] (and
//! writes [`audit`] lines for session events, off the IO loops); the [`admin`]
//! listener the server owns reads them, with the store and the bus, for
//! `/healthz`, `/readyz`, `/metrics` and the admin routes.

pub mod acks;
pub mod admin;
pub mod audit;
pub mod bus;
pub mod codec;
pub mod config;
pub mod gateway;
pub mod hasher;
pub mod hub;
pub mod member_cache;
pub mod outflow;
pub mod password;
pub mod protocol;
pub mod resume_token;
pub mod route_batch;
pub mod router;
pub mod server;
pub mod server_thread;
pub mod service;
pub mod session;
pub mod stats;
pub mod store;
pub mod sys;
pub mod timefmt;
pub mod workers;
pub mod ws;
