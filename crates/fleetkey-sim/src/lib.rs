//! fleetkey's CAN FD fleet simulator (docs/simulator.md).
//!
//! A virtual bus ([`bus`]: in process, UDP loopback, SocketCAN behind a feature) carries CAN FD
//! frames between ECUs that run only the device core ([`ecu`]), a gateway that is the network's
//! key master fed by the key manager ([`gateway`], [`network`]), and an attacker
//! ([`attacker`]). Key updates, group seeds and governance records travel as ISO-TP messages
//! ([`isotp`], [`msg`]); captures are candump logs.

pub mod attacker;
pub mod bus;
pub mod capture;
pub mod ecu;
pub mod gateway;
pub mod isotp;
pub mod msg;
pub mod network;
pub mod scenario;
