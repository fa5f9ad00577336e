//! The wire types of Lockstep's HTTP APIs, shared by every role that speaks them.
//!
//! Owns: the shapes of requests and answers, and their JSON names. Must never: hold behaviour;
//! a type here is a promise to the other side of a connection, so a change is a protocol change.

pub mod agent;
pub mod edge;
mod ids;
pub mod nodes;

pub use ids::{Generation, ImageId, InvalidImageId};
