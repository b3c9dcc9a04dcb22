//! The router against real storage nodes, Postgres and RabbitMQ, one test binary in
//! modules by theme: writes and their generation bump and jobs, repository
//! lifecycle, read routing, the metadata cache and topology, bad input, serving.

#[path = "../support/mod.rs"]
mod support;

mod errors;
mod metadata;
mod reads;
mod repositories;
mod serving;
mod writes;
