//! Integration tests of the edge (SPEC.md section 4) against real origin processes
//! (`tests/origin.py`) that can be switched between healthy, 500, refusing, slow and closed.

mod apps;
mod balance;
mod cache;
mod closed;
mod redirects;
mod routing;
mod support;
