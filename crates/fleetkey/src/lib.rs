//! fleetkey's key manager library. For now: the candump log format ([`canlog`]).

pub use fleetkey_core as core;

pub mod canlog;
