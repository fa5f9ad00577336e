//! A simulated cluster for the deploy machine: nodes with the agent's semantics, a lossy
//! network, crashing nodes and a crashing controller, and the SPEC section 3 invariants.

pub mod checks;
pub mod node;
pub mod rng;
pub mod world;
