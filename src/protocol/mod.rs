//! The wire protocol between devices and the edge server.

pub mod codec;
pub mod frame;

pub use frame::{Class, DecodeError, ModelRef, Request, Response, Status, Timings};
