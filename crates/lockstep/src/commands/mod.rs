pub mod agent;
pub mod build;
pub mod config;
pub mod credential;
pub mod edge;
pub mod git_hook;
pub mod ops;
pub mod up;
