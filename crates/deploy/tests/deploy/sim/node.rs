//! A simulated node: one environment instance with exactly the agent semantics the machine
//! relies on, plus the bookkeeping the invariant checks read.

use std::collections::{BTreeMap, BTreeSet};

use lockstep_deploy::{HookKind, NodeFailure, Release, Reply, Request};
use lockstep_proto::Generation;

/// What goes wrong on this node, decided before the run.
#[derive(Debug, Clone, Default)]
pub struct NodeFaults {
    /// Images whose web process never listens here.
    pub broken_web: BTreeSet<String>,
    /// Stage is refused (a full disk, say).
    pub refuses_stage: bool,
    /// Hooks that fail when they run here.
    pub failing_hooks: BTreeSet<HookKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookState {
    Running,
    Succeeded,
    Failed,
    /// The agent restarted while the hook ran: reported as not succeeded, never run again.
    Interrupted,
}

/// What the node does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    Answer(Result<Reply, NodeFailure>),
    /// The request waits for the hook already running; it is answered when the hook ends.
    WaitsForHook(HookKind),
}

#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub faults: NodeFaults,
    /// The agent process runs; when it does not, requests get `Unreachable`.
    pub up: bool,
    // Durable: survives a restart.
    pub staged: BTreeSet<String>,
    pub active: Option<Release>,
    pub hooks: BTreeMap<(String, HookKind), HookState>,
    // Lost in a restart.
    pub web_running: bool,
    pub open_at: Option<Generation>,
    pub background_running: bool,
    // Bookkeeping for the checks.
    /// Every hook start, as (deployment, hook) (I2).
    pub hook_starts: Vec<(String, HookKind)>,
    /// Every request that changed or could have changed state, in order (I5).
    pub applied: Vec<Request>,
    /// Restarts so far.
    pub epoch: u32,
    /// The epoch in which the node last opened: while it equals `epoch` the node should be open.
    pub opened_in_epoch: Option<u32>,
    /// Between its quiesce and its next open (I3).
    pub in_closed_window: bool,
}

impl SimNode {
    /// A node serving `previous` (open, web and background running), or an empty node.
    pub fn new(name: String, previous: Option<&Release>, faults: NodeFaults) -> SimNode {
        let serving = previous.is_some();
        SimNode {
            name,
            faults,
            up: true,
            staged: previous.iter().map(|r| r.image.clone()).collect(),
            active: previous.cloned(),
            hooks: BTreeMap::new(),
            web_running: serving,
            open_at: previous.map(|r| r.generation),
            background_running: serving,
            hook_starts: Vec::new(),
            applied: Vec::new(),
            epoch: 0,
            opened_in_epoch: serving.then_some(0),
            in_closed_window: false,
        }
    }

    /// The release this node's router serves now, if it admits requests.
    pub fn serves(&self) -> Option<Release> {
        let generation = self.open_at?;
        let active = self.active.as_ref()?;
        Some(Release {
            image: active.image.clone(),
            generation,
        })
    }

    /// Whether no restart closed the node since it last opened.
    pub fn should_be_open(&self) -> bool {
        self.up && self.opened_in_epoch == Some(self.epoch)
    }

    pub fn receive(&mut self, deployment: &str, request: &Request) -> Handling {
        if !self.up {
            return Handling::Answer(Err(NodeFailure::Unreachable));
        }
        self.applied.push(request.clone());
        let done = Handling::Answer(Ok(Reply::Done));
        match request {
            Request::Stage { image } => {
                if self.faults.refuses_stage {
                    return refused("no space left for the image");
                }
                self.staged.insert(image.clone());
                done
            }
            Request::Quiesce => {
                self.background_running = false;
                self.in_closed_window = true;
                done
            }
            Request::Close => {
                self.open_at = None;
                done
            }
            Request::ReplaceData { .. } => {
                if self.open_at.is_some() {
                    return refused("the data is replaced only while the node is closed");
                }
                done
            }
            Request::Swap { image, generation } => self.swap(image, *generation),
            Request::RunHook { hook } => self.run_hook(deployment, *hook),
            Request::Open { generation } => {
                let at_generation = self.active.as_ref().map(|a| a.generation);
                if at_generation != Some(*generation) || !self.web_running {
                    return refused("the active release is not at that generation, or not running");
                }
                self.open_at = Some(*generation);
                self.opened_in_epoch = Some(self.epoch);
                self.in_closed_window = false;
                done
            }
            Request::StartBackground { generation } => {
                if self.open_at != Some(*generation) {
                    return refused("not open at that generation");
                }
                self.background_running = true;
                done
            }
        }
    }

    fn swap(&mut self, image: &str, generation: Generation) -> Handling {
        if let Some(open) = self.open_at {
            return refused(&format!("open at generation {open}; close first"));
        }
        if !self.staged.contains(image) {
            return refused("the image is not staged");
        }
        let release = Release {
            image: image.to_string(),
            generation,
        };
        if self.active.as_ref() == Some(&release) && self.web_running {
            return Handling::Answer(Ok(Reply::Done));
        }
        self.active = Some(release);
        self.background_running = false;
        self.web_running = !self.faults.broken_web.contains(image);
        if self.web_running {
            Handling::Answer(Ok(Reply::Done))
        } else {
            Handling::Answer(Err(NodeFailure::Failed(
                "the web process never listened".into(),
            )))
        }
    }

    fn run_hook(&mut self, deployment: &str, hook: HookKind) -> Handling {
        let key = (deployment.to_string(), hook);
        match self.hooks.get(&key) {
            Some(HookState::Running) => Handling::WaitsForHook(hook),
            Some(HookState::Succeeded) => hook_answer(true),
            Some(HookState::Failed | HookState::Interrupted) => hook_answer(false),
            None if self.active.is_none() => refused("no release is active"),
            None => {
                self.hooks.insert(key, HookState::Running);
                self.hook_starts.push((deployment.to_string(), hook));
                Handling::WaitsForHook(hook)
            }
        }
    }

    /// The running hook ends; returns the answer for the requests waiting for it.
    pub fn finish_hook(&mut self, deployment: &str, hook: HookKind) -> Option<Reply> {
        let state = self.hooks.get_mut(&(deployment.to_string(), hook))?;
        if *state != HookState::Running || !self.up {
            return None;
        }
        let succeeded = !self.faults.failing_hooks.contains(&hook);
        *state = if succeeded {
            HookState::Succeeded
        } else {
            HookState::Failed
        };
        Some(Reply::Hook {
            succeeded,
            output: Vec::new(),
        })
    }

    pub fn crash(&mut self) {
        self.up = false;
        self.open_at = None;
        self.web_running = false;
        self.background_running = false;
        for state in self.hooks.values_mut() {
            if *state == HookState::Running {
                *state = HookState::Interrupted;
            }
        }
    }

    /// Comes back closed, background stopped, the active release's web process started again.
    pub fn restart(&mut self) {
        self.up = true;
        self.epoch += 1;
        self.open_at = None;
        self.background_running = false;
        self.web_running = self
            .active
            .as_ref()
            .is_some_and(|a| !self.faults.broken_web.contains(&a.image));
    }
}

fn refused(why: &str) -> Handling {
    Handling::Answer(Err(NodeFailure::Refused(why.to_string())))
}

fn hook_answer(succeeded: bool) -> Handling {
    Handling::Answer(Ok(Reply::Hook {
        succeeded,
        output: Vec::new(),
    }))
}
