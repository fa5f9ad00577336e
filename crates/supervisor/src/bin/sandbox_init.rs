//! The sandbox's init (`lockstep_supervisor::init`) as a program of its own, for this crate's
//! tests: `lockstep-sandbox-init [--user UID:GID] COMMAND`.

fn main() {
    std::process::exit(lockstep_supervisor::init::main(std::env::args_os().skip(1)));
}
