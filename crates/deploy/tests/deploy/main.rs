//! Tests of the deploy state machine: exact command sequences for the main paths, every
//! controller crash point, and property tests over random fault schedules in a simulated
//! cluster that check invariants I1–I5 of SPEC section 3.

mod crash_points;
mod properties;
mod scenarios;
mod sim;
